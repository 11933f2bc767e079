"""The command line, as a user runs it: real subprocesses, real models, its error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ZOO_DIR = ROOT.parent / "shared" / "zoo" / "cifar10-resnets"
STORE = Path(os.environ.get("CONVSCOPE_TEST_STORE", Path.home() / ".cache" / "convscope-test-store"))


def run(args, data_dir: Path, check_rc: int | None = 0, timeout=600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONVSCOPE_DATA_DIR": str(data_dir), "CONVSCOPE_STORE_DIR": str(STORE),
           "CONVSCOPE_DEVICE": "cpu", **(env or {})}
    if ZOO_DIR.is_dir():
        env["CONVSCOPE_ZOO_DIR"] = str(ZOO_DIR)
    proc = subprocess.run([sys.executable, "-m", "precompute.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


def test_unknown_model_lists_close_names(data_dir):
    proc = run(["precompute", "resnet2-cifar10"], data_dir, check_rc=2)
    assert "unknown model 'resnet2-cifar10'" in proc.stderr and "resnet20-cifar10" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_precompute_needs_names(data_dir):
    proc = run(["precompute"], data_dir, check_rc=2)
    assert "--all" in proc.stderr


def test_unknown_analysis_and_device(data_dir):
    proc = run(["precompute", "resnet20-random", "--analyses", "symetry"], data_dir, check_rc=2)
    assert "unknown analysis 'symetry'" in proc.stderr and "symmetry" in proc.stderr


def test_precompute_takes_its_device_from_the_settings(data_dir):
    """`convscope precompute` without --device uses CONVSCOPE_DEVICE, as the workers' jobs do: asking for a
    device that is not there fails before any work, naming it (--device overrides the setting)."""
    if torch.cuda.is_available():
        proc = run(["precompute", "resnet20-random", "--analyses", "symmetry", "--device", "cpu"], data_dir,
                   env={"CONVSCOPE_DEVICE": "cuda"})
        assert "1/1 models precomputed" in proc.stdout
        return
    proc = run(["precompute", "resnet20-random", "--analyses", "symmetry"], data_dir, check_rc=2,
               env={"CONVSCOPE_DEVICE": "cuda"})
    assert "device 'cuda' was asked for but torch sees no CUDA GPU" in proc.stderr, proc.stderr
    proc = run(["precompute", "resnet20-random", "--analyses", "symmetry", "--device", "cpu"], data_dir,
               env={"CONVSCOPE_DEVICE": "cuda"})
    assert "1/1 models precomputed" in proc.stdout


def test_show_before_precompute_says_what_to_run(data_dir):
    proc = run(["show", "resnet56-random", "--json"], data_dir, check_rc=2)
    assert "convscope precompute resnet56-random" in proc.stderr


@pytest.mark.slow
def test_precompute_then_show(data_dir):
    run(["precompute", "resnet20-random", "--analyses", "symmetry,batchnorm,histogram"], data_dir)
    summary = json.loads(run(["show", "resnet20-random", "--json"], data_dir).stdout)
    names = [r["name"] for r in summary["inventory"]]
    assert "conv1" in names and "linear" in names
    assert set(summary["analyses"]) == {"symmetry", "batchnorm", "histogram"}
    assert 0 <= summary["scalars"]["layer1.0.conv1"]["symmetry"] <= 1
    layer = json.loads(run(["show", "resnet20-random", "--layer", "layer1.0.conv1", "--analysis", "symmetry",
                            "--json"], data_dir).stdout)
    data = layer["results"]["symmetry"]["data"]
    assert len(data["mean_kernel"]) == 3 and layer["results"]["symmetry"]["meta"]["model"] == "resnet20-random"
    bad = run(["show", "resnet20-random", "--layer", "layer1.0.conv9", "--json"], data_dir, check_rc=2)
    assert "layer1.0.conv1" in bad.stderr  # close names
    none = run(["show", "resnet20-random", "--layer", "linear", "--analysis", "symmetry"], data_dir, check_rc=2)
    assert "no symmetry result for layer linear" in none.stderr and "histogram" in none.stderr


@pytest.mark.slow
def test_add_errors_name_the_problem(data_dir, tmp_path):
    missing = run(["add", str(tmp_path / "nope.pt"), "--arch", "resnet20", "--name", "mine"], data_dir, check_rc=2)
    assert "nope.pt" in missing.stderr
    trunc = tmp_path / "trunc.pt"
    from precompute.architectures import build

    torch.save(build("resnet20").state_dict(), trunc)
    trunc.write_bytes(trunc.read_bytes()[:5000])
    out = run(["add", str(trunc), "--arch", "resnet20", "--name", "mine"], data_dir, check_rc=2)
    assert "trunc.pt" in out.stderr and "Traceback" not in out.stderr
    wrong = tmp_path / "wrong.pt"
    torch.save(build("resnet32").state_dict(), wrong)
    out = run(["add", str(wrong), "--arch", "resnet20", "--name", "mine"], data_dir, check_rc=2)
    assert "unexpected" in out.stderr and "layer1.3" in out.stderr  # resnet32 has more blocks
    short = tmp_path / "short.pt"
    torch.save(build("resnet20").state_dict(), short)
    out = run(["add", str(short), "--arch", "resnet32", "--name", "mine"], data_dir, check_rc=2)
    assert "missing" in out.stderr and "layer1.3" in out.stderr and "Traceback" not in out.stderr
    badname = run(["add", str(wrong), "--arch", "resnet32", "--name", "../evil"], data_dir, check_rc=2)
    assert "invalid model name" in badname.stderr


@pytest.mark.slow
def test_a_failing_model_does_not_stop_the_others(data_dir, tmp_path):
    from precompute.architectures import build

    ckpt = tmp_path / "mine.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in build("resnet20").state_dict().items()}}, ckpt)
    run(["add", str(ckpt), "--arch", "resnet20", "--name", "vanishing-net"], data_dir)
    listing = json.loads(run(["zoo", "list", "--json"], data_dir).stdout)
    assert {"name": "vanishing-net", "status": "ready"}.items() <= next(
        r for r in listing if r["name"] == "vanishing-net").items()
    for f in (data_dir / "uploads" / "vanishing-net").iterdir():
        f.unlink()  # the user's file disappears
    listing = json.loads(run(["zoo", "list", "--json"], data_dir).stdout)
    assert next(r for r in listing if r["name"] == "vanishing-net")["status"] == "missing file"
    proc = run(["precompute", "vanishing-net", "resnet20-random", "--analyses", "symmetry"], data_dir, check_rc=1)
    assert "vanishing-net: FAILED" in proc.stdout and "resnet20-random: done" in proc.stdout


@pytest.mark.slow
def test_zoo_list_shows_every_default_model_ready(data_dir):
    from precompute.models import DEFAULT_ZOO

    # every default model, the CIFAR-10 ResNets included: from CONVSCOPE_ZOO_DIR when the folder is there,
    # else downloaded by this fetch (which fails, naming them, when they can be had neither way)
    run(["zoo", "fetch", "--all"], data_dir)
    listing = {r["name"]: r for r in json.loads(run(["zoo", "list", "--json"], data_dir).stdout)}
    for name in DEFAULT_ZOO:
        assert listing[name]["status"] == "ready", listing[name]
    table = run(["zoo", "list"], data_dir).stdout
    assert "needs download" in table and "resnet50-imagenet" in table  # URL-only models, offline here
    # the reference runs committed in reference/ are in the zoo of a fresh clone, with no setting
    committed = sorted(p.stem for p in (ROOT / "reference").glob("*.json"))
    assert committed, "reference/ holds no committed runs"
    for name in committed:
        assert listing[name]["status"] == "ready", listing[name]
        assert listing[name]["source"] == "variant", listing[name]

"""Long training runs: resumable after SIGKILL (bitwise), measured as they go, estimated before they start.

The runs here are the real `convscope train` and `convscope worker` processes on Fashion-MNIST (Debian's
package), small enough for the CPU: the banding net on the first 4,096 images (32 steps an epoch), 3 epochs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from precompute.experiments import datasets as ds
from precompute.experiments.history import HISTORY_METRICS, first_epoch_steps, weight_metrics
from precompute.experiments.resume import SUFFIX, load_state
from precompute.experiments.training import TIMING_KEYS, plateau, train
from precompute.jobs import read_job, submit
from server_fixtures import settings_env, start_worker, stop_processes

REPO = Path(__file__).resolve().parent.parent
NEEDS_DATA = pytest.mark.skipif(
    not (ds.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist (make system-deps)")
RUN = ["train", "banding", "--variant", "baseline", "--limit", "4096", "--epochs", "3", "--device", "cpu",
       "--precision", "fp32", "--no-precompute"]


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    env.update(CONVSCOPE_DATA_DIR=str(tmp_path / "data"), CONVSCOPE_REFERENCE_DIR=str(tmp_path / "noref"),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _cli(args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "precompute.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _same_run(a: dict, b: dict) -> None:
    """Two records of the same run: bitwise-equal weights and history (the wall-clock fields aside)."""
    assert a["checkpoint_sha256"] == b["checkpoint_sha256"]
    strip = [[{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in r["history"]] for r in (a, b)]
    assert strip[0] == strip[1]
    assert a["final_test_accuracy"] == b["final_test_accuracy"] and a["measurements"] == b["measurements"]


def _kill_mid_epoch(args, env, epoch: int, total: int) -> subprocess.Popen:
    """Start ``convscope train``; SIGKILL it once its progress bar shows epoch ``epoch`` between 15 % and
    85 % done (by progress, not by clock)."""
    proc = subprocess.Popen([sys.executable, "-m", "precompute.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []

    def read():
        while True:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                return
            seen.append(chunk.decode(errors="replace"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    tag = f" {epoch}/{total}:"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        text = "".join(seen)
        last = text[text.rfind(tag):] if tag in text else ""
        pct = [int(p) for p in re.findall(r"(\d+)%\|", last)]
        if pct and 15 <= pct[-1] <= 85:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            return proc
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"the run never reached the middle of epoch {epoch}: {''.join(seen)[-1500:]}")


@pytest.mark.slow
@NEEDS_DATA
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    env = _env(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = _cli(RUN + ["--out", str(whole)], env)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = json.loads((whole / "banding-baseline.json").read_text())
    assert not list(whole.glob(f"*{SUFFIX}"))  # a finished run deletes its resume state
    assert reference["resumed"] == []

    proc = _kill_mid_epoch(RUN + ["--out", str(cut)], env, epoch=2, total=3)
    assert proc.returncode == -signal.SIGKILL
    state_file = cut / f"banding-baseline{SUFFIX}"
    state = load_state(state_file)
    assert state["epoch"] == 1 and not (cut / "banding-baseline.json").exists()  # died inside epoch 2

    # an unfinished run is not thrown away by a forgotten flag, and is listed with how to resume it
    again = _cli(RUN + ["--out", str(cut)], env)
    assert again.returncode == 2 and "add --resume to continue it, or --restart" in again.stderr
    listed = _cli(["train", "--list-runs", "--json", "--out", str(cut)], env)
    (row,) = json.loads(listed.stdout)
    assert row["model"] == "banding-baseline" and row["epoch"] == 1 and row["epochs"] == 3
    assert row["resume"].endswith(f"--out {cut} --resume") and row["discard"] == "convscope train --discard banding-baseline"
    other = _cli(RUN[:-3] + ["--epochs", "4", "--no-precompute", "--out", str(cut), "--resume"], env)
    assert other.returncode == 2 and "epochs: 3 (saved) != 4 (asked)" in other.stderr

    resumed = _cli(RUN + ["--out", str(cut), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = json.loads((cut / "banding-baseline.json").read_text())
    assert [r["from_epoch"] for r in record["resumed"]] == [1]
    assert not state_file.exists()
    _same_run(reference, record)
    # --resume again: already trained with the same options, nothing runs
    skip = _cli(RUN + ["--out", str(cut), "--resume"], env)
    assert skip.returncode == 0 and json.loads((cut / "banding-baseline.json").read_text()) == record


@pytest.mark.slow
@NEEDS_DATA
def test_train_job_whose_worker_is_killed_resumes_on_the_next_worker(tmp_path):
    """A real worker is SIGKILLed mid-epoch; the reaper of a second worker re-queues the job, which resumes
    from the last complete epoch (the job's messages say so) and ends bitwise equal to a run in one go."""
    env = _env(tmp_path / "alone")
    alone = _cli(RUN + ["--out", str(tmp_path / "alone" / "out")], env)
    assert alone.returncode == 0, alone.stderr[-2000:]
    reference = json.loads((tmp_path / "alone" / "out" / "banding-baseline.json").read_text())

    from precompute.settings import Settings

    settings = Settings(data_dir=tmp_path / "q", reference_dir=tmp_path / "noref", device="cpu", redis_url="",
                        zoo_dir=None)
    job = submit("train", {"experiment": "banding", "variants": ["baseline"], "epochs": 3, "limit": 4096,
                           "device": "cpu", "precision": "fp32", "precompute": False}, settings)
    state_file = settings.data_dir / "variants" / f"banding-baseline{SUFFIX}"
    first = start_worker(settings, tmp_path / "w1.log")
    second = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not state_file.is_file():
            time.sleep(0.05)
        assert state_file.is_file(), (tmp_path / "w1.log").read_text()[-2000:]
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert load_state(state_file)["epoch"] >= 1
        second = start_worker(settings, tmp_path / "w2.log")
        deadline = time.time() + 400
        while time.time() < deadline:
            final = read_job(settings, job["id"])
            if final["state"] in ("done", "failed"):
                break
            time.sleep(0.3)
    finally:
        stop_processes([p for p in (first, second) if p is not None])
    assert final["state"] == "done", final
    events = [e["event"] for e in final["history"]]
    assert events.count("lost") == 1 and final["attempts"] == 2
    record = json.loads((settings.data_dir / "variants" / "banding-baseline.json").read_text())
    (resumed,) = record["resumed"]
    assert resumed["from_epoch"] >= 1
    _same_run(reference, record)


@NEEDS_DATA
def test_history_points_and_metrics(tmp_settings):
    rec = train("banding", ["baseline"], epochs=2, limit=1024, device="cpu", settings=tmp_settings,
                progress=False)[0]
    hist = rec["history"]
    # the initialisation, 1/8, 1/4 and 1/2 of the first epoch (8 steps: after 1, 2, 4), then each epoch
    assert [r["epoch"] for r in hist] == [0, 0.125, 0.25, 0.5, 1, 2]
    assert [r["step"] for r in hist] == [0, 1, 2, 4, 8, 16]
    assert hist[-1]["test_accuracy"] == rec["final_test_accuracy"]  # the saved fp16 weights
    assert hist[0]["train_loss"] is None and all(r["train_loss"] > 0 for r in hist[1:])
    convs = [f"features.conv{i}" for i in range(1, 7)]
    for r in hist:
        assert set(r["metrics"]) == set(HISTORY_METRICS)
        assert sorted(r["metrics"]["banding"]) == sorted(r["metrics"]["symmetry"]) == convs
        assert set(r["metrics"]["gamma"]) == {"0.01", "0.05", "0.1"}
        assert 0 <= r["dead_relu"] <= 1
    assert hist[0]["metrics"] != hist[-1]["metrics"]  # the weights moved
    assert rec["config"]["precision"] == rec["precision"] and rec["plateau"]["reached"] is None  # 2 epochs < 3


def test_history_metrics_on_planted_weights():
    """Planted structure: horizontally banded kernels score +1 banding, their transposes -1; a mean kernel
    symmetric under D4 scores S = 1; gammas planted below the thresholds give exact shares."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3, bias=False), nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(10),
                        nn.Conv2d(8, 6, 3, bias=False))
    rows = torch.rand(8, 4, 3, 1)  # one value per kernel row, the same along x: horizontal bands
    with torch.no_grad():
        net[0].weight.copy_(rows.expand(8, 4, 3, 3))
        net[1].weight.copy_(torch.rand(8, 8, 3, 1).expand(8, 8, 3, 3).transpose(2, 3))  # vertical bands
        k = torch.tensor([[1.0, 2.0, 1.0], [2.0, 5.0, 2.0], [1.0, 2.0, 1.0]])  # D4-symmetric
        net[3].weight.copy_(k.expand(6, 8, 3, 3) + 0.0)
        net[2].weight.copy_(torch.tensor([0.001, -0.004, 0.02, -0.07, 0.09, 0.5, 1, 1, 1, 1]))
    m = weight_metrics(net)
    assert m["banding"]["0"] == pytest.approx(1.0, abs=1e-3) and m["banding"]["1"] == pytest.approx(-1.0, abs=1e-3)
    assert m["symmetry"]["3"] == pytest.approx(1.0)
    assert m["gamma"] == {"0.01": 0.2, "0.05": 0.3, "0.1": 0.5}


def test_first_epoch_points_and_plateau():
    assert first_epoch_steps(469) == {59: 0.125, 117: 0.25, 234: 0.5}
    assert first_epoch_steps(8) == {1: 0.125, 2: 0.25, 4: 0.5}
    assert first_epoch_steps(2) == {1: 0.5}  # 1/8 and 1/4 round to no step, or onto the same one
    assert first_epoch_steps(1) == {}

    def hist(*accs):
        return [{"epoch": 0, "test_accuracy": 10.0}, {"epoch": 0.5, "test_accuracy": 50.0}] + [
            {"epoch": i + 1, "test_accuracy": a} for i, a in enumerate(accs)]

    assert plateau(hist(80, 90, 90.2, 90.5))["reached"] is True
    flat = plateau(hist(80, 90, 90.2, 90.7))
    assert flat["reached"] is False and flat["span"] == pytest.approx(0.7) and flat["threshold"] == 0.5
    assert plateau(hist(80, 90))["reached"] is None  # fewer than 3 epochs: not judged


@NEEDS_DATA
def test_estimate_times_a_burst(tmp_settings, capsys, monkeypatch):
    from precompute import cli
    from precompute.experiments.estimate import estimate

    e = estimate("banding", ["baseline", "random"], epochs=2, limit=2048, device="cpu", settings=tmp_settings,
                 steps=2, warmup=1)
    base, rand = e["variants"]
    assert base["images_per_s"] > 0 and base["epoch_seconds"] == pytest.approx(2048 / base["images_per_s"])
    assert base["points"] == 2 + 1 + 3 and rand["images_per_s"] is None and rand["points"] == 1
    assert e["seconds"] == pytest.approx(base["seconds"] + rand["seconds"]) and base["seconds"] > 2 * base["epoch_seconds"]
    monkeypatch.setattr(cli, "get_settings", lambda: tmp_settings)
    assert cli.main(["train", "banding", "--variant", "nogap", "--epochs", "1", "--limit", "512", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "banding-nogap" in out and "images/s" in out and "total, one variant after the other: about" in out
    assert not (tmp_settings.data_dir / "variants").exists()  # nothing trained, nothing written


def test_discard_and_list_without_runs(tmp_settings, capsys, monkeypatch):
    from precompute import cli

    monkeypatch.setattr(cli, "get_settings", lambda: tmp_settings)
    assert cli.main(["train", "--list-runs"]) == 0 and "no unfinished runs" in capsys.readouterr().out
    assert cli.main(["train", "--discard", "banding-baseline"]) == 2
    assert "no unfinished run named 'banding-baseline'" in capsys.readouterr().err
    assert cli.main(["train", "--discard", "../etc"]) == 2  # a name, never a path
    assert cli.main(["train"]) == 2 and "name the experiment" in capsys.readouterr().err


@NEEDS_DATA
def test_snapshots_are_models_of_their_own(tmp_settings):
    from precompute import zoo
    from precompute.experiments.training import snapshot_epochs

    assert snapshot_epochs(20) == [1, 2, 4, 8, 16] and snapshot_epochs(2) == [1] and snapshot_epochs(1) == []
    rec = train("banding", ["nogap"], epochs=5, limit=256, device="cpu", settings=tmp_settings, progress=False,
                snapshots=True)[0]
    folder = tmp_settings.data_dir / "variants"
    assert sorted(p.name for p in folder.glob("*.json")) == [
        "banding-nogap.e1.json", "banding-nogap.e2.json", "banding-nogap.e4.json", "banding-nogap.json"]
    snap = json.loads((folder / "banding-nogap.e4.json").read_text())
    assert snap["snapshot"] == {"of": "banding-nogap", "epoch": 4, "epochs": 5}
    assert snap["history"] == rec["history"][:len(snap["history"])] and snap["history"][-1]["epoch"] == 4
    assert snap["final_test_accuracy"] == snap["history"][-1]["test_accuracy"]
    spec = zoo.get_spec("banding-nogap.e4", tmp_settings)  # in the zoo, loadable like any model
    loaded = zoo.load_model(spec, tmp_settings)
    assert loaded.file_sha256 == snap["checkpoint_sha256"] and "snapshot after epoch 4 of 5" in spec.description
    final = zoo.load_model("banding-nogap", tmp_settings).module.state_dict()
    assert not torch.equal(loaded.module.state_dict()["fc.weight"], final["fc.weight"])  # epoch 4, not 5

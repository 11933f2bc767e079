"""Experiment variants end to end on the CPU at tiny scale: parametrised over EXPERIMENTS x variants.

Each experiment is trained once per module (all its variants and ``random``, 1 epoch, the first 128
training and 128 test images of Fashion-MNIST) into a temporary data dir; the tests read those runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from precompute.architectures import build
from precompute.declarations.experiments import EXPERIMENTS
from precompute.declarations.records import TrainingRun
from precompute.experiments import datasets as ds
from precompute.experiments.records import MAX_CHECKPOINT_BYTES, RecordError, variant_specs
from precompute.experiments.training import train
from precompute.settings import Settings

REPO = Path(__file__).resolve().parent.parent
LIMIT = 128

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ds.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
                       reason="Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist (make system-deps)"),
]

CASES = [(e, v) for e in EXPERIMENTS for v in EXPERIMENTS.get(e).variant_names(with_random=True)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(settings, get): get(experiment) trains its variants once and returns {variant: record}."""
    root = tmp_path_factory.mktemp("experiments")
    settings = Settings(data_dir=root / "data", reference_dir=root / "reference", store_dir=root / "store",
                        zoo_dir=None)
    done: dict[str, dict] = {}

    def get(exp: str) -> dict:
        if exp not in done:
            recs = train(exp, EXPERIMENTS.get(exp).variant_names(with_random=True), epochs=1, limit=LIMIT,
                         device="cpu", seed=0, settings=settings, progress=False)
            done[exp] = {r["variant"]: r for r in recs}
        return done[exp]

    return settings, get


def _ckpt(rec) -> dict[str, torch.Tensor]:
    return load_file(rec["checkpoint_path"])


@pytest.mark.parametrize("exp,variant", CASES, ids=[f"{e}-{v}" for e, v in CASES])
def test_variant_end_to_end(runs, exp, variant):
    from precompute import zoo

    settings, get = runs
    rec = get(exp)[variant]
    name = f"{exp}-{variant}"
    # the record: every field, on disk as returned
    assert rec["model"] == name and rec["experiment"] == exp and rec["variant"] == variant
    missing = [k for k in TrainingRun.written_keys() if k not in rec]
    assert not missing, missing
    on_disk = json.loads(Path(rec["record_path"]).read_text())
    assert on_disk == {k: v for k, v in rec.items() if k not in ("checkpoint_path", "record_path")}
    assert Path(rec["record_path"]).parent == settings.data_dir / "variants"
    epochs = 0 if variant == "random" else 1
    # the initialisation, then one point per epoch (one step an epoch: no inner points of the first epoch)
    assert rec["epochs"] == epochs and [r["epoch"] for r in rec["history"]] == list(range(epochs + 1))
    for row in rec["history"]:
        assert set(row) >= {"epoch", "step", "lr", "train_loss", "train_accuracy", "test_accuracy", "images_per_s",
                            "metrics", "dead_relu"}
    assert rec["history"][-1]["test_accuracy"] == rec["final_test_accuracy"]
    assert rec["train_size"] == rec["test_size"] == LIMIT and rec["limit"] == LIMIT and rec["seed"] == 0
    assert 0 <= rec["final_test_accuracy"] <= 100
    assert rec["command"].startswith(f"convscope train {exp} --variant {variant} ")
    assert rec["code_version"] and rec["device"].startswith("cpu")
    assert set(rec["measurements"]) == set(EXPERIMENTS.get(exp).measurements)
    # the checkpoint: fp16 safetensors within the size limit, matching the record
    path = Path(rec["checkpoint_path"])
    assert path.suffix == ".safetensors" and path.stat().st_size == rec["checkpoint_bytes"] <= MAX_CHECKPOINT_BYTES
    tensors = _ckpt(rec)
    floats = [t for t in tensors.values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float16 for t in floats)
    # in the zoo, loadable strictly, with exactly the saved weights
    spec = zoo.get_spec(name, settings)
    assert spec.family == "variant" and spec.arch == rec["arch"] and spec.dataset == "fashion-mnist"
    assert spec.accuracy == rec["final_test_accuracy"] and spec.input_size == tuple(rec["input_size"])
    assert spec.extra["experiment"] == exp and spec.extra["variant"] == variant
    assert spec.extra["reference"] is False
    loaded = zoo.load_model(spec, settings)
    assert loaded.file_sha256 == rec["checkpoint_sha256"]
    state = loaded.module.state_dict()
    for k, t in tensors.items():
        assert torch.equal(state[k], t.to(state[k].dtype)), k
    with torch.no_grad():
        out = loaded.module(torch.zeros(2, *spec.input_size))
    assert out.shape == (2, 10)


def test_all_variants_listed(runs):
    settings, get = runs
    for exp in EXPERIMENTS:
        get(exp)
    names = {s.name for s in variant_specs(settings)}
    assert names == {f"{e}-{v}" for e, v in CASES}


def test_same_seed_same_checkpoint(runs, tmp_path):
    settings, get = runs
    first = get("banding")["rot90"]  # augmentation, input transform, data order all seeded
    again = train("banding", ["rot90"], epochs=1, limit=LIMIT, device="cpu", seed=0, settings=settings,
                  out=tmp_path / "again", progress=False)[0]
    assert again["checkpoint_sha256"] == first["checkpoint_sha256"]
    assert again["history"][0]["train_loss"] == first["history"][0]["train_loss"]
    other = train("banding", ["rot90"], epochs=1, limit=LIMIT, device="cpu", seed=1, settings=settings,
                  out=tmp_path / "other", progress=False)[0]
    assert other["checkpoint_sha256"] != first["checkpoint_sha256"]


def test_bnonly_freezes_everything_but_batchnorm(runs):
    _, get = runs
    r = get("bnonly")
    init, bn, bn_out, all_ = (_ckpt(r[v]) for v in ("random", "bn", "bn-output", "all"))
    convs = [k for k in init if k.endswith("weight") and init[k].dim() == 4]
    gammas = [k for k in init if k.endswith("bn1.weight") or k.endswith("bn2.weight")]
    assert len(convs) == 19 and gammas
    for k in convs + ["linear.weight", "linear.bias"]:
        assert torch.equal(bn[k], init[k]), k  # still at the He-normal initialisation
    for k in convs:
        assert torch.equal(bn_out[k], init[k]), k
    assert not torch.equal(bn_out["linear.weight"], init["linear.weight"])
    assert any(not torch.equal(bn[k], init[k]) for k in gammas)
    assert sum(not torch.equal(all_[k], init[k]) for k in convs) == len(convs)
    # He-normal fan_in init, gammas U[0, 1]
    w = init["layer3.0.conv2.weight"].float()
    assert abs(w.std().item() - (2 / (64 * 9)) ** 0.5) < 0.005
    assert 0 <= init["bn1.weight"].min() and init["bn1.weight"].max() <= 1
    assert r["bn"]["trainable_params"] == sum(init[k].numel() for k in init if ".bn" in k or k.startswith("bn1.")
                                              if k.endswith(("weight", "bias")))
    assert r["bn-output"]["trainable_params"] == r["bn"]["trainable_params"] + 64 * 10 + 10
    for v in ("all", "bn", "bn-output"):
        m = r[v]["measurements"]
        assert 0 <= m["dead_relu"]["fraction"] <= 1 and m["dead_relu"]["channels"] == 16 * 7 + 32 * 6 + 64 * 6
        assert m["gamma_clamp"]["threshold"] == 0.01
        assert m["gamma_clamp"]["accuracy"] == r[v]["final_test_accuracy"]
        assert m["gamma_clamp"]["change"] == pytest.approx(m["gamma_clamp"]["accuracy_clamped"] - r[v]["final_test_accuracy"])


def test_branches_are_grouped_convs(runs):
    from precompute import zoo

    settings, get = runs
    get("branches")
    for b in (1, 2, 4):
        m = zoo.load_model(f"branches-{b}", settings).module
        assert m.conv1.groups == 1 and m.layer3[0].conv1.groups == 1
        for stage in (m.layer1, m.layer2):
            for block in stage:
                assert block.conv1.groups == block.conv2.groups == b
    # the shortcut keeps branch g in branch g
    from precompute.experiments.nets import GroupedOptionA

    x = torch.zeros(1, 16, 4, 4)
    x[:, 4:8] = 1  # branch 1 of 4
    y = GroupedOptionA(16, 32, 4)(x)
    assert y[:, 8:16].abs().sum() > 0 and y[:, :8].abs().sum() == 0 and y[:, 16:].abs().sum() == 0


def test_rot90_rotates_the_inputs(runs):
    from precompute.experiments.datasets import DATASETS
    from precompute.experiments.recipes import INPUT_TRANSFORMS
    from precompute.experiments.training import _Data

    settings, get = runs
    rec = get("banding")["rot90"]
    assert rec["input_transform"]["name"] == "rot90"
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 0, :] = 1  # a horizontal bar at the top ...
    r = INPUT_TRANSFORMS["rot90"][0](x)
    assert r[0, 0, :, 0].tolist() == [1] * 5 and r.sum() == 5  # ... becomes a vertical bar on the left
    xr, yr = ds.load_raw("fashion-mnist", "test", settings, limit=8)
    info = DATASETS.get("fashion-mnist")
    plain, _ = _Data(xr, yr, info, None, torch.device("cpu")).batch(torch.arange(8))
    rotated, _ = _Data(xr, yr, info, "rot90", torch.device("cpu")).batch(torch.arange(8))
    assert torch.equal(rotated, torch.rot90(plain, 1, dims=(2, 3)))


def test_heads_padding_and_sizes(runs):
    from precompute import zoo

    settings, get = runs
    get("banding"), get("symmetry")
    assert zoo.load_model("banding-nogap", settings).module.fc.in_features == 64 * 7 * 7
    assert zoo.load_model("banding-xpool", settings).module.fc.in_features == 64 * 7
    assert zoo.load_model("banding-baseline", settings).module.fc.in_features == 64
    assert zoo.get_spec("symmetry-oddsize", settings).input_size == (1, 29, 29)
    m = zoo.load_model("symmetry-reflectpad", settings).module
    assert {c.padding_mode for c in m.modules() if isinstance(c, torch.nn.Conv2d)} == {"reflect"}


def test_default_architectures_fit_the_size_limit():
    for exp in EXPERIMENTS.names():
        e = EXPERIMENTS.get(exp)
        for v in e.variant_names():
            kw = {**e.arch_kwargs, **e.variant(v).arch_kwargs}
            for in_ch, size in ((1, 29), (3, 33)):  # the largest inputs: odd-size CIFAR
                if e.arch == "banding-net":
                    kw["image_size"] = [size, size]
                n = sum(p.numel() + 0 for p in build(e.arch, in_channels=in_ch, **kw).state_dict().values())
                assert 2 * n < MAX_CHECKPOINT_BYTES, (exp, v, n)


def test_oversized_checkpoint_fails_loudly(tmp_path):
    from precompute.experiments.records import write_run

    state = {"w": torch.zeros(1000, dtype=torch.float16)}
    with pytest.raises(RecordError, match=r"over the .* MiB limit"):
        write_run(tmp_path, "big-one", state, {"arch": "banding-net", "arch_kwargs": {}}, max_bytes=1000)
    assert not list(tmp_path.iterdir())


def test_bad_arguments(tmp_settings):
    from precompute.registry import UnknownName

    with pytest.raises(UnknownName, match="did you mean bnonly"):
        train("bnonl", settings=tmp_settings)
    with pytest.raises(UnknownName, match="unknown variant of symmetry 'odd'"):
        train("symmetry", ["odd"], settings=tmp_settings)
    with pytest.raises(ValueError, match="epochs must be >= 0; got -1"):
        train("banding", epochs=-1, settings=tmp_settings)


def test_local_run_replaces_reference(runs, tmp_path):
    settings, get = runs
    rec = get("banding")["baseline"]
    ref = tmp_path / "reference"
    ref.mkdir()
    for p in (rec["checkpoint_path"], rec["record_path"]):
        shutil.copy(p, ref)
    (ref / "README.md").write_text("not a record")
    (ref / "broken.json").write_text("{")
    both = settings.model_copy(update={"reference_dir": ref})
    with pytest.warns(UserWarning, match="broken.json"):
        spec = {s.name: s for s in variant_specs(both)}["banding-baseline"]
    assert spec.extra["reference"] is False and spec.extra["replaces_reference"] is True
    only_ref = both.model_copy(update={"data_dir": tmp_path / "empty"})
    with pytest.warns(UserWarning):
        specs = variant_specs(only_ref)
    assert [s.name for s in specs] == ["banding-baseline"] and specs[0].extra["reference"] is True


def test_progress_callback(tmp_settings):
    calls = []
    train("banding", ["random"], limit=16, device="cpu", settings=tmp_settings,
          progress=lambda f, msg: calls.append((f, msg)))
    assert calls and calls[-1][0] == 1.0 and "banding-random" in calls[-1][1]


def test_experiments_list_json(capsys, tmp_settings, monkeypatch):
    from precompute import cli

    monkeypatch.setattr(cli, "get_settings", lambda: tmp_settings)
    assert cli.main(["experiments", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == EXPERIMENTS.names()
    assert "bnonly-bn-output" in rows[1]["models"] and rows[0]["recipe"]["batch_size"] == 128


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "precompute.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_train_to_reference_then_zoo_list(tmp_path):
    env = dict(os.environ, CONVSCOPE_DATA_DIR=str(tmp_path / "data"),
               CONVSCOPE_REFERENCE_DIR=str(tmp_path / "reference"), CONVSCOPE_STORE_DIR=str(tmp_path / "store"))
    env.pop("CONVSCOPE_ZOO_DIR", None)
    done = _cli(["train", "banding", "--variant", "xpool", "--epochs", "1", "--limit", str(LIMIT),
                 "--device", "cpu", "--seed", "3", "--out", str(tmp_path / "reference")], env)
    assert done.returncode == 0, done.stderr
    assert "banding-xpool-seed3 1/1" in done.stderr and "100%" in done.stderr and "img_s=" in done.stderr
    assert "banding-xpool-seed3: test accuracy" in done.stdout  # a seed other than 0 names the run
    rec = json.loads((tmp_path / "reference" / "banding-xpool-seed3.json").read_text())
    assert rec["seed"] == 3 and rec["argv"][1:4] == ["train", "banding", "--variant"]
    assert rec["command"].endswith(f"--out {tmp_path / 'reference'}")
    listed = _cli(["zoo", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    row = rows["banding-xpool-seed3"]
    assert row["family"] == "variant" and row["status"] == "ready"
    # precomputed like any model, by `convscope train` itself
    assert "banding-xpool-seed3: done" in done.stdout and row["precomputed"]


def test_train_job_through_the_queue(tmp_path, monkeypatch):
    """`convscope train --queue` submits a train job; a worker runs it: trained, recorded, precomputed.
    The same submission again is the same job (its checkpoint is there), and runs nothing."""
    from precompute import cli
    from precompute import jobs
    from precompute.cache import Cache
    from precompute.settings import get_settings

    for k in [k for k in os.environ if k.startswith("CONVSCOPE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONVSCOPE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONVSCOPE_REFERENCE_DIR", str(tmp_path / "reference"))
    monkeypatch.setenv("CONVSCOPE_DEVICE", "cpu")
    get_settings.cache_clear()
    monkeypatch.setattr(jobs, "_enqueue", lambda settings, jid: None)  # run below, in this process
    try:
        argv = ["train", "banding", "--variant", "nogap", "--epochs", "1", "--limit", str(LIMIT), "--device", "cpu",
                "--queue"]
        assert cli.main(argv) == 0
        settings = get_settings()
        (job,) = jobs.list_jobs(settings)
        assert job["kind"] == "train" and job["state"] == "queued" and job["args"]["limit"] == LIMIT
        done = jobs.run_job(job["id"], settings)
        assert done["state"] == "done", done.get("error")
        assert done["result"]["models"] == ["banding-nogap"]
        assert done["result"]["precompute"] == {"banding-nogap": "done"}
        assert Cache(settings.cache).get_model("banding-nogap")["status"] == "done"
        assert cli.main(argv) == 0
        assert jobs.read_job(settings, job["id"])["state"] == "done"  # not queued again
        assert cli.main(["train", "banding", "--variant", "nogap", "--queue", "--out", str(tmp_path)]) == 2
    finally:
        get_settings.cache_clear()


def test_cli_train_rejects_unknown_variant(capsys):
    from precompute import cli

    assert cli.main(["train", "banding", "--variant", "rot91"]) == 2
    assert "did you mean rot90" in capsys.readouterr().err

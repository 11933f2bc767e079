"""Crashes: precompute killed with SIGKILL at random points, then restarted, leaves a complete
cache where every entry verifies; a corrupted entry is detected and recomputed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from precompute.analyses import ANALYSES
from precompute.cache import Cache, CorruptEntry
from precompute.pipeline import precompute_model, result_key
from precompute.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
STORE = Path(os.environ.get("CONVSCOPE_TEST_STORE", Path.home() / ".cache" / "convscope-test-store"))
MODEL = "vgg16-bn-random"  # big enough (about 11 s of analyses on 2 CPU cores) to be killed mid-run


def _n_results(cache: Cache) -> int:
    folder = cache.root / "results"
    return sum(1 for _ in folder.rglob("*.json")) if folder.is_dir() else 0


def _entries_of(cache: Cache, record: dict):
    for name, info in record["analyses"].items():
        analysis = ANALYSES.get(name)
        key = result_key(record["weights_sha256"], analysis, analysis.Params(**info["params"]))
        for layer in info["layers"]:
            yield key, layer


@pytest.mark.slow
def test_sigkill_at_random_points_then_restart_leaves_a_complete_verified_cache(tmp_path):
    env = dict(os.environ, CONVSCOPE_DATA_DIR=str(tmp_path), CONVSCOPE_STORE_DIR=str(STORE),
               CONVSCOPE_DEVICE="cpu")
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", MODEL]
    rng = random.Random(1234)
    cache = Cache(tmp_path / "cache")
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # kill at a random moment after this run has written something new (so every round is mid-work,
        # however fast or loaded the machine is)
        before = _n_results(cache)
        deadline = time.time() + 120
        while proc.poll() is None and _n_results(cache) == before and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        assert cache.verify_all() == []  # whatever was written so far verifies
    assert kills >= 2, "the run finished too fast to be killed; make the model bigger"
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    record = cache.get_model(MODEL)
    assert record["status"] == "done"
    assert set(record["analyses"]) == {a for a, x in ANALYSES.items() if x.scope == "layer"}
    n = 0
    for key, layer in _entries_of(cache, record):
        assert cache.get(key, layer) is not None
        n += 1
    assert n > 50
    assert cache.verify_all() == []


@pytest.mark.slow
def test_corrupted_entry_is_detected_and_recomputed(tmp_path):
    settings = Settings(data_dir=tmp_path, store_dir=STORE, device="cpu")
    record = precompute_model("resnet20-random", settings, analyses=["symmetry", "histogram"])
    cache = Cache(settings.cache)
    key, layer = next(iter(_entries_of(cache, record)))
    path = cache.result_path(key, layer)
    good = cache.get(key, layer).data
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x20  # flip a bit in the payload
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptEntry):
        cache.get(key, layer)
    assert [p for p, _ in cache.verify_all()] == [path]
    precompute_model("resnet20-random", settings, analyses=["symmetry", "histogram"])
    assert cache.get(key, layer).data == good
    assert cache.verify_all() == []


# ---- files are written with the umask's mode (issue 14, item 8) ---------------------------------------------
UMASK_CHECK = """
import io, os, stat, sys
from pathlib import Path
from precompute.cache import Cache, ResultKey, atomic_write
from precompute.sources import _write_stream_atomic

os.umask(int(sys.argv[2], 8))
root = Path(sys.argv[1])
cache = Cache(root / "cache")
paths = [cache.put(ResultKey("ab" * 32, "symmetry", 1, {}), "conv1", {"s": 1.0}),
         cache.put_model("m", {"name": "m"}), cache.put_group("clusters", 1, {"k": 4}, {"x": 1})]
atomic_write(root / "cache" / "jobs" / "j.job", b"{}")
paths.append(root / "cache" / "jobs" / "j.job")
_write_stream_atomic(io.BytesIO(b"weights"), root / "store" / "files" / "w.pt", None, "w", "")
paths.append(root / "store" / "files" / "w.pt")
print(" ".join(oct(stat.S_IMODE(p.stat().st_mode)) for p in paths))
"""


@pytest.mark.parametrize("umask,mode", [("022", "0o644"), ("002", "0o664"), ("077", "0o600")])
def test_cache_and_store_files_respect_the_umask(tmp_path, umask, mode):
    """A server and workers running as different users of one shared volume (group-writable umask 002)
    can read each other's results: entries, job states and store files get the mode the umask gives."""
    p = subprocess.run([sys.executable, "-c", UMASK_CHECK, str(tmp_path), umask], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == [mode] * 5, p.stdout

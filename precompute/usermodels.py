"""User models: checkpoints registered with ``convscope add`` or uploaded, kept in
``settings.user_models_file`` (a JSON list) with their files under ``settings.uploads``.

A new name must be free among every model of the catalogue: the models in code
(``precompute/models.py``), the trained variants and the other user models.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from . import archmatch
from .architectures import ARCHITECTURES, build, default_input_size
from .cache import atomic_write
from .declarations.limits import AUTO_ARCH, UPLOAD_EXTENSIONS
from .declarations.specs import ModelSpec
from .errors import ModelError
from .experiments.records import variant_specs
from .graphs import FORMATS, format_for, read_graph
from .locks import file_lock
from .models import MODELS
from .names import InvalidName, check_model_name
from .registry import UnknownName, unknown_message
from .settings import Settings
from .sources import LocalFile, _write_stream_atomic, read_checkpoint, sha256_file, unwrap_state_dict


def _read_user_entries(settings: Settings) -> list[dict]:
    f = settings.user_models_file
    if not f.is_file():
        return []
    try:
        data = json.loads(f.read_text() or "[]")
    except json.JSONDecodeError as e:
        raise ModelError(f"{f} is not valid JSON ({e}); fix or delete it") from None
    if not isinstance(data, list):
        raise ModelError(f"{f} must hold a JSON list of models; fix or delete it")
    return data


def _write_user_entries(settings: Settings, entries: list[dict]) -> None:
    atomic_write(settings.user_models_file, (json.dumps(entries, indent=2) + "\n").encode())


def _user_path(settings: Settings, stored: str) -> Path:
    p = Path(stored)
    return p if p.is_absolute() else settings.uploads / p


def _entry_spec(e: dict, settings: Settings) -> ModelSpec:
    # a graph file's entry keeps the size its sizes were computed at (none for bare weights)
    size = e.get("input_size") or (None if e["arch"] in FORMATS else default_input_size(e["arch"])) or (3, 224, 224)
    return ModelSpec(
        name=e["name"], arch=e["arch"], source=LocalFile(_user_path(settings, e["path"]), e.get("sha256")),
        dataset=e.get("dataset", "unknown"), input_size=tuple(size), family="user",
        origin=f"user checkpoint {Path(e['path']).name}, added {e.get('added', '?')}",
        description=e.get("description", ""), extra={"added": e.get("added")},
    )


def user_specs(settings: Settings) -> list[ModelSpec]:
    """The user-registered models (``settings.user_models_file``), as specs with a LocalFile source.

    Entries with a bad name or an unknown architecture are skipped (never joined to a path).
    """
    out = []
    for e in _read_user_entries(settings):
        try:
            check_model_name(e.get("name"))
        except InvalidName:
            continue
        if (e.get("arch") in ARCHITECTURES or e.get("arch") in FORMATS) and isinstance(e.get("path"), str):
            out.append(_entry_spec(e, settings))
    return out


def _taken_names(settings: Settings) -> set[str]:
    names = set(MODELS.names()) | {e.get("name") for e in _read_user_entries(settings)}
    return names | {s.name for s in variant_specs(settings)}


def _safe_basename(name: str) -> str:
    stem, suffix = os.path.splitext(os.path.basename(name))
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "checkpoint"
    return stem[:100] + suffix.lower()


def match_checkpoint(path: Path, settings: Settings) -> str:
    """The architecture of the state dict in ``path``, from its keys and shapes (``--arch auto``):
    ModelError naming the three nearest and what differs when none has them."""
    sd = unwrap_state_dict(read_checkpoint(path, settings.max_checkpoint_expansion))
    try:
        return archmatch.match({k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}).name
    except archmatch.NoMatch as e:
        raise ModelError(f"{path.name}: {e}") from None


def add_user_model(path, arch: Optional[str], name: str, settings: Settings, dataset: str = "unknown",
                   input_size: Optional[tuple[int, int, int]] = None) -> ModelSpec:
    """Register a user's checkpoint or graph file as model ``name``; every problem raises ModelError.

    The name is validated, must be new, the architecture known, the extension one of
    :data:`UPLOAD_EXTENSIONS`; the file is loaded once into the architecture (so a mismatch fails now,
    with the missing and unexpected keys), copied to ``<uploads>/<name>/<basename>``, and the entry
    written atomically to ``settings.user_models_file``.

    ``arch`` empty (None) for a file that carries its graph (``.onnx``, ``.h5``, ``.keras``), or a format
    name (``onnx``, ``keras``, ``none`` for weights alone): the file is read as that format
    (:mod:`precompute.graphs`) instead, and the entry keeps the format as its arch and the input size the
    sizes were computed at.
    """
    try:
        check_model_name(name)
    except InvalidName as e:
        raise ModelError(str(e)) from None
    path = Path(path)
    fmt = format_for(path, arch)
    if fmt is None and arch != AUTO_ARCH:
        try:
            ARCHITECTURES.get(arch)
        except UnknownName as e:
            raise ModelError(str(e)) from None
    if path.suffix.lower() not in UPLOAD_EXTENSIONS:
        raise ModelError(f"unsupported checkpoint extension {path.suffix or '(none)'!r} for {path}: "
                         f"use one of {', '.join(UPLOAD_EXTENSIONS)}")
    if not path.is_file():
        raise ModelError(f"missing file {path}: give the path of an existing checkpoint")
    if fmt is None and arch == AUTO_ARCH:
        arch = match_checkpoint(path, settings)
    if input_size is not None:
        input_size = tuple(int(x) for x in input_size)
        if len(input_size) != 3 or min(input_size) < 1:
            raise ModelError(f"input_size must be (C, H, W) with positive sizes; got {input_size}")

    lock = settings.user_models_file.with_name(".user-models.lock")
    with file_lock(lock):
        if name in _taken_names(settings):
            raise ModelError(f"a model named {name!r} already exists; choose another name")
        sha = sha256_file(path)
        if fmt is not None:  # read the graph now, so an unsupported op or a hostile file fails here
            arch = fmt
            input_size = read_graph(path, fmt, input_size, settings.max_checkpoint_expansion).input_size \
                or input_size
        else:
            probe = ModelSpec(name=name, arch=arch, source=LocalFile(path, sha), dataset=dataset,
                              input_size=input_size or (3, 224, 224), family="user")
            probe.source.load_into(build(arch), probe, settings)

        dest_dir = settings.uploads / name
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / _safe_basename(path.name)
        with open(path, "rb") as src:
            _write_stream_atomic(src, dest, sha, str(path), "the file changed while it was copied; try again")
        entry = {"name": name, "arch": arch, "path": f"{name}/{dest.name}", "sha256": sha,
                 "dataset": dataset, "input_size": list(input_size) if input_size else None,
                 "added": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        entries = _read_user_entries(settings) + [entry]
        _write_user_entries(settings, entries)
    return _entry_spec(entry, settings)


def remove_user_model(name: str, settings: Settings) -> None:
    """Forget user model ``name`` and delete its uploaded file; UnknownName when there is none."""
    lock = settings.user_models_file.with_name(".user-models.lock")
    with file_lock(lock):
        entries = _read_user_entries(settings)
        keep = [e for e in entries if e.get("name") != name]
        if len(keep) == len(entries):
            raise UnknownName(unknown_message("user model", name, [e.get("name") for e in entries]))
        _write_user_entries(settings, keep)
    check_model_name(name)  # only a valid name is ever joined to a path
    shutil.rmtree(settings.uploads / name, ignore_errors=True)



"""Trained variants on disk: ``<name>.safetensors`` (fp16 weights) + ``<name>.json`` (the run record).

Two folders are scanned: ``settings.reference_dir`` (the committed reference runs, ``extra["reference"]
= True``) and ``settings.data_dir / "variants"`` (what ``convscope train`` writes by default). When both
hold a model of the same name, the local run wins (it replaces the reference everywhere, and its spec
says so with ``extra["replaces_reference"] = True``); delete the local files to get the reference back.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn

from ..cache import atomic_write
from ..declarations.specs import ModelSpec
from ..names import InvalidName, check_model_name
from ..settings import Settings
from ..sources import Variant

RECORD_FORMAT = "convscope-variant/1"
MAX_CHECKPOINT_BYTES = 3 * 1024 * 1024
#: keys every record has (tests check them; docs/FORMATS.md-style contract, see reference/README.md)
RECORD_KEYS = (
    "format", "model", "experiment", "variant", "description", "arch", "arch_kwargs", "dataset", "input_size",
    "mean", "std", "num_classes", "input_transform", "trainable", "recipe", "epochs", "seed", "limit",
    "train_size", "test_size", "params", "trainable_params", "history", "final_test_accuracy", "measurements",
    "command", "argv", "code_version", "torch_version", "device", "deterministic", "images_per_s",
    "train_seconds", "seconds", "created", "checkpoint", "checkpoint_sha256", "checkpoint_bytes",
)


class RecordError(Exception):
    """A variant record or checkpoint that cannot be used."""


def local_variants_dir(settings: Settings) -> Path:
    return settings.data_dir / "variants"


def read_record(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: not a readable JSON record ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
        raise RecordError(f"{path}: not a convscope variant record (format {rec.get('format') if isinstance(rec, dict) else None!r})")
    missing = [k for k in ("model", "arch", "arch_kwargs", "dataset", "input_size") if k not in rec]
    if missing:
        raise RecordError(f"{path}: record lacks {', '.join(missing)}")
    try:
        check_model_name(rec["model"])
    except InvalidName as e:
        raise RecordError(f"{path}: {e}") from None
    if rec["model"] != path.stem:
        raise RecordError(f"{path}: record names model {rec['model']!r}, the file is named {path.stem!r}")
    return rec


def scan(folder: Path) -> dict[str, tuple[dict, Path]]:
    """name -> (record, checkpoint path) for every valid pair in ``folder``; bad ones are warned and skipped."""
    found: dict[str, tuple[dict, Path]] = {}
    if not folder.is_dir():
        return found
    for jpath in sorted(folder.glob("*.json")):
        if jpath.name.startswith("."):
            continue
        ckpt = jpath.with_suffix(".safetensors")
        try:
            rec = read_record(jpath)
            if not ckpt.is_file():
                raise RecordError(f"{jpath}: its checkpoint {ckpt.name} is missing")
        except RecordError as e:
            warnings.warn(f"skipping variant: {e}", stacklevel=2)
            continue
        found[rec["model"]] = (rec, ckpt)
    return found


def spec_from_record(rec: dict, ckpt: Path, *, reference: bool, replaces_reference: bool = False) -> ModelSpec:
    extra = dict(rec)
    extra.update(reference=reference, replaces_reference=replaces_reference,
                 experiment=rec.get("experiment"), variant=rec.get("variant"))
    acc = rec.get("final_test_accuracy")
    where = "committed reference run" if reference else "local run"
    return ModelSpec(
        name=rec["model"], arch=rec["arch"], source=Variant(ckpt, sha256=rec.get("checkpoint_sha256")),
        dataset=rec["dataset"],
        input_size=tuple(rec["input_size"]), mean=tuple(rec.get("mean") or ()), std=tuple(rec.get("std") or ()),
        license="MIT (trained by convscope)",
        origin=f"{where}: {rec.get('command', 'convscope train')}",
        description=f"{rec.get('experiment')} / {rec.get('variant')}: {rec.get('description', '')}".strip(),
        accuracy=acc, family="variant", arch_kwargs=dict(rec["arch_kwargs"]), extra=extra)


def variant_specs(settings: Settings) -> list[ModelSpec]:
    """ModelSpecs of the trained variants: references, then local runs (a local run replaces a reference of
    the same name). Sorted by name."""
    refs = scan(Path(settings.reference_dir))
    local = scan(local_variants_dir(settings))
    specs = {}
    for name, (rec, ckpt) in refs.items():
        specs[name] = spec_from_record(rec, ckpt, reference=True)
    for name, (rec, ckpt) in local.items():
        specs[name] = spec_from_record(rec, ckpt, reference=False, replaces_reference=name in refs)
    return [specs[n] for n in sorted(specs)]


def fp16_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with floating tensors cast to float16 (integer buffers kept); fails on overflow."""
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point():
            h = v.to(torch.float16)
            if not torch.isfinite(h).all():
                raise RecordError(f"{k}: values beyond float16's range (max |v| = {v.abs().max().item():.4g})")
            v = h
        out[k] = v.contiguous()
    return out


def write_run(out_dir: Path, name: str, state: dict[str, torch.Tensor], record: dict,
              max_bytes: int = MAX_CHECKPOINT_BYTES) -> tuple[Path, Path]:
    """Write ``<name>.safetensors`` then ``<name>.json`` atomically; the record gets the checkpoint's
    file name, sha256 and size. Raises RecordError (writing nothing) when the checkpoint exceeds max_bytes."""
    check_model_name(name)
    # one metadata key: safetensors writes its metadata map in no fixed order, and the file must be
    # byte-identical for identical weights
    meta = {"format": RECORD_FORMAT, "model": name, "arch": record["arch"], "arch_kwargs": record["arch_kwargs"]}
    raw = save(state, metadata={"convscope": json.dumps(meta, sort_keys=True)})
    if len(raw) > max_bytes:
        raise RecordError(f"{name}: the fp16 checkpoint is {len(raw) / 2**20:.2f} MiB, over the "
                          f"{max_bytes / 2**20:.2f} MiB limit for a variant; make the network smaller (width)")
    out_dir = Path(out_dir)
    ckpt = out_dir / f"{name}.safetensors"
    jpath = out_dir / f"{name}.json"
    atomic_write(ckpt, raw)
    record.update(checkpoint=ckpt.name, checkpoint_sha256=hashlib.sha256(raw).hexdigest(), checkpoint_bytes=len(raw))
    atomic_write(jpath, (json.dumps(record, indent=1, allow_nan=False) + "\n").encode())
    return ckpt, jpath

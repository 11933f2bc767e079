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
from pydantic import ValidationError
from safetensors.torch import save
from torch import nn

from ..cache import atomic_write
from ..declarations.records import RECORD_FORMAT, TrainingRun
from ..declarations.specs import ModelSpec
from ..names import check_model_name
from ..settings import Settings
from ..sources import Variant

MAX_CHECKPOINT_BYTES = 3 * 1024 * 1024


class RecordError(Exception):
    """A variant record or checkpoint that cannot be used."""


def local_variants_dir(settings: Settings) -> Path:
    return settings.data_dir / "variants"


def read_record(path: Path) -> TrainingRun:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: not a readable JSON record ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
        raise RecordError(f"{path}: not a convscope variant record (format {rec.get('format') if isinstance(rec, dict) else None!r})")
    try:
        run = TrainingRun.model_validate(rec)
    except ValidationError as e:
        raise RecordError(f"{path}: {_fields(e)}; fix or delete the record (and its checkpoint), or train the "
                          f"variant again") from None
    if run.model != path.stem:
        raise RecordError(f"{path}: record names model {run.model!r}, the file is named {path.stem!r}")
    return run


def _fields(e: ValidationError) -> str:
    """pydantic's errors as "field: what is wrong" (the field's path in the record, e.g. history.3.epoch)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'record'}: {err['msg']}"
                     + ("" if err["type"] == "missing" else f" (got {str(err.get('input'))[:80]!r})")
                     for err in e.errors())


def scan(folder: Path) -> dict[str, tuple[TrainingRun, Path]]:
    """name -> (record, checkpoint path) for every valid pair in ``folder``; bad ones are warned and skipped."""
    found: dict[str, tuple[TrainingRun, Path]] = {}
    if not folder.is_dir():
        return found
    for jpath in sorted(folder.glob("*.json")):
        if jpath.name.startswith("."):
            continue
        ckpt = jpath.with_suffix(".safetensors")
        try:
            run = read_record(jpath)
            if not ckpt.is_file():
                raise RecordError(f"{jpath}: its checkpoint {ckpt.name} is missing")
        except RecordError as e:
            warnings.warn(f"skipping variant: {e}", stacklevel=2)
            continue
        found[run.model] = (run, ckpt)
    return found


def spec_from_record(run: TrainingRun, ckpt: Path, *, reference: bool, replaces_reference: bool = False) -> ModelSpec:
    # the spec's extra is the run record, with where it came from (the server reads it back as a TrainingRun)
    extra = run.public()
    extra.update(reference=reference, replaces_reference=replaces_reference,
                 experiment=run.experiment, variant=run.variant)
    where = "committed reference run" if reference else "local run"
    return ModelSpec(
        name=run.model, arch=run.arch, source=Variant(ckpt, sha256=run.checkpoint_sha256),
        dataset=run.dataset,
        input_size=tuple(run.input_size), mean=tuple(run.mean), std=tuple(run.std),
        license="MIT (trained by convscope)",
        origin=f"{where}: {extra.get('command', 'convscope train')}",
        description=f"{run.experiment} / {run.variant}: {run.description}".strip(),
        accuracy=run.final_test_accuracy, family="variant", arch_kwargs=dict(run.arch_kwargs), extra=extra)


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
    record.update(checkpoint=ckpt.name, checkpoint_sha256=hashlib.sha256(raw).hexdigest(), checkpoint_bytes=len(raw))
    text = json.dumps(_complete(name, record).public(), indent=1, allow_nan=False) + "\n"  # checked before writing
    atomic_write(ckpt, raw)
    atomic_write(jpath, text.encode())
    return ckpt, jpath


def _complete(name: str, record: dict) -> TrainingRun:
    """``record`` as a TrainingRun with every key a written record has (:meth:`TrainingRun.written_keys`);
    RecordError naming the missing or mistyped fields: a record the zoo would refuse is never written."""
    missing = [k for k in TrainingRun.written_keys() if k not in record]
    if missing:
        raise RecordError(f"{name}: the run record lacks {', '.join(missing)} (the trainer must write every "
                          f"field of precompute/declarations/records.py TrainingRun)")
    try:
        return TrainingRun.model_validate(record)
    except ValidationError as e:
        raise RecordError(f"{name}: {_fields(e)}") from None

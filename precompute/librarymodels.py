"""The architectures of torchvision and timm by name: ``torchvision:resnet50``, ``timm:convnext_tiny``.

Each library is registered under a prefix declared in the floor (``precompute/declarations/library.py``,
which also holds the catalogue the torch-free server searches) by its own module in
``precompute/libraries/``, imported the first time one of its names is asked for (:func:`library`): a
precompute of convscope's own architectures imports neither timm nor, unless the architecture is one of
torchvision's, torchvision. A library says which names it has (torchvision: the classification,
segmentation and detection models of ``torchvision.models.list_models``; timm: ``timm.list_models()``),
how to build one untrained (never ``weights=``/``pretrained=True``: nothing is downloaded) and its native
input size from the library's own metadata (timm's ``pretrained_cfg``, torchvision's weights enum).

The catalogue (``python -m precompute.librarymodels --write``) adds what only a built model can tell:
the parameter count and the state-dict signature that ``--arch auto`` matches a checkpoint against.
Models are built on the ``meta`` device for it, so no memory is allocated for the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import nn
from tqdm import tqdm

from .declarations import library as declared
from .libraries import LIBRARIES, Library
from .registry import UnknownName, unknown_message


def library(prefix: str) -> Library:
    """The registered library of ``prefix`` (one of the floor's PREFIXES), its module imported on first use."""
    if prefix not in LIBRARIES:
        # deferred for memory (issue 18): timm adds 32 MB of resident memory to a process that has torch,
        # torchvision 170 MB (its ops import torch._dynamo, sympy and triton); a precompute of convscope's own
        # architectures needs neither. Importing the module registers the library.
        if prefix == "torchvision":
            from .libraries import torchvision_models  # noqa: F401
        elif prefix == "timm":
            from .libraries import timm_models  # noqa: F401
    return LIBRARIES.get(prefix)


def libraries() -> list[Library]:
    """Every library, registered (imported) if it was not yet, in prefix order."""
    return [library(p) for p in sorted(declared.PREFIXES)]


# ---- one name ----------------------------------------------------------------------------------------
def split(arch: str) -> tuple[Library, str]:
    """("timm:resnet50") -> (the timm Library, "resnet50"); UnknownName for an unknown prefix or name."""
    prefix, name = declared.split_name(arch)
    lib = library(prefix)
    known = lib.names()
    if name not in known:
        raise UnknownName(unknown_message("architecture", arch, [f"{prefix}:{n}" for n in known]))
    return lib, name


def builder(arch: str) -> Callable[..., nn.Module]:
    """A builder of ``arch`` ("torchvision:NAME" / "timm:NAME") with ``input_size`` like the registered ones."""
    lib, name = split(arch)

    def build(**kw) -> nn.Module:
        return lib.build(name, **kw)

    build.input_size = lib.input_size(name)  # type: ignore[attr-defined]
    build.__name__ = arch
    return build


# ---- state-dict signatures (what --arch auto matches) -------------------------------------------------
def signature(shapes: Mapping[str, Iterable[int]]) -> str:
    """A 16-hex digest of a state dict's (key, shape) list in key order, ``num_batches_tracked`` left out
    (a checkpoint saved by other code often lacks it; it carries no weight)."""
    rows = sorted((k, tuple(int(x) for x in s)) for k, s in shapes.items() if not k.endswith("num_batches_tracked"))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def state_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """key -> shape of the module's state dict (works on the meta device: no data is read)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def meta_entry(arch: str) -> dict:
    """The catalogue entry of ``arch``: input size, parameter count, tensor count and signature, from a
    model built on the meta device (no weight memory)."""
    lib, name = split(arch)
    try:
        with torch.device("meta"):
            module = lib.build(name)
    except (NotImplementedError, RuntimeError):
        # a constructor that reads a value back (torchvision's RegNets) cannot run on meta: build for real
        module = lib.build(name)
    shapes = state_shapes(module)
    size = lib.input_size(name)
    return {"name": arch, "task": lib.names()[name], "input_size": list(size) if size else None,
            "params": int(sum(p.numel() for p in module.parameters())),
            "tensors": sum(1 for k in shapes if not k.endswith("num_batches_tracked")),
            "signature": signature(shapes)}


def all_names() -> list[str]:
    return [f"{lib.prefix}:{n}" for lib in libraries() for n in sorted(lib.names())]


def build_catalogue(names: Optional[list[str]] = None, progress: bool = True) -> dict:
    """The catalogue as the floor reads it: the libraries' versions and one entry per name (a name that
    cannot be built, even on meta, is listed under ``failed`` with its error, never silently dropped)."""
    names = all_names() if names is None else names
    entries, failed = [], {}
    for arch in tqdm(names, desc="catalogue", unit="model", disable=not progress, file=sys.stderr):
        try:
            entries.append(meta_entry(arch))
        except Exception as e:  # noqa: BLE001 - a library model we cannot build is reported, not fatal
            failed[arch] = f"{type(e).__name__}: {e}"[:300]
    return {"format": declared.CATALOGUE_FORMAT,
            "versions": {lib.prefix: lib.version for lib in libraries()},
            "models": entries, "failed": failed}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="build the torchvision/timm catalogue the server searches")
    ap.add_argument("--write", action="store_true", help=f"write it to {declared.CATALOGUE_FILE.name}")
    ap.add_argument("--retry-failed", action="store_true",
                    help="rebuild only the entries the written catalogue lists as failed, keep the others")
    args = ap.parse_args(argv)
    started = time.time()
    if args.retry_failed:
        old = json.loads(declared.CATALOGUE_FILE.read_text())
        cat = build_catalogue(sorted(old["failed"]))
        models = {e["name"]: e for e in old["models"] + cat["models"]}
        cat["models"] = [models[n] for n in all_names() if n in models]
    else:
        cat = build_catalogue()
    text = json.dumps(cat, separators=(",", ":"), sort_keys=True) + "\n"
    if args.write:
        declared.CATALOGUE_FILE.write_text(text)
    print(f"{len(cat['models'])} models, {len(cat['failed'])} failed, {time.time() - started:.0f} s",
          file=sys.stderr)
    if not args.write:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

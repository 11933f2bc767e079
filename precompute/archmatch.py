"""``--arch auto``: which architecture a state dict belongs to, from its keys and shapes alone.

Every candidate has a signature, the digest of its state dict's (key, shape) list
(:func:`precompute.librarymodels.signature`): the torchvision and timm models' are in the catalogue
(``precompute/declarations/library.py``, built once), convscope's own architectures' are computed here on
the meta device (about twenty, a second). A checkpoint whose signature equals a candidate's matches it;
otherwise the three nearest candidates (by tensor count and parameter count, then by the keys and shapes
that differ, built on the meta device) are named with what differs, so the user can pick or fix one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from .architectures import ARCHITECTURES, build
from .declarations import library
from .librarymodels import signature, state_shapes

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class Candidate:
    name: str
    params: int
    tensors: int
    signature: str


@dataclass(frozen=True)
class Match:
    """``names``: every candidate with exactly the checkpoint's keys and shapes (several libraries may
    build the same network: timm's and torchvision's resnet50 have one state dict); ``name``: the one
    used, convscope's own first, then torchvision, then timm."""
    names: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.names[0]


class NoMatch(ValueError):
    """No architecture has the checkpoint's keys and shapes; the message names the nearest three."""


def _order(name: str) -> tuple:
    return (library.is_library_name(name), not name.startswith("torchvision:"), name)


@functools.lru_cache(maxsize=1)
def own_candidates() -> tuple[Candidate, ...]:
    """convscope's registered architectures with a native input size (those a checkpoint can be added
    for), built on the meta device."""
    out = []
    for name in ARCHITECTURES.names():
        if getattr(ARCHITECTURES.get(name), "input_size", None) is None:
            continue  # the experiments' configurable nets: their shapes depend on arch_kwargs
        with torch.device("meta"):
            module = build(name)
        shapes = state_shapes(module)
        out.append(Candidate(name, sum(p.numel() for p in module.parameters()),
                             sum(1 for k in shapes if not k.endswith("num_batches_tracked")), signature(shapes)))
    return tuple(out)


def candidates() -> list[Candidate]:
    lib = [Candidate(m.name, m.params, m.tensors, m.signature) for m in library.catalogue().values()]
    return list(own_candidates()) + lib


def _counts(shapes: Shapes) -> tuple[int, int]:
    kept = {k: s for k, s in shapes.items() if not k.endswith("num_batches_tracked")}
    params = sum(math.prod(int(x) for x in s) for k, s in kept.items()
                 if not k.endswith(("running_mean", "running_var")))
    return len(kept), params


def difference(shapes: Shapes, arch: str, limit: int = 4) -> str:
    """What differs between a checkpoint's keys and shapes and ``arch``'s, in words (at most ``limit``
    keys of each kind)."""
    with torch.device("meta"):
        want = state_shapes(build(arch))
    have = {k: tuple(int(x) for x in s) for k, s in shapes.items()}
    drop = lambda ks: sorted(k for k in ks if not k.endswith("num_batches_tracked"))  # noqa: E731
    missing, extra = drop(want.keys() - have.keys()), drop(have.keys() - want.keys())
    shape = [k for k in sorted(want.keys() & have.keys()) if tuple(want[k]) != have[k]]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", extra)):
        if keys:
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''})")
    if shape:
        parts.append(f"{len(shape)} of another shape ({', '.join(f'{k} {list(have[k])} vs {list(want[k])}' for k in shape[:limit])}"
                     f"{', ...' if len(shape) > limit else ''})")
    return "; ".join(parts) or "the same keys and shapes"


def match(shapes: Shapes) -> Match:
    """The architectures whose state dicts have exactly these keys and shapes; :class:`NoMatch` naming the
    three nearest with what differs when none has.

    ``shapes``: key -> shape of the checkpoint's state dict (as converted by ``unwrap_state_dict``)."""
    sig = signature(shapes)
    pool = candidates()
    hits = sorted({c.name for c in pool if c.signature == sig}, key=_order)
    if hits:
        return Match(tuple(hits))
    tensors, params = _counts(shapes)
    near = sorted(pool, key=lambda c: (abs(c.tensors - tensors) / max(tensors, 1)
                                       + abs(math.log((c.params + 1) / (params + 1))), _order(c.name)))[:3]
    lines = "\n".join(f"  {c.name} ({c.params:,} parameters): {difference(shapes, c.name)}" for c in near)
    raise NoMatch(f"no architecture has this checkpoint's {tensors} tensors and {params:,} parameters with "
                  f"their keys and shapes; the nearest are:\n{lines}\ngive one with --arch NAME (a checkpoint "
                  f"saved with a prefix such as 'module.' or 'model.' is unwrapped first)")

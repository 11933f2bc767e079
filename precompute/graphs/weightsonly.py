"""Weights without a graph (``--arch none``): a ``.safetensors`` or weights-only torch file read as a bare
list of tensors.

Every 4-d tensor is a conv layer (named after its key without ``.weight``; ``<prefix>.bias`` of the right
length is its bias), every 2-d ``<prefix>.weight`` a linear layer, every BatchNorm-shaped set of vectors
(``<prefix>.weight``, ``.bias``, ``.running_mean``, ``.running_var`` of one length) a BatchNorm, in file
order: a torch file's state-dict order; for safetensors, whose writer sorts the tensors by name, the
names in natural order (``layer2`` before ``layer10``), each BatchNorm right after the conv of the same
parent and number (``conv1``, ``bn1``).

Nothing says which layer feeds which, nor the strides, padding or input size: the rows have null
``feeds_from``, ``stride``, ``padding`` and sizes, and the analyses that need them (the SVD against the
feeder, the padding flags) are reported as needing the architecture (``GraphModel.graph`` False).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from ..errors import ModelError
from ..sources import read_checkpoint, unwrap_state_dict
from .base import GraphLayer, GraphModel, build_model, layer_name, register_format

_BN_PARTS = ("weight", "bias", "running_mean", "running_var")


def _natural(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key)]


def _stem(key: str) -> str:
    return key[: -len(".weight")] if key.endswith(".weight") else key


def _bn_after_its_conv(layers: list[GraphLayer]) -> list[GraphLayer]:
    """Natural order puts ``bn1`` before ``conv1``: move each BatchNorm right after the conv of the same
    parent and number with its channel count (``layer1.0.conv2`` -> ``layer1.0.bn2``), where there is one."""
    def parent_number(name: str) -> tuple[str, str]:
        parent, _, last = name.rpartition(".")
        return parent, "".join(re.findall(r"\d+", last))

    convs = {}
    for x in layers:
        if x.type == "conv":
            convs.setdefault(parent_number(x.name) + (int(x.weight.shape[0]),), x.name)
    partner = {x.name: convs.get(parent_number(x.name) + (int(x.weight.shape[0]),))
               for x in layers if x.type == "batchnorm"}
    moved = {b for b, c in partner.items() if c is not None}
    out: list[GraphLayer] = []
    for x in layers:
        if x.name in moved:
            continue
        out.append(x)
        out.extend(b for b in layers if b.name in moved and partner[b.name] == x.name)
    return out


@register_format("none", "weights alone, no graph: every 4-d tensor a conv, BatchNorm-shaped "
                 "vectors a BatchNorm, in file order")
def read_weights(path: Path, input_size: Optional[tuple[int, int, int]], max_expansion: float) -> GraphModel:
    """The layers of a bare state dict (see the module docstring); the sizes are unknown."""
    sd = unwrap_state_dict(read_checkpoint(path, max_expansion))
    keys = list(sd)
    if path.suffix.lower() == ".safetensors":
        keys.sort(key=_natural)
    used: set[str] = set()
    layers: list[GraphLayer] = []
    taken: set[str] = set()
    for key in keys:
        t = sd[key]
        if key in used or not t.is_floating_point():
            continue
        stem = _stem(key)
        if t.dim() == 4 or (t.dim() == 2 and key.endswith(".weight")):
            bias = sd.get(f"{stem}.bias") if key.endswith(".weight") else None
            if bias is not None and (bias.dim() != 1 or bias.numel() != t.shape[0]):
                bias = None
            used.update({key, f"{stem}.bias"} if bias is not None else {key})
            layers.append(GraphLayer(layer_name(stem, taken), "conv" if t.dim() == 4 else "linear", t, bias,
                                     pads=None, sources=None))
        elif t.dim() == 1 and key.endswith(".weight"):
            parts = {p: sd.get(f"{stem}.{p}") for p in _BN_PARTS}
            if all(v is not None and v.dim() == 1 and v.numel() == t.numel() for v in parts.values()):
                used.update(f"{stem}.{p}" for p in _BN_PARTS)
                layers.append(GraphLayer(layer_name(stem, taken), "batchnorm", t, parts["bias"],
                                         running_mean=parts["running_mean"], running_var=parts["running_var"],
                                         sources=None))
    if path.suffix.lower() == ".safetensors":
        layers = _bn_after_its_conv(layers)
    if not any(x.type == "conv" for x in layers):
        shapes = ", ".join(f"{k} {list(sd[k].shape)}" for k in keys[:6])
        raise ModelError(f"{path} holds no 4-d tensor, so no conv layer to analyse (its tensors: {shapes}"
                         f"{' ...' if len(keys) > 6 else ''})")
    return build_model(layers, None, graph=False)


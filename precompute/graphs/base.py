"""What every graph file becomes: a list of :class:`GraphLayer` (conv, linear, BatchNorm) in execution
order, read from the file as data, turned into

- an ``nn.Module`` container whose ``Conv2d`` / ``BatchNorm2d`` / ``Linear`` modules are named after the
  file's layers (dotted names nest, so ``named_modules()`` gives ``layer1.0.conv1``) and hold its
  weights. It is never run: it only carries the weights the analyses read (``ModelContext.weight``);
- the inventory rows (docs/FORMATS.md) computed from the graph itself instead of a forward pass.

The formats (ONNX, Keras, bare weights) register a reader with :func:`register_format`; each reader
refuses, with a message naming the op or layer, what it cannot read, and never executes anything.

Feeders and ``follows`` follow the rules of :mod:`precompute.inventory` (the most recent conv with the
right channel count; the conv just before a BatchNorm) restricted to what the graph says really feeds
the layer (``GraphLayer.sources``), so an exported torch model gets the same rows as the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..declarations.limits import FILE_FORMATS
from ..inventory import consumed_padding
from ..names import InvalidName, check_layer_name
from ..registry import Registry

#: torch's padding_mode names for what a graph may pad with (ONNX Pad modes, Keras)
PAD_MODES = {"constant": "zeros", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@dataclass
class GraphLayer:
    """One weight layer of a graph file, in execution order.

    ``weight``: conv (N, C/groups, kh, kw), linear (out, in), batchnorm gamma (C,).
    ``pads``: declared (top, left, bottom, right) padding of a conv; ``tf_same`` when the padding is
    TensorFlow's dynamic "same" (then ``pads`` is what it comes to at ``input_size``).
    ``sources``: the names of the conv / linear layers whose outputs reach this layer's input through
    anything but another conv or linear layer (BatchNorm, activations, pooling, additions, ...);
    None when the file has no graph (bare weights).
    ``input_size`` / ``output_size``: spatial [H, W] at the declared input size (None: unknown).
    ``flatten_from``: a linear layer fed by a flatten of a [C, H, W] map (its weight's columns already
    in C, H, W order).
    """

    name: str
    type: str  # conv | linear | batchnorm
    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    pads: Optional[tuple[int, int, int, int]] = (0, 0, 0, 0)
    tf_same: bool = False
    padding_mode: str = "zeros"
    input_size: Optional[list[int]] = None
    output_size: Optional[list[int]] = None
    sources: Optional[list[str]] = None
    flatten_from: Optional[list[int]] = None
    running_mean: Optional[torch.Tensor] = None
    running_var: Optional[torch.Tensor] = None
    eps: float = 1e-5
    op: str = ""  # the file's own name of the layer type (ONNX op, Keras class)


@dataclass
class GraphModel:
    """A graph file read: the weight container, its inventory rows, the (C, H, W) the sizes are for
    (None for bare weights) and what is missing because the file has no graph (``graph`` False)."""

    module: nn.Module
    inventory: list[dict]
    input_size: Optional[tuple[int, int, int]]
    graph: bool = True
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GraphFormat:
    """A file format that carries (or stands in for) a graph: the ``--arch`` name, the extensions it
    is picked for without ``--arch``, and ``read(path, input_size, max_expansion) -> GraphModel``."""

    name: str
    extensions: tuple[str, ...]
    read: Callable[[Path, Optional[tuple[int, int, int]], float], GraphModel]
    description: str
    #: picked by extension when no --arch is given (bare weights are only by --arch none)
    by_extension: bool = True


FORMATS: Registry[GraphFormat] = Registry("graph file format")


def register_format(name: str, description: str):
    """Decorator: register ``read`` as the reader of the declared format ``name`` (the value of ``--arch``;
    its extensions are the declaration's, precompute/declarations/limits.py FILE_FORMATS)."""
    if name not in FILE_FORMATS:
        raise ValueError(f"graph file format {name!r} has a reader but no declaration; add it to FILE_FORMATS "
                         f"in precompute/declarations/limits.py")
    extensions, by_extension = FILE_FORMATS[name]

    def deco(read):
        FORMATS.add(name, GraphFormat(name, tuple(extensions), read, description, by_extension))
        return read

    return deco


class _Container(nn.Module):
    """A node of the weight container: holds children only, has no forward (it is never run)."""


def layer_name(raw: str, taken: set[str]) -> str:
    """A valid, unique layer name (docs: module paths like ``layer1.0.conv1``) from a file's own name:
    characters outside [A-Za-z0-9_.-] become '_', empty dotted parts are dropped, a clash gets ``_2``..."""
    parts = ["".join(c if c.isalnum() or c in "_-" else "_" for c in p) for p in str(raw).split(".")]
    name = ".".join(p for p in parts if p)[:180].strip(".") or "layer"
    if not (name[0].isalnum() or name[0] == "_"):
        name = "_" + name
    base, i = name, 2
    while name in taken or any(t.startswith(name + ".") or name.startswith(t + ".") for t in taken):
        name, i = f"{base}_{i}", i + 1
    try:
        check_layer_name(name)
    except InvalidName as e:  # pragma: no cover - the rules above make a valid name
        raise ValueError(str(e)) from None
    taken.add(name)
    return name


def _place(root: nn.Module, name: str, module: nn.Module) -> None:
    parent = root
    *path, leaf = name.split(".")
    for part in path:
        child = parent._modules.get(part)
        if child is None:
            child = _Container()
            parent.add_module(part, child)
        parent = child
    parent.add_module(leaf, module)


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().to(torch.float32).contiguous(), requires_grad=False)


def _module_of(layer: GraphLayer) -> nn.Module:
    """The torch module that holds ``layer``'s weights (built on the meta device, then given the
    file's tensors: no random initialisation, no second copy)."""
    w = layer.weight
    if layer.type == "conv":
        N, Cg, kh, kw = w.shape
        with torch.device("meta"):
            m = nn.Conv2d(Cg * layer.groups, N, (kh, kw), stride=layer.stride, dilation=layer.dilation,
                          groups=layer.groups, bias=layer.bias is not None,
                          padding=(layer.pads[0], layer.pads[1]) if layer.pads else 0)
    elif layer.type == "linear":
        with torch.device("meta"):
            m = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None)
    elif layer.type == "batchnorm":
        with torch.device("meta"):
            m = nn.BatchNorm2d(w.shape[0], eps=layer.eps)
        C = w.shape[0]
        m.running_mean = layer.running_mean.float() if layer.running_mean is not None else torch.zeros(C)
        m.running_var = layer.running_var.float() if layer.running_var is not None else torch.ones(C)
        m.num_batches_tracked = torch.zeros((), dtype=torch.long)
        if layer.bias is None:
            layer.bias = torch.zeros(C)
    else:
        raise ValueError(f"layer {layer.name!r}: unknown layer type {layer.type!r}")
    m.weight = _param(w)
    if layer.bias is not None:
        m.bias = _param(layer.bias.reshape(-1))
    return m.eval()


def build_model(layers: list[GraphLayer], input_size: Optional[tuple[int, int, int]], graph: bool = True,
                notes: Optional[list[str]] = None) -> GraphModel:
    """The weight container and the inventory rows of ``layers`` (in execution order)."""
    root = _Container()
    for layer in layers:
        _place(root, layer.name, _module_of(layer))
    return GraphModel(root.eval(), rows_of(layers), input_size, graph, list(notes or []))


def _feeder(layer: GraphLayer, previous: list[dict], channels: int) -> Optional[str]:
    """inventory._feeder's rule (the latest conv with ``channels`` outputs), among the layers that the
    graph says reach this one."""
    if layer.sources is None:
        return None
    sources = set(layer.sources)
    for r in reversed(previous):
        if r["type"] == "conv" and r["out_channels"] == channels and r["name"] in sources:
            return r["name"]
    return None


def rows_of(layers: list[GraphLayer]) -> list[dict]:
    """Inventory rows (docs/FORMATS.md) of ``layers``; unknown sizes and, for bare weights, unknown
    strides and padding are null."""
    rows: list[dict] = []
    convs_so_far: list[dict] = []
    for layer in layers:
        w = layer.weight
        row = {"name": layer.name, "index": len(rows),
               "class": {"conv": "Conv2d", "linear": "Linear", "batchnorm": "BatchNorm2d"}[layer.type],
               "weight_shape": list(w.shape),
               "params": int(w.numel() + (layer.bias.numel() if layer.bias is not None else 0)
                             + (w.numel() if layer.type == "batchnorm" and layer.bias is None else 0)),
               "input_size": None, "output_size": None, "feeds_from": None, "follows": None,
               "uneven_padding": False, "uneven_detail": None, "flatten_from": None}
        if layer.type == "conv":
            N, Cg, kh, kw = (int(x) for x in w.shape)
            row.update(type="conv", in_channels=Cg * layer.groups, out_channels=N, kernel=[kh, kw],
                       groups=layer.groups,
                       depthwise=layer.groups > 1 and layer.groups == Cg * layer.groups and N % layer.groups == 0,
                       input_size=layer.input_size, output_size=layer.output_size)
            if layer.sources is None:  # bare weights: stride and padding are not in the file
                row.update(stride=None, padding=None, pads=None, dilation=None, padding_mode=None,
                           uneven_padding=None)
            else:
                s, d, (t, l, b, r) = layer.stride, layer.dilation, layer.pads
                row.update(stride=list(s), dilation=list(d), padding=[t, l], pads=[t, l, b, r],
                           padding_mode="tf-same" if layer.tf_same else layer.padding_mode)
                if layer.input_size is not None:
                    H, W = layer.input_size
                    top, bottom = consumed_padding(H, kh, s[0], d[0], t, p_end=b)
                    left, right = consumed_padding(W, kw, s[1], d[1], l, p_end=r)
                    row.update(uneven_padding=(top != bottom) or (left != right),
                               uneven_detail={"top": top, "bottom": bottom, "left": left, "right": right})
            row["feeds_from"] = _feeder(layer, convs_so_far, row["in_channels"])
            convs_so_far.append(row)
        elif layer.type == "linear":
            row.update(type="linear", in_channels=int(w.shape[1]), out_channels=int(w.shape[0]),
                       flatten_from=layer.flatten_from)
            row["feeds_from"] = _feeder(layer, convs_so_far, row["in_channels"] if layer.flatten_from is None
                                        else layer.flatten_from[0])
            convs_so_far.append(row)
        else:
            C = int(w.shape[0])
            row.update(type="batchnorm", in_channels=C, out_channels=C, input_size=layer.input_size,
                       output_size=layer.output_size)
            prev = rows[-1] if rows else None
            if prev is not None and prev["type"] == "conv" and prev["out_channels"] == C and (
                    layer.sources is None or prev["name"] in layer.sources):
                row["follows"] = prev["name"]
        rows.append(row)
    return rows

"""ONNX files (``.onnx``): the graph and its initializers read with the ``onnx`` package, never run.

What becomes a layer (:class:`~precompute.graphs.base.GraphLayer`):

- ``Conv`` with a stored 4-d weight: strides, dilations, group, ``pads`` [top, left, bottom, right]
  (asymmetric ones kept as such), ``auto_pad`` SAME_UPPER (TensorFlow "same": ``tf-same``) /
  SAME_LOWER / VALID, and a ``Pad`` op right before it (how exporters write TF "same" and reflection
  padding) folded into its padding and ``padding_mode``;
- ``BatchNormalization`` (scale, B, mean, var, epsilon);
- ``Gemm`` (``alpha * B``, transposed as ``transB`` says, ``beta * C``) and ``MatMul`` with a stored 2-d
  weight: linear layers. A flatten of a [C, H, W] map right before one (through ``Flatten`` / ``Reshape``
  / ``Transpose`` / ``Identity``) gives ``flatten_from``; an NHWC flatten (a ``Transpose`` to channels-
  last first, as Keras converters write) has its weight's columns put in C, H, W order.

Spatial sizes come from ``onnx.shape_inference`` with the graph's input fixed to (1, C, H, W) at the
declared input size. Which layer feeds which comes from the graph's edges (base.GraphLayer.sources).

Refused, with a message naming the op and the node: an op outside the standard ONNX domain or without
a known schema, a weight layer convscope does not analyse (ConvTranspose, quantised convs, ...) or
control flow on the way into a conv or linear layer; a conv whose weight is computed rather than
stored; a file that keeps tensors in external data (never opened); tensors whose declared sizes
exceed the file (CONVSCOPE_MAX_CHECKPOINT_EXPANSION, as for any checkpoint).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import onnx.defs
import onnx.numpy_helper
import onnx.shape_inference
import torch
from onnx import TensorProto

from ..errors import ModelError
from ..sources import refuse_expansion
from .base import PAD_MODES, GraphLayer, GraphModel, build_model, layer_name, register_format

#: ops that hold weights convscope does not analyse, or that run sub-graphs: refused on the way into a layer
UNSUPPORTED = {"ConvTranspose": "a transposed convolution", "ConvInteger": "a quantised convolution",
               "QLinearConv": "a quantised convolution", "QLinearMatMul": "a quantised matrix product",
               "MatMulInteger": "a quantised matrix product", "DeformConv": "a deformable convolution",
               "If": "control flow", "Loop": "control flow", "Scan": "control flow",
               "RNN": "a recurrent layer", "LSTM": "a recurrent layer", "GRU": "a recurrent layer"}
#: ops that only reshape on the way from a 4-d map to a linear layer (for flatten_from)
_FLATTENING = {"Flatten", "Reshape", "Identity", "Squeeze", "Dropout", "Transpose"}
#: integer ops evaluated on stored constants to read a computed padding (Graph.small_int)
_INT_OPS = {"Cast", "Identity", "Reshape", "Transpose", "Concat", "Unsqueeze", "Squeeze", "Gather", "Slice",
            "Add", "Sub", "Mul", "Div", "Neg", "Ceil", "Floor", "Max", "Min", "Clip", "Shape", "ConstantOfShape"}
_INTS = {TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT8,
         TensorProto.FLOAT, TensorProto.DOUBLE}
#: ONNX's standard domains
_STANDARD = {"", "ai.onnx"}
#: weight-name endings dropped from a layer's name (torch "conv1.weight", Paddle "conv2d_10.w_0", ...)
_WEIGHT_SUFFIXES = ("weight", "w_0", "kernel", "W", "scale", "gamma")

_ITEMSIZE = {TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2,
             TensorProto.INT64: 8, TensorProto.INT32: 4, TensorProto.INT16: 2, TensorProto.INT8: 1,
             TensorProto.UINT8: 1, TensorProto.UINT16: 2, TensorProto.UINT32: 4, TensorProto.UINT64: 8,
             TensorProto.BOOL: 1}


def _all_tensors(graph: onnx.GraphProto):
    """(where, TensorProto) of every tensor stored in ``graph`` and its sub-graphs."""
    for t in graph.initializer:
        yield f"initializer {t.name!r}", t
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield f"attribute {a.name!r} of node {node.name or node.op_type!r}", a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                for t in a.tensors:
                    yield f"attribute {a.name!r} of node {node.name or node.op_type!r}", t
            elif a.type == onnx.AttributeProto.GRAPH:
                yield from _all_tensors(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _all_tensors(g)


def _check_tensors(model: onnx.ModelProto, path: Path, max_expansion: float) -> None:
    """External data refused (never opened); every tensor's declared size must match what it stores,
    and all of them together must fit the file (a 1 KB file cannot declare a 40 GB weight)."""
    declared = 0
    for where, t in _all_tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL or t.external_data:
            loc = next((e.value for e in t.external_data if e.key == "location"), "?")
            raise ModelError(
                f"{path}: tensor {t.name!r} ({where}) is kept in external data ({loc[:100]!r}); convscope reads "
                f"single-file ONNX models only and never opens other files. Save the model in one file: "
                f"onnx.save(onnx.load(path), 'model.onnx', save_as_external_data=False)")
        if any(d < 0 for d in t.dims):
            raise ModelError(f"{path}: tensor {t.name!r} ({where}) declares a negative dimension {list(t.dims)}; "
                             f"the file is corrupt")
        n = math.prod(t.dims)
        item = _ITEMSIZE.get(t.data_type, 8)
        if t.raw_data:
            stored = len(t.raw_data)
        else:
            stored = item * max(len(t.float_data), len(t.int32_data), len(t.int64_data), len(t.double_data),
                                len(t.uint64_data))
            if t.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.UINT8,
                               TensorProto.INT16, TensorProto.UINT16, TensorProto.BOOL):
                stored = item * len(t.int32_data)
        if t.data_type != TensorProto.STRING and stored != n * item:
            raise ModelError(f"{path}: tensor {t.name!r} ({where}) declares shape {list(t.dims)} ({n * item} bytes) "
                             f"but stores {stored} bytes; the file is corrupt or hostile. Export the model again")
        declared += n * item
    refuse_expansion(path, declared, "its tensors declare", max_expansion,
                     "ONNX stores tensors uncompressed: export the model again")


def _load(path: Path, max_expansion: float) -> onnx.ModelProto:
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"ONNX file {path} is empty (0 bytes): replace it with the complete file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends on a damaged file
        raise ModelError(f"{path} is not a readable ONNX file ({type(e).__name__}: {str(e)[:200]}); "
                         f"export it again with torch.onnx.export or your framework's exporter") from None
    if not model.graph.node:
        raise ModelError(f"{path} holds no ONNX graph (no nodes): is it an ONNX model file?")
    _check_tensors(model, path, max_expansion)
    return model


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """The graph as data: constants by name, producers and consumers of every value, inferred shapes."""

    def __init__(self, model: onnx.ModelProto, path: Path):
        self.path = path
        g = model.graph
        self.nodes = list(g.node)
        self.const: dict[str, TensorProto] = {t.name: t for t in g.initializer}
        self.producer: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                self.producer[o] = i
            if n.op_type == "Constant" and n.domain in _STANDARD:
                a = _attrs(n)
                if isinstance(a.get("value"), TensorProto):
                    self.const[n.output[0]] = a["value"]
            elif n.op_type == "Identity" and n.input and n.input[0] in self.const:
                self.const[n.output[0]] = self.const[n.input[0]]  # exporters dedupe equal weights this way
        self.inputs = [i for i in g.input if i.name not in self.const]

    def array(self, name: str) -> np.ndarray:
        return onnx.numpy_helper.to_array(self.const[name])

    def tensor(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array(name), dtype=np.float32, order="C"))

    def small_int(self, name: str, shapes: dict, depth: int = 0) -> Optional[np.ndarray]:
        """The value of a small integer tensor computed from stored constants by shape arithmetic (how
        torch exports ``F.pad(x, [...])``: Concat, Slice, Transpose, Reshape, Cast of stored numbers), or
        None. Only these integer ops on at most 64 numbers are evaluated, with numpy: read as data, the
        model itself is never run."""
        if name in self.const:
            t = self.const[name]
            if math.prod(t.dims) > 64 or t.data_type not in _INTS:
                return None
            v = self.array(name)
            return v.astype(np.int64) if v.dtype.kind in "iub" else v.astype(np.float64)
        j = self.producer.get(name)
        if j is None or depth > 32:
            return None
        n = self.nodes[j]
        if n.domain not in _STANDARD or n.op_type not in _INT_OPS:
            return None
        if n.op_type == "Shape":
            shape = shapes.get(n.input[0])
            return None if shape is None or None in shape else np.array(shape, dtype=np.int64)
        a = _attrs(n)
        if n.op_type == "ConstantOfShape":
            shape = self.small_int(n.input[0], shapes, depth + 1)
            value = a.get("value")
            fill = int(onnx.numpy_helper.to_array(value).reshape(-1)[0]) if value is not None else 0
            return None if shape is None or math.prod(shape.tolist()) > 64 else np.full(shape.tolist(), fill, np.int64)
        args = [self.small_int(x, shapes, depth + 1) if x else None for x in n.input]
        if any(v is None for v, x in zip(args, n.input) if x):
            return None
        op = n.op_type
        try:
            if op == "Identity":
                out = args[0]
            elif op == "Cast":
                to = int(a.get("to", TensorProto.INT64))
                out = args[0].astype(np.float64 if to in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
                                     else np.int64)
            elif op == "Div":
                out = args[0] / args[1] if args[0].dtype.kind == "f" or args[1].dtype.kind == "f" else \
                    np.trunc(args[0] / args[1]).astype(np.int64)
            elif op in ("Ceil", "Floor"):
                out = (np.ceil if op == "Ceil" else np.floor)(args[0])
            elif op in ("Max", "Min"):
                out = args[0]
                for v in args[1:]:
                    out = (np.maximum if op == "Max" else np.minimum)(out, v)
            elif op == "Clip":
                lo = args[1] if len(args) > 1 and args[1] is not None else a.get("min")
                hi = args[2] if len(args) > 2 and args[2] is not None else a.get("max")
                out = np.clip(args[0], lo, hi)
            elif op == "Reshape":
                out = args[0].reshape([d if d != 0 else args[0].shape[k] for k, d in enumerate(args[1].tolist())])
            elif op == "Transpose":
                out = np.transpose(args[0], a.get("perm"))
            elif op == "Concat":
                out = np.concatenate([v for v in args if v is not None], axis=int(a.get("axis", 0)))
            elif op == "Unsqueeze":
                axes = a.get("axes") if "axes" in a else args[1].tolist()
                out = args[0]
                for ax in sorted(int(x) % (out.ndim + len(axes)) for x in axes):
                    out = np.expand_dims(out, ax)
            elif op == "Squeeze":
                axes = a.get("axes") if "axes" in a else (args[1].tolist() if len(args) > 1 and args[1] is not None
                                                           else None)
                out = np.squeeze(args[0], axis=None if axes is None else tuple(int(x) for x in axes))
            elif op == "Gather":
                out = np.take(args[0], args[1], axis=int(a.get("axis", 0)))
            elif op == "Slice":
                data, starts, ends = args[0], args[1].tolist(), args[2].tolist()
                axes = args[3].tolist() if len(args) > 3 and args[3] is not None else list(range(len(starts)))
                steps = args[4].tolist() if len(args) > 4 and args[4] is not None else [1] * len(starts)
                index = [slice(None)] * data.ndim
                for st, en, ax, sp in zip(starts, ends, axes, steps):
                    big = np.iinfo(np.int64)
                    en = None if en in (big.max, big.min) or en <= -big.max else en
                    index[ax] = slice(st, en, sp)
                out = data[tuple(index)]
            else:
                out = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Neg": None}[op](*args[:2]) \
                    if op != "Neg" else -args[0]
        except (ValueError, IndexError, TypeError):
            return None
        return out if out.size <= 64 else None

    def node_label(self, i: int) -> str:
        n = self.nodes[i]
        return f"{n.op_type} node {n.name or '#' + str(i)!r}"


def _input_size(graph: _Graph, input_size: Optional[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The declared (C, H, W): the one given, else the graph input's own static sizes, else 224 x 224."""
    if not graph.inputs:
        raise ModelError(f"{graph.path}: the graph has no input")
    dims = graph.inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelError(f"{graph.path}: the graph's input {graph.inputs[0].name!r} has {len(dims)} dimensions; "
                         f"convscope reads image models with an (N, C, H, W) input")
    static = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[1:]]
    if input_size is not None:
        if static[0] is not None and static[0] != input_size[0]:
            raise ModelError(f"{graph.path}: the graph's input has {static[0]} channels, the input size given "
                             f"{tuple(input_size)} has {input_size[0]}; give --input-size {static[0]},H,W")
        return tuple(int(x) for x in input_size)  # type: ignore[return-value]
    if static[0] is None:
        raise ModelError(f"{graph.path}: the graph's input does not say its channel count; give it with "
                         f"--input-size C,H,W (e.g. 3,224,224)")
    return (static[0], static[1] or 224, static[2] or 224)


def _shapes(model: onnx.ModelProto, graph: _Graph, size: tuple[int, int, int]) -> dict[str, list]:
    """Every value's inferred shape (None where a dimension is unknown) with the input at (1, C, H, W).

    Inferred on a copy without the large weights' bytes (shape inference reads only the small integer
    tensors that shapes are computed from), so a big model is not held twice."""
    light = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    g = model.graph
    light.graph.node.extend(g.node)
    light.graph.input.extend(g.input)
    light.graph.output.extend(g.output)
    for t in g.initializer:  # small tensors whole, large ones by name, type and shape only: no weight copied
        if math.prod(t.dims) <= 64:
            light.graph.initializer.append(t)
        else:
            light.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
    first = next(i for i in light.graph.input if i.name == graph.inputs[0].name)
    for d, v in zip(first.type.tensor_type.shape.dim, (1, *size)):
        d.ClearField("dim_param")
        d.dim_value = v
    out: dict[str, list] = {}
    folded: set[int] = set()
    for _ in range(8):  # a padding computed from an inferred shape is read, then what follows it inferred
        out = _infer(light, graph, size)
        more = False
        for j, n in enumerate(light.graph.node):
            if n.op_type == "Pad" and j not in folded and len(n.input) > 1 and n.input[1] \
                    and n.input[1] not in graph.const:
                value = graph.small_int(n.input[1], out)
                if value is not None:  # a stored copy of the computed pads, so inference sees through the Pad
                    name = f"{n.input[1]}::convscope-folded"
                    light.graph.initializer.append(onnx.numpy_helper.from_array(value.astype(np.int64), name))
                    n.input[1] = name
                    folded.add(j)
                    more = True
        if not more:
            break
    return out


def _infer(light: onnx.ModelProto, graph: _Graph, size: tuple[int, int, int]) -> dict[str, list]:
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - inference errors name the node that failed
        raise ModelError(f"{graph.path}: ONNX shape inference failed at input size {size}: {str(e)[:300]}. "
                         f"Give the model's own input size with --input-size C,H,W") from None
    out: dict[str, list] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _conv_path(graph: _Graph, layer_nodes: set[int]) -> set[int]:
    """The nodes whose outputs reach a layer's input (its ancestors through the data edges)."""
    seen: set[int] = set()
    stack = [i for i in layer_nodes]
    while stack:
        i = stack.pop()
        for name in graph.nodes[i].input[:1] if i in layer_nodes else graph.nodes[i].input:
            j = graph.producer.get(name)
            if j is not None and j not in seen and name not in graph.const:
                seen.add(j)
                stack.append(j)
    return seen


def _check_ops(graph: _Graph, on_path: set[int]) -> None:
    for i in sorted(on_path):
        n = graph.nodes[i]
        why = None
        if n.domain not in _STANDARD:
            why = f"an op of the custom domain {n.domain!r}"
        elif n.op_type in UNSUPPORTED:
            why = UNSUPPORTED[n.op_type]
        elif not onnx.defs.has(n.op_type):
            why = "not a standard ONNX op"
        if why:
            raise ModelError(
                f"{graph.path}: unsupported ONNX op {n.op_type!r} ({why}) at {graph.node_label(i)}, on the way into "
                f"a conv or linear layer. convscope reads Conv, BatchNormalization, Gemm and MatMul weights and "
                f"passes through standard ops; export the model without it (e.g. fuse or drop it) or add the "
                f"checkpoint with its PyTorch architecture (convscope add FILE --arch ARCH --name NAME)")


def _weight_layer_kind(graph: _Graph, n: onnx.NodeProto) -> Optional[str]:
    if n.domain not in _STANDARD:
        return None
    if n.op_type == "Conv":
        return "conv"
    if n.op_type == "BatchNormalization" and all(x in graph.const for x in n.input[1:5]):
        return "batchnorm"
    if n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] in graph.const and not _attrs(n).get("transA"):
        return "linear"
    if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in graph.const and n.input[0] not in graph.const \
            and len(graph.const[n.input[1]].dims) == 2:
        return "linear"
    return None


def _name_of(graph: _Graph, i: int, taken: set[str]) -> str:
    n = graph.nodes[i]
    weight = n.input[1] if len(n.input) > 1 else ""
    raw = weight
    if n.op_type == "BatchNormalization" or not weight:
        raw = n.input[1] if len(n.input) > 1 else ""
    stem, _, last = raw.rpartition(".")
    if stem and last in _WEIGHT_SUFFIXES:
        raw = stem
    for suffix in ("_weights", "_weight", "_scale"):  # Paddle's "conv1_weights", "bn_conv1_scale"
        if raw.endswith(suffix) and len(raw) > len(suffix):
            raw = raw[: -len(suffix)]
            break
    if not raw or raw.startswith("onnx::"):  # an exporter's anonymous value: the node's own name
        raw = n.name.strip("/").replace("/", ".") or f"{n.op_type.lower()}_{i}"
    return layer_name(raw, taken)


def _spatial(shape: Optional[list]) -> Optional[list[int]]:
    if shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None:
        return None
    return [int(shape[2]), int(shape[3])]


def _pad_before(graph: _Graph, x: str, on_conv: str, shapes: dict) -> tuple[Optional[tuple[int, int, int, int]], str, str]:
    """A ``Pad`` op that produces the conv input ``x``: its spatial (top, left, bottom, right), torch
    padding mode and its own input; (None, "zeros", x) when there is none to fold."""
    j = graph.producer.get(x)
    if j is None or graph.nodes[j].op_type != "Pad" or graph.nodes[j].domain not in _STANDARD:
        return None, "zeros", x
    p = graph.nodes[j]
    a = _attrs(p)
    if "pads" in a:  # opset < 11
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        stored = graph.small_int(p.input[1], shapes) if len(p.input) > 1 and p.input[1] else None
        if stored is None:
            raise ModelError(f"{graph.path}: the padding of {graph.node_label(j)} before conv {on_conv!r} is computed, "
                             f"from the input's values, not from stored numbers; convscope reads stored pads only")
        if len(p.input) > 3 and p.input[3]:
            raise ModelError(f"{graph.path}: {graph.node_label(j)} before conv {on_conv!r} pads only some axes; "
                             f"convscope reads pads of all four axes")
        if stored.dtype.kind == "f" and not np.all(stored == np.round(stored)):
            raise ModelError(f"{graph.path}: {graph.node_label(j)} before conv {on_conv!r} pads by fractions {stored}")
        pads = [int(v) for v in stored.reshape(-1)]
        value = float(graph.array(p.input[2]).reshape(-1)[0]) if len(p.input) > 2 and p.input[2] in graph.const else 0.0
    mode = a.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if len(pads) != 8 or any(pads[k] for k in (0, 1, 4, 5)) or min(pads) < 0 or mode not in PAD_MODES \
            or (mode == "constant" and value != 0.0):
        raise ModelError(f"{graph.path}: {graph.node_label(j)} before conv {on_conv!r} pads {pads} in mode {mode!r} "
                         f"(value {value}); convscope reads non-negative spatial padding with zeros, reflection, "
                         f"edge or wrap")
    return (pads[2], pads[3], pads[6], pads[7]), PAD_MODES[mode], p.input[0]


def _conv_pads(graph: _Graph, n: onnx.NodeProto, a: dict, size: Optional[list[int]], k, s, d):
    """(top, left, bottom, right), tf_same from Conv's ``pads`` / ``auto_pad`` at input size ``size``."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("NOTSET", ""):
        p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
        if len(p) != 4:
            raise ModelError(f"{graph.path}: conv {n.name!r} has pads {p}; a 2-d conv has four")
        return (p[0], p[1], p[2], p[3]), False
    if auto == "VALID":
        return (0, 0, 0, 0), False
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if size is None:
            raise ModelError(f"{graph.path}: conv {n.name!r} pads 'same' but its input size is unknown at the "
                             f"declared input size; give the model's input size with --input-size C,H,W")
        (t, b), (l, r) = (_same(size[0], k[0], s[0], d[0]), _same(size[1], k[1], s[1], d[1]))
        if auto == "SAME_LOWER":
            return (b, r, t, l), False
        return (t, l, b, r), True
    raise ModelError(f"{graph.path}: conv {n.name!r} has auto_pad {auto!r}; known: NOTSET, VALID, SAME_UPPER, SAME_LOWER")


def _same(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _sources(graph: _Graph, x: str, layer_of: dict[int, str], linear_or_conv: set[int]) -> list[str]:
    """The conv / linear layers whose outputs reach value ``x`` through anything else (BatchNorm
    included): a walk back along the data edges that stops at conv and linear nodes."""
    out, seen, stack = [], set(), [x]
    while stack:
        v = stack.pop()
        j = graph.producer.get(v)
        if j is None or j in seen or v in graph.const:
            continue
        seen.add(j)
        if j in linear_or_conv:
            out.append(layer_of[j])
            continue
        n = graph.nodes[j]
        stack.extend(n.input[:1] if j in layer_of else n.input)  # a BatchNorm: only its data input
    return out


def _flatten_from(graph: _Graph, x: str, shapes: dict, n_in: int) -> tuple[Optional[list[int]], bool]:
    """([C, H, W], channels_last) when ``x`` is a flatten of a 4-d map with C*H*W == n_in, H*W > 1."""
    channels_last, v = False, x
    for _ in range(16):
        j = graph.producer.get(v)
        if j is None:
            return None, False
        n = graph.nodes[j]
        if n.op_type not in _FLATTENING:
            break
        if n.op_type == "Transpose" and list(_attrs(n).get("perm", [])) == [0, 2, 3, 1]:
            channels_last = True
        v = n.input[0]
        shape = shapes.get(v)
        if shape and len(shape) == 4 and None not in shape[1:]:
            C, H, W = shape[1:]
            if C * H * W == n_in and H * W > 1:
                return [int(C), int(H), int(W)], channels_last
            return None, False
    return None, False


def _nhwc_columns_to_nchw(weight: torch.Tensor, C: int, H: int, W: int) -> torch.Tensor:
    """A linear weight (out, H*W*C) behind a channels-last flatten -> (out, C*H*W) behind an NCHW one."""
    return weight.reshape(weight.shape[0], H, W, C).permute(0, 3, 1, 2).reshape(weight.shape[0], -1).contiguous()


@register_format("onnx", "an ONNX model: graph and weights read from the file, never run")
def read_onnx(path: Path, input_size: Optional[tuple[int, int, int]], max_expansion: float) -> GraphModel:
    """The layers of the ONNX file ``path`` at the declared ``input_size`` (C, H, W) (None: the graph's)."""
    model = _load(path, max_expansion)
    try:
        return _read(path, model, input_size)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
        # a graph that breaks what the ONNX spec promises (an attribute of the wrong type, a weight of the
        # wrong shape): the file's fault, named as such
        raise ModelError(f"{path}: an ONNX graph convscope cannot read ({type(e).__name__}: {str(e)[:200]}); "
                         f"check it with onnx.checker.check_model and export it again") from None


def _read(path: Path, model: onnx.ModelProto, input_size: Optional[tuple[int, int, int]]) -> GraphModel:
    graph = _Graph(model, path)
    kinds = {i: k for i, n in enumerate(graph.nodes) if (k := _weight_layer_kind(graph, n))}
    if not any(k in ("conv", "linear") for k in kinds.values()):
        raise ModelError(f"{path}: the graph has no Conv, Gemm or MatMul layer with stored weights; nothing to analyse")
    _check_ops(graph, _conv_path(graph, {i for i, k in kinds.items() if k != "batchnorm"}))
    size = _input_size(graph, input_size)
    shapes = _shapes(model, graph, size)
    taken: set[str] = set()
    layer_of = {i: _name_of(graph, i, taken) for i in sorted(kinds)}
    linear_or_conv = {i for i, k in kinds.items() if k != "batchnorm"}
    layers = []
    for i in sorted(kinds):
        n, kind, name = graph.nodes[i], kinds[i], layer_of[i]
        a = _attrs(n)
        if kind == "conv":
            if len(n.input) < 2 or n.input[1] not in graph.const:
                j = graph.producer.get(n.input[1]) if len(n.input) > 1 else None
                made_by = graph.node_label(j) if j is not None else "a graph input"
                raise ModelError(f"{path}: the weight of conv {name!r} is computed by {made_by}, not stored in the "
                                 f"file (a quantised or generated weight); convscope reads stored conv weights only")
            w = graph.tensor(n.input[1])
            if w.dim() != 4:
                raise ModelError(f"{path}: conv {name!r} ({graph.node_label(i)}) has a {w.dim()}-d weight "
                                 f"{list(w.shape)}; convscope analyses 2-d convolutions (4-d weights) only")
            k = (int(w.shape[2]), int(w.shape[3]))
            s = tuple(int(v) for v in a.get("strides", [1, 1]))
            d = tuple(int(v) for v in a.get("dilations", [1, 1]))
            pad_op, mode, x = _pad_before(graph, n.input[0], name, shapes)
            in_size = _spatial(shapes.get(x))
            pads, tf_same = _conv_pads(graph, n, a, in_size, k, s, d)
            if pad_op is not None:
                if tf_same or any(pads) and mode != "zeros":
                    raise ModelError(f"{path}: conv {name!r} pads twice ({mode} before it, then its own pads {pads}); "
                                     f"convscope reads one padding per conv")
                pads = tuple(p + q for p, q in zip(pad_op, pads))
            bias = graph.tensor(n.input[2]) if len(n.input) > 2 and n.input[2] in graph.const else None
            layers.append(GraphLayer(name, "conv", w, bias, stride=s, dilation=d, groups=int(a.get("group", 1)),
                                     pads=pads, tf_same=tf_same, padding_mode=mode, input_size=in_size,
                                     output_size=_spatial(shapes.get(n.output[0])),
                                     sources=_sources(graph, x, layer_of, linear_or_conv), op="Conv"))
        elif kind == "batchnorm":
            C = graph.tensor(n.input[1])
            layers.append(GraphLayer(name, "batchnorm", C, graph.tensor(n.input[2]),
                                     running_mean=graph.tensor(n.input[3]), running_var=graph.tensor(n.input[4]),
                                     eps=float(a.get("epsilon", 1e-5)), input_size=_spatial(shapes.get(n.input[0])),
                                     output_size=_spatial(shapes.get(n.output[0])),
                                     sources=_sources(graph, n.input[0], layer_of, linear_or_conv),
                                     op="BatchNormalization"))
        else:
            B = graph.tensor(n.input[1])
            if B.dim() != 2:
                raise ModelError(f"{path}: linear layer {name!r} ({graph.node_label(i)}) has a {B.dim()}-d weight")
            bias = None
            if n.op_type == "Gemm":
                w = B if a.get("transB") else B.t()
                w = w * float(a.get("alpha", 1.0))
                if len(n.input) > 2 and n.input[2] in graph.const:
                    c = graph.tensor(n.input[2]).reshape(-1)
                    if c.numel() == w.shape[0]:
                        bias = c * float(a.get("beta", 1.0))
            else:
                w = B.t()
            w = w.contiguous()
            flat, channels_last = _flatten_from(graph, n.input[0], shapes, int(w.shape[1]))
            if flat is not None and channels_last:
                w = _nhwc_columns_to_nchw(w, *flat)
            layers.append(GraphLayer(name, "linear", w, bias, flatten_from=flat,
                                     sources=_sources(graph, n.input[0], layer_of, linear_or_conv), op=n.op_type))
    skipped = sorted({n.op_type for n in graph.nodes if n.op_type in UNSUPPORTED})
    notes = [f"not analysed (no conv or linear layer reads them): {', '.join(skipped)} layers"] if skipped else []
    return build_model(layers, size, graph=True, notes=notes)

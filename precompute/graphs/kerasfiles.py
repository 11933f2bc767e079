"""Keras files (``.h5`` from ``model.save``, ``.keras`` archives): the layer graph from the file's own JSON
model config read as data (never deserialised into Keras objects: no keras or tensorflow import, no
layer's code run), the weights through h5py.

- ``.h5`` (Keras 2, and Keras 3's legacy format): ``attrs["model_config"]``, weights under
  ``model_weights/<layer>/`` listed by the group's ``weight_names`` (``conv2d/kernel:0``, ...);
- ``.keras`` (Keras 3): a zip of ``config.json`` and ``model.weights.h5``, weights under
  ``layers/<layer>/vars/<i>`` in the layer's own order (kernel, bias; gamma, beta, mean, variance).

Layers read: ``Conv2D`` (kernel HWIO -> OIHW, ``groups``), ``DepthwiseConv2D`` (kernel (kh, kw, C, m) ->
(C*m, 1, kh, kw), groups C), ``BatchNormalization``, ``Dense`` (kernel (in, out) -> (out, in); after a
``Flatten`` of an H x W x C map its columns are put in C, H, W order, as torch flattens), with padding
"valid" or "same" (TensorFlow's: the odd extra row at the end, ``tf-same``) and strides, and
``ZeroPadding2D`` folded into the conv after it. Sizes are computed from the config at the declared input
size (``batch_input_shape`` by default); Sequential and functional models both. Any layer class outside
:data:`PASS_THROUGH` and the ones above (``Lambda`` first: it holds code) is refused, naming the layer.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Optional

import h5py
import numpy as np
import torch

from ..errors import ModelError
from ..inventory import tf_same_pads
from ..sources import check_expansion, refuse_expansion
from .base import GraphLayer, GraphModel, build_model, layer_name, register_format

#: layer classes that only transform activations elementwise (the shape stays)
POINTWISE = {"Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "ThresholdedReLU", "Dropout",
             "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "Rescaling", "Normalization",
             "ActivityRegularization", "Identity", "Masking", "Layer"}
#: what else passes through: pooling, merging, flattening (their output shapes are computed here)
PASS_THROUGH = POINTWISE | {"InputLayer", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
                            "GlobalMaxPooling2D", "Flatten", "Add", "Multiply", "Average", "Maximum", "Minimum",
                            "Subtract", "Concatenate", "ZeroPadding2D"}
WEIGHTED = {"Conv2D", "DepthwiseConv2D", "BatchNormalization", "Dense"}
_REFUSED = {"Lambda": "it holds Python code, which convscope never runs",
            "TFOpLambda": "it holds a TensorFlow op call, which convscope never runs",
            "SlicingOpLambda": "it holds a TensorFlow op call, which convscope never runs",
            "Functional": "a model nested in the model (e.g. a pretrained base): save the inner model alone",
            "Model": "a model nested in the model (e.g. a pretrained base): save the inner model alone",
            "Sequential": "a model nested in the model: save the inner model alone"}


def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return int(v[0]), int(v[1])
    if isinstance(v, int):
        return v, v
    raise ModelError(f"Keras layer {name!r}: expected one or two integers, got {v!r}")


def _open(path: Path, max_expansion: float) -> tuple[dict, Any, Any]:
    """(model config, weights h5py object, the file handle to close) of a .h5 or .keras file."""
    if path.stat().st_size == 0:
        raise ModelError(f"Keras file {path} is empty (0 bytes): replace it with the complete file")
    if path.suffix.lower() == ".keras" or zipfile.is_zipfile(path):
        check_expansion(path, "torch-zip", max_expansion)  # a zip: its members' declared sizes
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                if "config.json" not in names or "model.weights.h5" not in names:
                    raise ModelError(f"{path} is not a Keras 3 archive (it has {sorted(names)[:6]}; a .keras file "
                                     f"holds config.json and model.weights.h5)")
                config = json.loads(z.read("config.json"))
                blob = z.read("model.weights.h5")
        except (zipfile.BadZipFile, ValueError, OSError) as e:
            raise ModelError(f"{path} is not a readable Keras archive ({e}); save it again with model.save") from None
        f = h5py.File(io.BytesIO(blob), "r")
        refuse_expansion(path, _h5_bytes(f), "its weights declare", max_expansion,
                         "Keras stores weights uncompressed: save the model again")
        return config, f, f
    check_expansion(path, "h5", max_expansion)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ModelError(f"{path} is not a readable HDF5 file ({e}); save the model again with model.save") from None
    raw = f.attrs.get("model_config")
    if raw is None:
        f.close()
        raise ModelError(f"{path} holds weights without a model config (model.save_weights): it does not carry its "
                         f"graph. Save the whole model (model.save('model.h5')) or add it with --arch ARCH")
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError as e:
        f.close()
        raise ModelError(f"{path}: its model_config is not JSON ({e})") from None
    return config, f["model_weights"] if "model_weights" in f else f, f


def _h5_bytes(f) -> int:
    total = 0

    def add(_, obj):
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += int(obj.size or 0) * obj.dtype.itemsize

    f.visititems(add)
    return total


def _weights(weights, name: str, cls: str, keras3: bool) -> dict[str, torch.Tensor]:
    """The stored variables of layer ``name`` by role (kernel, bias, gamma, ...)."""
    roles = {"Conv2D": ["kernel", "bias"], "Dense": ["kernel", "bias"], "DepthwiseConv2D": ["depthwise_kernel", "bias"],
             "BatchNormalization": ["gamma", "beta", "moving_mean", "moving_variance"]}[cls]
    out: dict[str, torch.Tensor] = {}
    if keras3:
        group = weights.get(f"layers/{name}/vars")
        if group is None:
            raise ModelError(f"Keras layer {name!r} has no weights at layers/{name}/vars in model.weights.h5")
        values = [group[k][()] for k in sorted(group, key=int)]
        return {"_ordered": values}  # type: ignore[dict-item]
    group = weights.get(name)
    if group is None:
        raise ModelError(f"Keras layer {name!r} has no weights group model_weights/{name}")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
    for wn in names:
        role = wn.rsplit("/", 1)[-1].split(":")[0]
        if role in roles:
            out[role] = torch.from_numpy(np.array(group[wn][()], dtype=np.float32))
    return out


def _ordered(cls: str, cfg: dict, got: dict) -> dict[str, torch.Tensor]:
    """Keras 3 stores a layer's variables by index: name them by the layer's own order."""
    if "_ordered" not in got:
        return got
    values = [torch.from_numpy(np.array(v, dtype=np.float32)) for v in got["_ordered"]]
    if cls == "BatchNormalization":
        roles = (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else []) \
            + ["moving_mean", "moving_variance"]
    else:
        roles = ["depthwise_kernel" if cls == "DepthwiseConv2D" else "kernel"] + (["bias"] if cfg.get("use_bias", True) else [])
    return dict(zip(roles, values))


def _inbound(layer: dict) -> list[str]:
    """The names of the layers feeding ``layer`` in a functional config (Keras 2 lists, Keras 3 dicts)."""
    found: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            hist = (x.get("config") or {}).get("keras_history") if x.get("class_name") == "__keras_tensor__" else None
            if hist:
                found.append(str(hist[0]))
                return
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            if len(x) >= 3 and isinstance(x[0], str) and isinstance(x[1], int):  # Keras 2: [name, node, tensor, {}]
                found.append(x[0])
                return
            for v in x:
                walk(v)

    walk(layer.get("inbound_nodes") or [])
    return found


def _layers_of(config: dict, path: Path) -> list[tuple[dict, list[str]]]:
    """[(layer config, names of its inputs)] in execution order."""
    cls = config.get("class_name")
    inner = config.get("config") or {}
    layers = inner.get("layers")
    if not isinstance(layers, list):
        raise ModelError(f"{path}: the model config has no list of layers (class {cls!r})")
    out = []
    prev: Optional[str] = None
    for layer in layers:
        if not isinstance(layer, dict) or "class_name" not in layer:
            raise ModelError(f"{path}: a layer of the model config is not a {{class_name, config}} object")
        name = (layer.get("config") or {}).get("name") or layer.get("name")
        if cls == "Sequential":
            out.append((layer, [prev] if prev else []))
        else:
            out.append((layer, _inbound(layer)))
        prev = name
    return out


def _input_shape(config: dict, layers: list[tuple[dict, list[str]]]) -> Optional[tuple[int, int, int]]:
    for layer, _ in layers:
        cfg = layer.get("config") or {}
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if shape and len(shape) == 4 and all(isinstance(v, int) for v in shape[1:]):
            if cfg.get("data_format", "channels_last") == "channels_first":
                return tuple(shape[1:])  # type: ignore[return-value]
            return (shape[3], shape[1], shape[2])
    return None


@register_format("keras", "a Keras model (.h5 or .keras): layer graph from its JSON config, weights through h5py")
def read_keras(path: Path, input_size: Optional[tuple[int, int, int]], max_expansion: float) -> GraphModel:
    """The layers of the Keras file ``path`` at ``input_size`` (C, H, W) (None: the config's input shape)."""
    config, weights, handle = _open(path, max_expansion)
    try:
        return _read(path, config, weights, path.suffix.lower() == ".keras" or zipfile.is_zipfile(path), input_size)
    except ModelError as e:
        if str(path) in str(e):
            raise
        raise ModelError(f"{path}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError) as e:
        # a config or weight layout that does not say what Keras writes: the file's fault, named as such
        raise ModelError(f"{path}: not a Keras model convscope can read ({type(e).__name__}: {str(e)[:200]}); "
                         f"save it again with model.save, or export it to ONNX") from None
    finally:
        handle.close()


def _read(path: Path, config: dict, weights, keras3: bool, input_size) -> GraphModel:
    layers = _layers_of(config, path)
    for layer, _ in layers:
        cls = layer["class_name"]
        name = (layer.get("config") or {}).get("name", "?")
        if cls in _REFUSED:
            raise ModelError(f"{path}: Keras layer {name!r} is a {cls} layer: {_REFUSED[cls]}. Replace it with a "
                             f"built-in layer and save again, or export the model to ONNX")
        if cls not in PASS_THROUGH and cls not in WEIGHTED:
            raise ModelError(f"{path}: unsupported Keras layer class {cls!r} (layer {name!r}); convscope reads "
                             f"{', '.join(sorted(WEIGHTED))} and passes through {', '.join(sorted(PASS_THROUGH))}")
    size = tuple(int(v) for v in input_size) if input_size else _input_shape(config, layers)
    if size is None:
        raise ModelError(f"{path}: the model config does not say its input size; give it with --input-size C,H,W")
    shape: dict[str, Optional[tuple]] = {}  # layer name -> ("map", C, H, W) | ("vec", n, flat_from_map | None)
    sources: dict[str, list[str]] = {}  # layer name -> the weight layers (conv/dense) its output comes from
    pad_of: dict[str, tuple[int, int, int, int]] = {}  # ZeroPadding2D name -> (t, l, b, r)
    kinds: dict[str, str] = {}
    taken: set[str] = set()
    out: list[GraphLayer] = []
    for layer, inputs in layers:
        cls, cfg = layer["class_name"], layer.get("config") or {}
        name = str(cfg.get("name") or layer.get("name"))
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ModelError(f"{path}: Keras layer {name!r} is channels_first; convscope reads channels_last models")
        ins = [shape.get(i) for i in inputs]
        x = ins[0] if ins else ("map", *size)
        src = sorted({s for i in inputs for s in sources.get(i, [])})
        if cls == "InputLayer":
            shape[name], sources[name] = ("map", *size), []
            continue
        if x is None:
            raise ModelError(f"{path}: Keras layer {name!r} reads {inputs}, whose size is unknown")
        upstream = inputs[0] if inputs else None
        if cls in ("Conv2D", "DepthwiseConv2D"):
            if x[0] != "map":
                raise ModelError(f"{path}: Keras conv {name!r} reads a vector, not a map")
            _, C, H, W = x
            w = _ordered(cls, cfg, _weights(weights, name, cls, keras3))
            k = _pair(cfg.get("kernel_size"), name)
            s = _pair(cfg.get("strides", 1), name)
            d = _pair(cfg.get("dilation_rate", 1), name)
            pad = pad_of.get(upstream or "")
            if pad is not None:  # the ZeroPadding2D before it: read the map it padded
                C, H, W = shape[f"{upstream}::in"][1:]
            padding = str(cfg.get("padding", "valid")).lower()
            if padding == "same":
                (t, b), (l, r) = tf_same_pads(H, k[0], s[0], d[0]), tf_same_pads(W, k[1], s[1], d[1])
                if pad is not None:
                    raise ModelError(f"{path}: Keras conv {name!r} pads twice (ZeroPadding2D, then 'same')")
                pads, tf_same = (t, l, b, r), True
            elif padding == "valid":
                pads, tf_same = pad or (0, 0, 0, 0), False
            else:
                raise ModelError(f"{path}: Keras conv {name!r} has padding {padding!r}; known: valid, same")
            if cls == "Conv2D":
                kernel = w.get("kernel")
                if kernel is None or kernel.dim() != 4:
                    raise ModelError(f"{path}: Keras conv {name!r} has no 4-d kernel")
                groups = int(cfg.get("groups", 1) or 1)
                weight = kernel.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
            else:
                kernel = w.get("depthwise_kernel")
                if kernel is None or kernel.dim() != 4:
                    raise ModelError(f"{path}: Keras depthwise conv {name!r} has no 4-d kernel")
                kh, kw, Cin, mult = kernel.shape
                groups = int(Cin)
                weight = kernel.permute(2, 3, 0, 1).reshape(Cin * mult, 1, kh, kw).contiguous()
            if weight.shape[1] * groups != C:
                raise ModelError(f"{path}: Keras conv {name!r} reads {weight.shape[1] * groups} channels, its input "
                                 f"has {C}")
            Ho = (H + pads[0] + pads[2] - (d[0] * (k[0] - 1) + 1)) // s[0] + 1
            Wo = (W + pads[1] + pads[3] - (d[1] * (k[1] - 1) + 1)) // s[1] + 1
            lname = layer_name(name, taken)
            out.append(GraphLayer(lname, "conv", weight, w.get("bias"), stride=s, dilation=d, groups=groups, pads=pads,
                                  tf_same=tf_same, input_size=[H, W], output_size=[Ho, Wo], sources=src, op=cls))
            shape[name], sources[name], kinds[name] = ("map", int(weight.shape[0]), Ho, Wo), [lname], "conv"
        elif cls == "BatchNormalization":
            w = _ordered(cls, cfg, _weights(weights, name, cls, keras3))
            axis = cfg.get("axis", -1)
            axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
            if x[0] == "map" and axis not in (-1, 3):
                raise ModelError(f"{path}: Keras BatchNormalization {name!r} normalises axis {axis}, not the channels")
            C = x[1]
            gamma = w.get("gamma", torch.ones(C))
            out.append(GraphLayer(layer_name(name, taken), "batchnorm", gamma, w.get("beta", torch.zeros(C)),
                                  running_mean=w.get("moving_mean"), running_var=w.get("moving_variance"),
                                  eps=float(cfg.get("epsilon", 1e-3)), sources=src,
                                  input_size=list(x[2:]) if x[0] == "map" else None,
                                  output_size=list(x[2:]) if x[0] == "map" else None, op=cls))
            shape[name], sources[name] = x, src
        elif cls == "Dense":
            w = _ordered(cls, cfg, _weights(weights, name, cls, keras3))
            kernel = w.get("kernel")
            if kernel is None or kernel.dim() != 2:
                raise ModelError(f"{path}: Keras Dense {name!r} has no 2-d kernel")
            if x[0] == "map":
                raise ModelError(f"{path}: Keras Dense {name!r} reads a {x[1:]} map directly; convscope reads "
                                 f"Dense layers after Flatten or global pooling")
            weight, flat = kernel.t().contiguous(), None
            if x[2] is not None and weight.shape[1] == math.prod(x[2]) and x[2][1] * x[2][2] > 1:
                Cm, Hm, Wm = x[2]
                flat = [Cm, Hm, Wm]  # Keras flattened H, W, C: columns put in torch's C, H, W order
                weight = weight.reshape(-1, Hm, Wm, Cm).permute(0, 3, 1, 2).reshape(weight.shape[0], -1).contiguous()
            lname = layer_name(name, taken)
            out.append(GraphLayer(lname, "linear", weight, w.get("bias"), flatten_from=flat, sources=src, op=cls))
            shape[name], sources[name] = ("vec", int(weight.shape[0]), None), [lname]
        else:
            shape[name], sources[name] = _pass(cls, cfg, name, x, ins, path), src
            if cls == "ZeroPadding2D":
                t, l, b, r = _zero_padding(cfg.get("padding", 1), name)
                pad_of[name] = (t, l, b, r)
                shape[f"{name}::in"] = x
                _, C, H, W = x
                shape[name] = ("map", C, H + t + b, W + l + r)
    if not any(layer.type in ("conv", "linear") for layer in out):
        raise ModelError(f"{path}: the Keras model has no Conv2D, DepthwiseConv2D or Dense layer to analyse")
    return build_model(out, size, graph=True)  # type: ignore[arg-type]


def _zero_padding(p, name: str) -> tuple[int, int, int, int]:
    """ZeroPadding2D's ``padding`` (an int, (rows, cols) or ((top, bottom), (left, right))) as (t, l, b, r)."""
    if isinstance(p, int):
        return p, p, p, p
    if isinstance(p, (list, tuple)) and len(p) == 2:
        if all(isinstance(v, int) for v in p):
            return p[0], p[1], p[0], p[1]
        (t, b), (l, r) = _pair(p[0], name), _pair(p[1], name)
        return t, l, b, r
    raise ModelError(f"Keras ZeroPadding2D {name!r}: padding {p!r} is not an int, (rows, cols) or ((t, b), (l, r))")


def _pass(cls: str, cfg: dict, name: str, x: tuple, ins: list, path: Path) -> tuple:
    """The output shape of a layer without weights."""
    if cls in POINTWISE or cls in ("Add", "Multiply", "Average", "Maximum", "Minimum", "Subtract", "ZeroPadding2D"):
        return x
    if cls == "Concatenate":
        if any(i is None or i[0] != "map" for i in ins):
            raise ModelError(f"{path}: Keras Concatenate {name!r} joins inputs convscope cannot size")
        return ("map", sum(i[1] for i in ins), x[2], x[3])
    if cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return ("vec", x[1], None)
    if cls == "Flatten":
        return ("vec", math.prod(x[1:]), tuple(x[1:])) if x[0] == "map" else x
    if cls in ("MaxPooling2D", "AveragePooling2D"):
        k = _pair(cfg.get("pool_size", 2), name)
        s = _pair(cfg.get("strides") or k, name)
        _, C, H, W = x
        if str(cfg.get("padding", "valid")).lower() == "same":
            return ("map", C, -(-H // s[0]), -(-W // s[1]))
        return ("map", C, (H - k[0]) // s[0] + 1, (W - k[1]) // s[1] + 1)
    raise ModelError(f"{path}: unsupported Keras layer class {cls!r} (layer {name!r})")  # pragma: no cover

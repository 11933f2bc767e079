"""Layer inventory: every conv, linear and BatchNorm layer of a model, from one forward pass.

Each row follows docs/FORMATS.md ("Inventory row"). Sizes come from forward hooks at the model's
native input size, so they are what the layer really sees, not what its constructor suggests.

How ``feeds_from`` is found: the hooks record layers in execution order; a conv, or a linear layer,
is fed by the most recent conv before it whose ``out_channels`` equals its ``in_channels`` (for a
linear after a flatten, ``in_features == C*H*W``). This is exact for chains (VGG, MobileNet) and for
the first conv of a residual block picks the previous block's last conv, whose output is the main
term of the sum that feeds it; shortcut convs are matched the same way.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .filepages import release_module

CONV_TYPES = (nn.Conv2d,)
BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)


def _pair(v) -> list[int]:
    return [int(v[0]), int(v[1])] if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _is_tf_same(m: nn.Module) -> bool:
    """timm's Conv2dSame (and friends) pad asymmetrically at run time, TensorFlow style."""
    return "Same" in type(m).__name__


def consumed_padding(size: int, k: int, s: int, d: int, p: int, tf_same: bool = False,
                     p_end: Optional[int] = None) -> tuple[int, int]:
    """Padding rows actually used at the start and at the end of one axis.

    With symmetric padding ``p``, a strided conv may stop before reaching the end padding: e.g.
    size 224, k 3, s 2, p 1 uses the top/left padding only ("Mind the pad", Alsallakh et al. 2021).
    TF "same" padding puts the odd extra row at the end instead. ``p_end`` (default ``p``) is the
    declared end padding of an asymmetric pad (ONNX ``pads``, a Pad op before the conv).
    """
    eff_k = d * (k - 1) + 1
    if tf_same:
        out = -(-size // s)
        total = max((out - 1) * s + eff_k - size, 0)
        return total // 2, total - total // 2
    p_end = p if p_end is None else p_end
    out = (size + p + p_end - eff_k) // s + 1
    span = (out - 1) * s + eff_k  # rows touched, starting at -p
    end_used = max(0, min(p_end, span - p - size))
    start_used = min(p, span)
    return start_used, end_used


def tf_same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow "same" padding of one axis (start, end): the odd extra row at the end."""
    return consumed_padding(size, k, s, d, 0, tf_same=True)


def inventory(module: nn.Module, input_size: Sequence[int], device: str | torch.device = "cpu") -> list[dict]:
    """Rows for every conv / linear / BatchNorm layer, in execution order.

    ``input_size`` is the native (C, H, W); one forward pass with a zero batch of one image.
    """
    names = {m: n for n, m in module.named_modules()}
    records: list[tuple[nn.Module, tuple, tuple]] = []
    last4d: list[Optional[tuple]] = [None]  # the last 4-D activation seen (for flatten detection)
    flat_before: dict[nn.Module, Optional[tuple]] = {}

    def hook(m, inputs, output):
        x = inputs[0] if inputs else None
        in_shape = tuple(x.shape) if isinstance(x, torch.Tensor) else None
        out_shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        if isinstance(m, (nn.Linear,) + CONV_TYPES + BN_TYPES):
            if isinstance(m, nn.Linear):
                flat_before[m] = last4d[0]
            records.append((m, in_shape, out_shape))
        if out_shape is not None and len(out_shape) == 4:
            last4d[0] = out_shape
        # the layer has run: its weights' pages, when they are read from the file's memory map, are given back
        # (the pass would otherwise leave the whole file resident; precompute/filepages.py)
        release_module(m, recurse=False)

    handles = [m.register_forward_hook(hook) for m in module.modules() if len(list(m.children())) == 0
               or isinstance(m, (nn.Linear,) + CONV_TYPES + BN_TYPES)]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_size, device=device))
    finally:
        for h in handles:
            h.remove()
        module.train(was_training)

    rows: list[dict] = []
    seen: set[nn.Module] = set()
    convs_so_far: list[dict] = []
    for m, in_shape, out_shape in records:
        if m in seen:  # a module called twice (weight sharing) is listed once
            continue
        seen.add(m)
        row = {"name": names[m], "index": len(rows), "class": type(m).__name__,
               "weight_shape": list(m.weight.shape) if getattr(m, "weight", None) is not None else None,
               "params": int(sum(p.numel() for p in m.parameters(recurse=False))),
               "input_size": None, "output_size": None, "feeds_from": None, "follows": None,
               "uneven_padding": False, "uneven_detail": None, "flatten_from": None}
        if isinstance(m, CONV_TYPES):
            k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
            tf_same = _is_tf_same(m)
            H, W = in_shape[2], in_shape[3]
            if isinstance(m.padding, str):  # padding="same"/"valid" in torch itself
                tf_same = tf_same or m.padding == "same"
                p = [0, 0]
            else:
                p = _pair(m.padding)
            top, bottom = consumed_padding(H, k[0], s[0], d[0], p[0], tf_same)
            left, right = consumed_padding(W, k[1], s[1], d[1], p[1], tf_same)
            row.update(type="conv", in_channels=m.in_channels, out_channels=m.out_channels, kernel=k, stride=s,
                       padding=[top, left] if tf_same else p,
                       pads=[top, left, bottom, right] if tf_same else [p[0], p[1], p[0], p[1]],
                       dilation=d, groups=m.groups,
                       padding_mode="tf-same" if tf_same else m.padding_mode,
                       depthwise=m.groups > 1 and m.groups == m.in_channels and m.out_channels % m.groups == 0,
                       input_size=[H, W], output_size=[out_shape[2], out_shape[3]],
                       uneven_padding=(top != bottom) or (left != right),
                       uneven_detail={"top": top, "bottom": bottom, "left": left, "right": right})
            row["feeds_from"] = _feeder(convs_so_far, m.in_channels)
            convs_so_far.append(row)
        elif isinstance(m, nn.Linear):
            row.update(type="linear", in_channels=m.in_features, out_channels=m.out_features)
            before = flat_before.get(m)
            if before is not None and before[1] * before[2] * before[3] == m.in_features and before[2] * before[3] > 1:
                row["flatten_from"] = [before[1], before[2], before[3]]
            row["feeds_from"] = _feeder(convs_so_far, m.in_features if row["flatten_from"] is None
                                        else row["flatten_from"][0])
            convs_so_far.append(row)
        else:  # BatchNorm
            row.update(type="batchnorm", in_channels=m.num_features, out_channels=m.num_features,
                       input_size=[in_shape[2], in_shape[3]] if in_shape and len(in_shape) == 4 else None,
                       output_size=[out_shape[2], out_shape[3]] if out_shape and len(out_shape) == 4 else None)
            prev = rows[-1] if rows else None
            if prev is not None and prev["type"] == "conv" and prev["out_channels"] == m.num_features:
                row["follows"] = prev["name"]
        rows.append(row)
    return rows


def _feeder(previous: list[dict], in_channels: int) -> Optional[str]:
    for r in reversed(previous):
        if r["type"] == "conv" and r["out_channels"] == in_channels:
            return r["name"]
    return None


def summary_counts(rows: list[dict]) -> dict:
    return {t: sum(r["type"] == t for r in rows) for t in ("conv", "linear", "batchnorm")}

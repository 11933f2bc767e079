"""Human layer names where the architecture has them (VGG16 ``features.28`` is conv5_3), from the model's
inventory rows alone (torch-free). The module path stays the identifier everywhere (URLs, API); the human
name is shown beside it. Architectures whose module paths are already the names people use (the ResNets,
``layer3.0.conv1``) or that have no conventional names get none.
"""

from __future__ import annotations

import re
from typing import Optional

#: VGG16 (configuration "D"): convolutions per block, conv1_1 ... conv5_3
VGG16_BLOCKS = (2, 2, 3, 3, 3)


def _by_order(rows: list[dict], kind: str) -> list[dict]:
    return [r for r in sorted(rows, key=lambda r: r.get("index", 0)) if r.get("type") == kind]


def _vgg(rows: list[dict]) -> dict[str, str]:
    out = {}
    names = [f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG16_BLOCKS) for i in range(n)]
    for r, n in zip(_by_order(rows, "conv"), names):
        out[r["name"]] = n
    for i, r in enumerate(_by_order(rows, "linear")):
        out[r["name"]] = f"fc{6 + i}"
    return out


def _numbered(rows: list[dict], conv: str = "conv", fc: str = "fc", fc_from: int = 1) -> dict[str, str]:
    out = {r["name"]: f"{conv}{i + 1}" for i, r in enumerate(_by_order(rows, "conv"))}
    out.update({r["name"]: f"{fc}{fc_from + i}" for i, r in enumerate(_by_order(rows, "linear"))})
    return out


_MBV2 = re.compile(r"^(?:features\.)?(\d+)\.")


def _mobilenet_v2(rows: list[dict]) -> dict[str, str]:
    """Stem, the 17 inverted-residual blocks (expand 1x1, depthwise 3x3, project 1x1), head, classifier."""
    out = {}
    convs = _by_order(rows, "conv")
    last = max((int(m.group(1)) for r in convs if (m := _MBV2.match(r["name"]))), default=None)
    for r in convs:
        m = _MBV2.match(r["name"])
        if not m:
            continue
        b = int(m.group(1))
        if b == 0:
            out[r["name"]] = "stem conv"
        elif b == last and not r.get("depthwise") and (r.get("kernel") == [1, 1]) and ".conv." not in r["name"]:
            out[r["name"]] = "head conv 1×1"
        elif r.get("depthwise"):
            out[r["name"]] = f"block {b} depthwise"
        elif (r.get("out_channels") or 0) > (r.get("in_channels") or 0):
            out[r["name"]] = f"block {b} expand 1×1"
        else:
            out[r["name"]] = f"block {b} project 1×1"
    for r in _by_order(rows, "linear"):
        out[r["name"]] = "classifier"
    return out


_EFF = re.compile(r"^blocks\.(\d+)\.(\d+)\.(conv_dw|conv_pw|conv_pwl)$")
_EFF_PART = {"conv_dw": "depthwise", "conv_pw": "expand 1×1", "conv_pwl": "project 1×1"}


def _efficientnet(rows: list[dict]) -> dict[str, str]:
    out = {}
    for r in _by_order(rows, "conv"):
        m = _EFF.match(r["name"])
        if r["name"] == "conv_stem":
            out[r["name"]] = "stem conv"
        elif r["name"] == "conv_head":
            out[r["name"]] = "head conv 1×1"
        elif m:
            part = _EFF_PART[m.group(3)]
            if m.group(3) == "conv_pw" and (r.get("out_channels") or 0) <= (r.get("in_channels") or 0):
                part = "project 1×1"  # stage 1's depthwise-separable blocks: depthwise, then project
            out[r["name"]] = f"stage {int(m.group(1)) + 1} block {int(m.group(2)) + 1} {part}"
    for r in _by_order(rows, "linear"):
        out[r["name"]] = "classifier"
    return out


def human_names(arch: Optional[str], inventory: list[dict]) -> dict[str, str]:
    """``{module path: human name}`` for the layers that have one; BatchNorm layers are named after the
    conv they normalise (``conv5_3 BN``). Empty for architectures without conventional names."""
    arch = arch or ""
    if arch.startswith("vgg16"):
        out = _vgg(inventory)
    elif arch == "alexnet":
        out = _numbered(inventory, fc_from=6)
    elif arch == "cifar10-cnn":
        out = _numbered(inventory, fc="dense")
    elif arch.startswith("mobilenet-v2"):
        out = _mobilenet_v2(inventory)
    elif arch.startswith("efficientnet"):
        out = _efficientnet(inventory)
    else:
        out = {}
    for r in inventory:
        if r.get("type") == "batchnorm" and r.get("follows") in out:
            out[r["name"]] = out[r["follows"]] + " BN"
    return {k: v for k, v in out.items() if v != k}

"""torchvision's models by name (``torchvision:resnet50``); importing this module registers the library."""

from __future__ import annotations

import functools
from typing import Optional

import torchvision
from torch import nn
from torchvision import models as tvm

from . import register_library

#: the torchvision model modules convscope builds (video models have 3-d convs, quantized ones int8
#: weights, optical flow no classifier-style conv stack: none of them is a 2-d CNN as the analyses see it)
TORCHVISION_TASKS = {"classification": tvm, "segmentation": tvm.segmentation, "detection": tvm.detection}


@register_library("torchvision", torchvision.__version__)
def _torchvision():
    @functools.cache  # every lookup of a name asks; the lists do not change while the process runs
    def names() -> dict[str, str]:
        out: dict[str, str] = {}
        for task, module in TORCHVISION_TASKS.items():
            for n in tvm.list_models(module=module):
                out.setdefault(n, task)
        return out

    def build(name: str, **kw) -> nn.Module:
        if names().get(name) in ("segmentation", "detection"):
            # their default backbone weights would be downloaded: untrained means untrained everywhere
            kw.setdefault("weights_backbone", None)
        return tvm.get_model(name, weights=None, **kw)

    def input_size(name: str) -> Optional[tuple[int, int, int]]:
        try:
            transforms = tvm.get_model_weights(name).DEFAULT.transforms()
        except (ValueError, AttributeError):
            return None
        size = getattr(transforms, "crop_size", None) or getattr(transforms, "resize_size", None)
        return (3, int(size[0]), int(size[-1])) if size else None  # detection: any size (None)

    return names, build, input_size

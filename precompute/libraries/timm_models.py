"""timm's models by name (``timm:convnext_tiny``); importing this module registers the library."""

from __future__ import annotations

import functools
from typing import Optional

import timm
from torch import nn

from . import register_library


@register_library("timm", timm.__version__)
def _timm():
    @functools.cache  # as torchvision's
    def names() -> dict[str, str]:
        return {n: "classification" for n in timm.list_models()}

    def build(name: str, **kw) -> nn.Module:
        return timm.create_model(name, pretrained=False, **kw)

    def input_size(name: str) -> Optional[tuple[int, int, int]]:
        cfg = timm.get_pretrained_cfg(name)
        size = getattr(cfg, "input_size", None) if cfg is not None else None
        return tuple(int(x) for x in size) if size else None

    return names, build, input_size

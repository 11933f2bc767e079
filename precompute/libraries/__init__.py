"""The registry of model libraries (torchvision, timm): a library is registered by importing its module.

``precompute/librarymodels.py`` (names, builders, signatures, the catalogue) imports a library's module,
``torchvision_models`` or ``timm_models`` here, the first time a name of that library is asked for: a
precompute of convscope's own architectures then never imports timm (and an architecture that does not use
torchvision never imports torchvision with the ``torch._dynamo`` its ``ops`` pull in: about 170 MB of
resident memory together, issue 18). Each module calls :func:`register_library` once, when imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ..declarations import library as declared
from ..registry import Registry


@dataclass(frozen=True)
class Library:
    """One model library: its names (name -> task), an untrained builder and the native input size."""
    prefix: str
    names: Callable[[], dict[str, str]]
    build: Callable[..., nn.Module]
    input_size: Callable[[str], Optional[tuple[int, int, int]]]
    version: str


#: prefix -> Library, filled by :func:`register_library` as the libraries' modules are imported; the
#: prefixes are the floor's ``PREFIXES``
LIBRARIES: Registry[Library] = Registry("model library")


def register_library(prefix: str, version: str):
    """Decorator over a class-like namespace function returning (names, build, input_size)."""
    if prefix not in declared.PREFIXES:
        raise ValueError(f"library {prefix!r} has builders but no declaration; add it to "
                         f"precompute/declarations/library.py PREFIXES")

    def deco(fn: Callable[[], tuple]) -> Callable[[], tuple]:
        names, build, input_size = fn()
        LIBRARIES.add(prefix, Library(prefix, names, build, input_size, version))
        return fn

    return deco

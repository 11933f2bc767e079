"""The architecture names, each with its native input size: the list the web server shows on the upload
form and checks uploads against, and the names the builders of ``precompute/architectures.py`` register
(a builder for an undeclared name, or a declared name without a builder, fails at import there).

Torch-free (the ground floor, see ``precompute/declarations/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..registry import Registry
from . import library


@dataclass(frozen=True)
class Architecture:
    name: str
    #: native (C, H, W); None for the experiment architectures, whose input size is in each trained spec
    input_size: Optional[tuple[int, int, int]]

    @property
    def uploadable(self) -> bool:
        """A user checkpoint can be uploaded for it: it has a native input size to take the inventory at."""
        return self.input_size is not None


ARCHITECTURES: Registry[Architecture] = Registry("architecture")


def declare(name: str, input_size: Optional[tuple[int, int, int]] = None) -> Architecture:
    return ARCHITECTURES.add(name, Architecture(name, tuple(input_size) if input_size else None))


def input_size(name: str) -> Optional[tuple[int, int, int]]:
    """The native (C, H, W) of ``name``, a declared name or a library's "torchvision:NAME"/"timm:NAME"
    (None when it has none); UnknownName lists the close names."""
    if library.is_library_name(name):
        return library.get(name).input_size
    return ARCHITECTURES.get(name).input_size


def known(name: str) -> bool:
    """``name`` is a declared architecture or in the libraries' catalogue."""
    if library.is_library_name(name):
        return name in library.catalogue()
    return name in ARCHITECTURES


def upload_architectures() -> dict[str, tuple[int, int, int]]:
    """name -> native input size of every architecture a checkpoint can be uploaded for, sorted by name."""
    return {n: a.input_size for n, a in sorted(ARCHITECTURES.items()) if a.uploadable}


# torchvision and timm (ImageNet)
declare("mobilenet-v2", (3, 224, 224))
declare("mobilenet-v2-features", (3, 224, 224))
declare("efficientnet-lite0", (3, 224, 224))
declare("efficientnet-lite1", (3, 240, 240))
declare("efficientnet-lite2", (3, 260, 260))
declare("vgg16", (3, 224, 224))
declare("vgg16-bn", (3, 224, 224))
declare("vgg16-full", (3, 224, 224))
declare("resnet18", (3, 224, 224))
declare("resnet50", (3, 224, 224))
declare("alexnet", (3, 224, 224))
declare("googlenet", (3, 224, 224))
declare("inception-v3", (3, 299, 299))
# CIFAR-10
declare("cifar10-cnn", (3, 32, 32))
for _depth in (20, 32, 44, 56):
    declare(f"resnet{_depth}", (3, 32, 32))
# the experiments' architectures (precompute/experiments/nets.py): configured by arch_kwargs, any input size
declare("banding-net")
declare("cifar-resnet")

"""What a model is: :class:`ModelSpec`, name -> architecture + weight source + metadata.

Torch-free (the ground floor, see ``precompute/declarations/__init__.py``): the weight source is an object
of ``precompute/sources.py`` and ``convert`` a function of the zoo, both only held here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..redact import redact_all

if TYPE_CHECKING:  # pragma: no cover
    from ..sources import WeightSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSpec:
    name: str
    arch: str  # a name of precompute/declarations/architectures.py
    source: "WeightSource"
    dataset: str  # e.g. "imagenet", "cifar10"
    input_size: tuple[int, int, int]  # native (C, H, W)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    license: str = ""
    origin: str = ""  # where the weights came from, in words
    description: str = ""
    accuracy: Optional[float] = None  # top-1 on `dataset` where known, in %
    family: str = "real"  # real | random | user | variant
    #: raw checkpoint object, nn.Module -> state dict for the architecture (default: unwrap + strip "module.")
    convert: Optional[Callable[[Any, Any], dict]] = None
    arch_kwargs: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # free metadata (experiment records, ...)

    def public(self) -> dict:
        """JSON-able metadata (what the cache record and the API show): no server paths (a checkpoint's
        path shows as its file name; the full path stays in the spec and ``user-models.json``)."""
        return redact_all({
            "name": self.name, "arch": self.arch, "dataset": self.dataset,
            "input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std),
            "license": self.license, "origin": self.origin, "description": self.description,
            "accuracy": self.accuracy, "family": self.family, "source": self.source.describe(),
            "extra": self.extra,
        })

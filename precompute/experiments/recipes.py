"""The experiments' input transforms as torch functions; the experiments themselves (recipes, variants,
the ``random`` variant) are data on the ground floor, ``precompute/declarations/experiments.py``, and are
re-exported here for the trainer.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..declarations import experiments as _declared
from ..declarations.experiments import (EXPERIMENTS, RANDOM, TRAINABLE, Experiment, Recipe, Variant,  # noqa: F401
                                        experiment)


def _rot90(x: torch.Tensor) -> torch.Tensor:
    return torch.rot90(x, 1, dims=(2, 3))


def _odd_size(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    size = (h + 1 - h % 2, w + 1 - w % 2)
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


#: the function of each declared input transform, on (B, C, H, W) float images in [0, 1]
TRANSFORM_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"rot90": _rot90, "odd-size": _odd_size}
# a transform declared without a function (or the reverse) would only fail when a variant trains
if set(TRANSFORM_FUNCTIONS) != set(_declared.INPUT_TRANSFORMS):
    raise ImportError(f"input transforms declared {sorted(_declared.INPUT_TRANSFORMS)} but functions for "
                      f"{sorted(TRANSFORM_FUNCTIONS)}; add the function here or the declaration in "
                      f"precompute/declarations/experiments.py")

#: name -> (function, what it does in words)
INPUT_TRANSFORMS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    name: (TRANSFORM_FUNCTIONS[name], words) for name, words in _declared.INPUT_TRANSFORMS.items()}


def transformed_size(transform: Optional[str], input_size: tuple[int, int, int]) -> tuple[int, int, int]:
    if not transform:
        return tuple(input_size)
    fn = INPUT_TRANSFORMS[transform][0]
    return tuple(fn(torch.zeros(1, *input_size)).shape[1:])

"""What a training run measures on its own weights while it trains: the run's history.

At every point of the history (the initialisation, after 1/8, 1/4 and 1/2 of the first epoch, where most
of the change happens, and after every epoch) the trainer records the test accuracy, the mean training
loss so far in the epoch, and the weight metrics registered here with :func:`history_metric`. Each metric
is a function ``(model) -> value`` of the weights alone, cheap enough to run a few dozen times per run
(all of them together take about 0.3 s on the experiments' networks): the same quantities the cache's
analyses compute, so a history ends where the precomputed model pages start.

- ``banding``: ``{conv layer: banding index}`` of every conv with a kernel larger than 1x1, the ``nmf``
  analysis's index (rank-3 NMF of each neuron, colours aligned, row minus column variance share,
  energy-weighted; +1 horizontal bands, -1 vertical);
- ``symmetry``: ``{conv layer: S}``, the ``symmetry`` analysis's D4 score of the mean kernel;
- ``gamma``: ``{threshold: share of all BatchNorm |gamma| below it}`` for the ``batchnorm`` analysis's
  thresholds 0.01, 0.05 and 0.1 (channel-weighted over every BatchNorm layer).

The share of dead ReLU channels needs data, so it is measured in the test pass itself (``dead_relu`` in
measurements.py) and recorded beside these, for the experiments that declare that measurement.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..analyses.batchnorm import THRESHOLDS as GAMMA_THRESHOLDS
from ..analyses.nmf import NMFParams
from ..analyses.nmf_core import nmf_layers
from ..analyses.symmetry import symmetry_score
from ..registry import Registry

Metric = Callable[[nn.Module], Any]

#: name -> fn(model) -> JSON value; run in registration order at every history point
HISTORY_METRICS: Registry[Metric] = Registry("history metric")

#: fractions of the first epoch after which a point is recorded (besides the initialisation and each epoch end)
FIRST_EPOCH_POINTS = (0.125, 0.25, 0.5)


def history_metric(name: str) -> Callable[[Metric], Metric]:
    """Decorator: register a weight metric of the training history under ``name``."""
    return HISTORY_METRICS.register(name)


def spatial_convs(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{module name: weight (N, C/groups, kh, kw)}`` of every Conv2d with a kernel larger than 1x1."""
    return {name: m.weight.detach().float().cpu() for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != (1, 1)}


@history_metric("banding")
def banding(model: nn.Module) -> dict[str, float]:
    p = NMFParams()  # the nmf analysis's defaults: the index the model pages show
    fits = nmf_layers(spatial_convs(model), rank=p.rank, max_iter=p.max_iter, tol=p.tol,
                      align_rounds=p.align_rounds, order_method=p.order_method, stop=p.stop, olo_max=p.olo_max,
                      extrapolate=p.extrapolate)
    return {name: round(float(f.banding_index), 6) for name, f in fits.items()}


@history_metric("symmetry")
def symmetry(model: nn.Module) -> dict[str, float | None]:
    out = {}
    for name, w in spatial_convs(model).items():
        s, _ = symmetry_score(w.mean(dim=(0, 1)))
        out[name] = None if s is None else round(s, 6)
    return out


@history_metric("gamma")
def gamma(model: nn.Module) -> dict[str, float]:
    gammas = [m.weight.detach().abs().double().cpu().reshape(-1) for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not gammas:
        return {}
    g = torch.cat(gammas)
    return {t: round(float((g < float(t)).double().mean()), 6) for t in GAMMA_THRESHOLDS}


def weight_metrics(model: nn.Module) -> dict[str, Any]:
    """Every registered metric on the model's current weights (no gradient, no change to the model)."""
    with torch.no_grad():
        return {name: fn(model) for name, fn in HISTORY_METRICS.items()}


def first_epoch_steps(steps: int) -> dict[int, float]:
    """``{number of steps done: fraction of the epoch}`` for the points inside the first epoch; points
    that would fall on the same step (tiny runs) or on the epoch's end are dropped."""
    out: dict[int, float] = {}
    for f in FIRST_EPOCH_POINTS:
        s = int(round(f * steps))
        if 0 < s < steps and s not in out:
            out[s] = f
    return out

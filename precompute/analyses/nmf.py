"""One-sided NMF of every neuron's weights (Voss et al., "Visualizing Weights"; Petrov et al.,
"Weight Banding"), with colours made consistent across the layer, a similarity order of the
neurons, and a banding index per layer.

Per neuron n of a conv layer with weight W (N, C, kh, kw) (C = in_channels/groups; a depthwise
neuron has C = 1): X_n = [max(W_n, 0), max(-W_n, 0)], a (kh*kw) x 2C non-negative matrix whose rows
are the kernel positions; X_n ~ A_n B_n with A_n (kh*kw x 3) >= 0, B_n (3 x 2C) >= 0. The position
factor A_n reshaped to kh x kw x 3 is the neuron's RGB image, divided by its own max.

All neurons of all requested layers with the same (C, kh, kw) are solved in one batched torch
computation (:func:`precompute.analyses.nmf_core.nmf_layers`; HALS accelerated by inner W passes
and extrapolation, from an NNDSVDa start), on the context's device. The colour rule is :data:`~precompute.colours.COLOUR_RULE`.

Result per layer (docs/FORMATS.md): ``rank``, ``kernel``, ``images`` [N][kh][kw][rank],
``order`` [N] (average-linkage hierarchical clustering of the flattened images, Euclidean,
optimal leaf ordering up to ``olo_max`` = 512 neurons), ``error`` [N] = ||X - AB||_F / ||X||_F, ``energy`` [N] = ||X||_F = ||W_n||_F,
``banding_index`` and ``colour_rule``.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .base import Analysis, LazyResults, ModelContext, register_analysis, to_list
from ..colours import COLOUR_RULE
from .nmf_core import DEFAULT_TOL, nmf_layers


class NMFParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rank: int = Field(3, ge=1, le=8, description="number of factors (3 gives RGB images)")
    max_iter: int = Field(300, ge=1, le=10000, description="largest number of HALS sweeps")
    tol: float = Field(DEFAULT_TOL, gt=0, lt=1, description=(
        "early stopping per neuron: with stop='improvement', when its relative error improves by less "
        "than tol per 10 sweeps; with stop='violation', when its projected gradient falls below tol "
        "times the first sweep's (scikit-learn's rule; sklearn uses 1e-4)"))
    stop: Literal["improvement", "violation"] = Field("improvement", description="early-stopping rule")
    extrapolate: bool = Field(True, description=(
        "accelerated HALS (inner passes on the position factors, extrapolation with restarts); "
        "stop='violation' always runs plain HALS"))
    align_rounds: int = Field(3, ge=1, le=50, description="rounds of colour matching against the layer mean")
    order_method: Literal["average", "complete", "single", "ward"] = Field(
        "average", description="linkage of the hierarchical clustering that orders the neurons")
    olo_max: int = Field(512, ge=0, le=100000, description=(
        "optimal leaf ordering for layers with at most this many neurons (cost ~N^3); larger layers "
        "keep the dendrogram's order"))


def nmf_applies(row: dict) -> bool:
    """Conv layers with a kernel larger than 1x1 (depthwise included)."""
    return row.get("type") == "conv" and list(row.get("kernel") or [1, 1]) != [1, 1]


def _result(f, rank: int) -> dict:
    """One layer's JSON result from its fit (images (N, kh, kw, rank))."""
    return {
        "rank": rank,
        "kernel": [int(f.images.shape[1]), int(f.images.shape[2])],
        "images": to_list(f.images),
        "order": [int(i) for i in f.order],
        "error": to_list(f.error),
        "energy": to_list(f.energy),
        "banding_index": float(f.banding_index),
        "colour_rule": COLOUR_RULE,
    }


@register_analysis
class NMF(Analysis):
    name = "nmf"
    description = ("Rank-3 NMF of each neuron's [W+, W-] (positions x channels); position factors as RGB "
                   "images with colours aligned across the layer; neuron order by similarity; banding index.")
    Params = NMFParams
    #: nmf_layers sets its own thread count (nmf_core.NMF_THREADS)
    threads = 0

    def applies(self, row: dict) -> bool:
        return nmf_applies(row)

    def _run(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> dict[str, dict]:
        weights = {r["name"]: ctx.weight(r["name"]) for r in rows}
        # elements of X per batch of neurons; on the CPU a batch of 2M (8 MB, ~230 neurons of 512 channels
        # 3x3) keeps the working set ~50 MB instead of ~400 MB at 16M, and runs as fast or faster (cache);
        # the results do not depend on it (per-neuron iterations and stopping, tested)
        big = 2 ** 27 if ctx.device.type == "cuda" else 2 ** 21
        fits = nmf_layers(weights, rank=params.rank, max_iter=params.max_iter, tol=params.tol,
                          align_rounds=params.align_rounds, order_method=params.order_method,
                          max_batch_elems=big, stop=params.stop, olo_max=params.olo_max,
                          extrapolate=params.extrapolate)
        # the lists are made when the pipeline writes each layer (images of 36k depthwise neurons: ~400 MB)
        return LazyResults({r["name"]: partial(_result, fits[r["name"]], params.rank) for r in rows})

    def scalars(self, result: dict) -> dict[str, float]:
        err = result.get("error") or []
        out = {"banding_index": float(result["banding_index"])}
        if err:
            out["nmf_error"] = float(torch.tensor(err, dtype=torch.float64).mean())
        return out

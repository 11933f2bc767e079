"""Weight distributions per layer, on bin edges shared by every layer of every model.

The edges are parameters (hence part of the cache key), so two results computed with the same
parameters can always be overlaid bin by bin. Two histograms:

- linear: ``bins`` equal bins over [lo, hi]; weights below lo / above hi are counted in
  ``underflow`` / ``overflow`` (so counts + underflow + overflow = numel). Bin of x:
  floor((x - lo) / width) in float64, so a weight on an inner edge falls in the bin to its right;
  hi itself falls in the last bin.
- log10|w|: ``log_bins`` equal bins over [log_lo, log_hi]; ``log_underflow`` counts |w| < 10^log_lo
  (exact zeros included), ``log_overflow`` |w| > 10^log_hi.

Statistics (float64 accumulation of shifted power sums, in chunks, so a 100M-weight layer needs no
float64 copy): mean, std (population), excess kurtosis (m4 / m2^2 - 3; null when std is 0), ``near_zero`` = share
of weights with |w| < near_zero_threshold * max|w|, ``top10_l1_share`` = share of sum |w| held by the
ceil(10 %) of weights largest in |w|.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .base import Analysis, ModelContext, register_analysis, to_list

_CHUNK = 1 << 22


class HistogramParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lo: float = Field(-1.0, description="left edge of the linear histogram")
    hi: float = Field(1.0, description="right edge of the linear histogram")
    bins: int = Field(401, ge=1, le=100000, description="linear bins over [lo, hi]")
    log_lo: float = Field(-8.0, description="left edge of the log10|w| histogram")
    log_hi: float = Field(1.0, description="right edge of the log10|w| histogram")
    log_bins: int = Field(90, ge=1, le=100000, description="bins over [log_lo, log_hi]")
    near_zero: float = Field(0.01, gt=0, lt=1, description="|w| < near_zero * max|w| counts as near zero")

    @model_validator(mode="after")
    def _ranges(self):
        if not self.lo < self.hi:
            raise ValueError(f"lo must be < hi; got lo={self.lo} >= hi={self.hi}")
        if not self.log_lo < self.log_hi:
            raise ValueError(f"log_lo must be < log_hi; got log_lo={self.log_lo} >= log_hi={self.log_hi}")
        return self


def edges(lo: float, hi: float, bins: int) -> torch.Tensor:
    return torch.linspace(lo, hi, bins + 1, dtype=torch.float64)


def _bin(x: torch.Tensor, lo: float, hi: float, bins: int) -> tuple[torch.Tensor, int, int]:
    """Counts of x (float64, 1-D) in ``bins`` equal bins over [lo, hi]: (counts (bins,), below, above).

    The bin index is computed arithmetically in float64, floor((x - lo) / width): x on an inner
    edge goes to the bin on its right, x == hi to the last bin.
    """
    below = x < lo
    above = x > hi
    idx = torch.floor((x - lo) * (bins / (hi - lo))).long().clamp_(0, bins - 1)
    idx = torch.where(below | above, bins, idx)  # outside: an extra bin, dropped
    counts = torch.bincount(idx, minlength=bins + 1)[:bins]
    return counts, int(below.sum()), int(above.sum())


def weight_histogram(w: torch.Tensor, p: HistogramParams) -> dict:
    flat = w.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("empty weight tensor")
    amax = float(flat.abs().max())
    thr = p.near_zero * amax
    shift = float(flat[: min(n, 4096)].double().mean())  # keeps the moment sums well conditioned
    counts = torch.zeros(p.bins, dtype=torch.long, device=flat.device)
    log_counts = torch.zeros(p.log_bins, dtype=torch.long, device=flat.device)
    under = over = log_under = log_over = near = 0
    S1 = S2 = S3 = S4 = l1 = 0.0
    for i in range(0, n, _CHUNK):
        x = flat[i:i + _CHUNK].double()
        c, b, a = _bin(x, p.lo, p.hi, p.bins)
        counts += c
        under += b
        over += a
        ax = x.abs()
        # log10 of 0 is -inf: below any log edge, counted in log_underflow
        c, b, a = _bin(torch.log10(ax), p.log_lo, p.log_hi, p.log_bins)
        log_counts += c
        log_under += b
        log_over += a
        near += int((ax < thr).sum())
        l1 += float(ax.sum())
        d = x - shift
        d2 = d * d
        S1 += float(d.sum())
        S2 += float(d2.sum())
        S3 += float((d2 * d).sum())
        S4 += float((d2 * d2).sum())
    m = S1 / n
    mean = shift + m
    m2 = max(S2 / n - m * m, 0.0)
    m4 = S4 / n - 4 * m * S3 / n + 6 * m * m * S2 / n - 3 * m ** 4
    std = math.sqrt(m2)
    kurt = (m4 / (m2 * m2) - 3.0) if m2 > 1e-150 and std > 1e-12 * max(abs(mean), amax) else None
    # share of the L1 mass in the largest ceil(10 %) weights: the k-th largest |w| by selection,
    # then the mass above it plus as many ties as make exactly k weights
    k = max(1, math.ceil(0.1 * n))
    a = flat.abs().float()
    thr_k = float(torch.kthvalue(a.cpu(), n - k + 1).values)
    sel = a > thr_k
    above_mass = float(a[sel].double().sum())
    top_mass = above_mass + (k - int(sel.sum())) * thr_k
    return {
        "edges": to_list(edges(p.lo, p.hi, p.bins)), "counts": counts.cpu().tolist(),
        "underflow": under, "overflow": over,
        "log_edges": to_list(edges(p.log_lo, p.log_hi, p.log_bins)), "log_counts": log_counts.cpu().tolist(),
        "log_underflow": log_under, "log_overflow": log_over,
        "numel": n, "mean": mean, "std": std, "kurtosis": kurt,
        "max_abs": amax, "near_zero": near / n, "near_zero_threshold": p.near_zero,
        "top10_l1_share": (top_mass / l1) if l1 > 0 else 0.0,
    }


@register_analysis
class Histogram(Analysis):
    name = "histogram"
    description = ("Histograms of the weights (linear and log10|w|, on bin edges shared across layers and "
                   "models), mean, std, excess kurtosis, share near zero, L1 share of the top 10 %.")
    Params = HistogramParams

    def applies(self, row: dict) -> bool:
        return row.get("type") in ("conv", "linear")

    def _run(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> dict[str, dict]:
        return {r["name"]: weight_histogram(ctx.weight(r["name"]), params) for r in rows}

    def scalars(self, result: dict) -> dict[str, float]:
        out = {"sparsity": float(result["near_zero"])}
        if result.get("kurtosis") is not None:
            out["kurtosis"] = float(result["kurtosis"])
        return out

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
ceil(10 %) of weights largest in |w| (the threshold by an exact radix selection, :func:`kth_smallest_abs`).
"""

from __future__ import annotations

import itertools
import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .base import Analysis, ModelContext, register_analysis, to_list

#: weights per chunk of the float64 moment sums (their summation order: part of the results, to the last bit)
_CHUNK = 1 << 22
#: elements per block of the bin counts inside a chunk (integers: any block size gives the same counts)
_BLOCK = 1 << 19


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


def _bin_blocks(x: torch.Tensor, lo: float, hi: float, bins: int, fn=None) -> tuple[torch.Tensor, int, int]:
    """:func:`_bin` of ``fn(x)`` (x itself without ``fn``), a block of x at a time: the counts are integers,
    so they are the same, and the temporaries (float64 and int64, several per element) stay small."""
    counts = torch.zeros(bins, dtype=torch.long, device=x.device)
    below = above = 0
    for i in range(0, x.numel(), _BLOCK):
        v = x[i:i + _BLOCK]
        c, b, a = _bin(v if fn is None else fn(v), lo, hi, bins)
        counts += c
        below += b
        above += a
    return counts, below, above


def weight_histogram(w: torch.Tensor, p: HistogramParams) -> dict:
    flat = w.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("empty weight tensor")
    # every whole-layer quantity is taken chunk by chunk: no copy of the layer (VGG16's fc6: 411 MB). What a
    # chunk gives goes into a buffer made before the chunks: small tensors kept between the chunks' freed
    # temporaries would pin them in the C heap, which then grows by a chunk per chunk (400 MB on fc6)
    # max |w| from each block's min and max (no |w| temporary; abs is exact, so the same value)
    maxima = flat.new_empty(2 * -(-n // _BLOCK))
    for j, i in enumerate(range(0, n, _BLOCK)):
        lo, hi = flat[i:i + _BLOCK].aminmax()
        maxima[2 * j], maxima[2 * j + 1] = -lo, hi
    amax = abs(float(maxima.max()))  # abs: a layer of zeros gives -0.0 from -min, |w|'s max is +0.0
    thr = p.near_zero * amax
    shift = float(flat[: min(n, 4096)].double().mean())  # keeps the moment sums well conditioned
    counts = torch.zeros(p.bins, dtype=torch.long, device=flat.device)
    log_counts = torch.zeros(p.log_bins, dtype=torch.long, device=flat.device)
    under = over = log_under = log_over = near = 0
    S1 = S2 = S3 = S4 = l1 = 0.0
    for i in range(0, n, _CHUNK):
        x = flat[i:i + _CHUNK].to(torch.float64, copy=True)  # a copy of our own: the powers below are taken in place
        c, b, a = _bin_blocks(x, p.lo, p.hi, p.bins)
        counts += c
        under += b
        over += a
        ax = x.abs()
        # log10 of 0 is -inf: below any log edge, counted in log_underflow
        c, b, a = _bin_blocks(ax, p.log_lo, p.log_hi, p.log_bins, torch.log10)
        log_counts += c
        log_under += b
        log_over += a
        near += int((ax < thr).sum())
        l1 += float(ax.sum())
        del ax
        # in place, two chunk-sized float64 buffers at a time instead of three: the same products (x - shift,
        # d * d2 = d2 * d, d2 * d2) in the same tensors, so the same sums to the last bit
        d = x.sub_(shift)
        del x
        d2 = d * d
        S1 += float(d.sum())
        S2 += float(d2.sum())
        S3 += float(d.mul_(d2).sum())
        del d
        S4 += float(d2.mul_(d2).sum())
        del d2
    m = S1 / n
    mean = shift + m
    m2 = max(S2 / n - m * m, 0.0)
    m4 = S4 / n - 4 * m * S3 / n + 6 * m * m * S2 / n - 3 * m ** 4
    std = math.sqrt(m2)
    kurt = (m4 / (m2 * m2) - 3.0) if m2 > 1e-150 and std > 1e-12 * max(abs(mean), amax) else None
    # share of the L1 mass in the largest ceil(10 %) weights: the k-th largest |w| by selection,
    # then the mass above it plus as many ties as make exactly k weights
    k = max(1, math.ceil(0.1 * n))
    thr_k = kth_smallest_abs(flat, n - k + 1)
    # the weights above it in their order, as one float32 tensor (filled chunk by chunk, the only buffer of
    # its size: 41 MB for VGG16's fc6, half the float64 copy) summed in float64: the whole layer's
    # a[a > thr_k].double().sum() to the last bit (torch sums the float32 values converted to float64 the same
    # way; tests/test_analyses.py checks it)
    # (a block of 512 K weights at a time: the buffer's contents, in order, do not depend on the block)
    def above_in(i: int) -> torch.Tensor:
        a = flat[i:i + _BLOCK].abs().float()
        return a[a > thr_k]

    sizes = [int((flat[i:i + _BLOCK].abs().float() > thr_k).sum()) for i in range(0, n, _BLOCK)]
    above = torch.empty(sum(sizes), dtype=torch.float32, device=flat.device)
    for i, start in zip(range(0, n, _BLOCK), [0] + list(itertools.accumulate(sizes))):
        above[start:start + sizes[i // _BLOCK]] = above_in(i)
    above_mass = float(above.sum(dtype=torch.float64))
    top_mass = above_mass + (k - above.numel()) * thr_k
    return {
        "edges": to_list(edges(p.lo, p.hi, p.bins)), "counts": counts.cpu().tolist(),
        "underflow": under, "overflow": over,
        "log_edges": to_list(edges(p.log_lo, p.log_hi, p.log_bins)), "log_counts": log_counts.cpu().tolist(),
        "log_underflow": log_under, "log_overflow": log_over,
        "numel": n, "mean": mean, "std": std, "kurtosis": kurt,
        "max_abs": amax, "near_zero": near / n, "near_zero_threshold": p.near_zero,
        "top10_l1_share": (top_mass / l1) if l1 > 0 else 0.0,
    }


def kth_smallest_abs(flat: torch.Tensor, rank: int) -> float:
    """The ``rank``-th smallest (1-based) of |x| as float32, x 1-D: ``torch.kthvalue(flat.abs().float(), rank)``
    without the copy of the layer and the sort's buffers (several times the layer for 100M weights).

    Radix selection on the bit patterns: a non-negative float32 orders as its int32 pattern (NaN, whose
    pattern is above inf's, last, as in kthvalue). One pass counts the upper 16 bits, a second the lower 16
    bits of the weights in the bin that holds the rank; both chunk by chunk, so the value is exact.
    """
    n = flat.numel()
    if not 1 <= rank <= n:
        raise ValueError(f"rank must be in 1..{n}; got {rank}")

    def bits(i: int) -> torch.Tensor:
        return flat[i:i + _BLOCK].abs().float().view(torch.int32)

    upper = torch.zeros(1 << 16, dtype=torch.long, device=flat.device)
    for i in range(0, n, _BLOCK):
        upper += torch.bincount(bits(i) >> 16, minlength=1 << 16)
    cum = upper.cumsum(0)
    hi = int(torch.searchsorted(cum, rank))  # the first bin whose cumulative count reaches the rank
    rank -= int(cum[hi - 1]) if hi else 0
    lower = torch.zeros(1 << 16, dtype=torch.long, device=flat.device)
    for i in range(0, n, _BLOCK):
        b = bits(i)
        lower += torch.bincount(b[(b >> 16) == hi] & 0xFFFF, minlength=1 << 16)
    lo = int(torch.searchsorted(lower.cumsum(0), rank))
    return float(torch.tensor([(hi << 16) | lo], dtype=torch.int32).view(torch.float32))


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

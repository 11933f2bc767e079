"""Symmetry of the mean kernel (Alsallakh et al., "On symmetries in convolutional weights").

K = W averaged over the N output and C input channels, K^ = K / ||K||_F, and

    S(K) = 1 - 1/(2|T|) * sum_{T in D4 \\ {e}} ||T(K^) - K^||_F,   in [0, 1]

(each distance is at most 2 since ||K^|| = 1). 1 means the mean kernel is symmetric under every
symmetry of the square.

The transforms, on K indexed [y, x] (y down, x right):

- ``rot90``: 90 degrees clockwise, ``rot180``, ``rot270``: 270 clockwise (= 90 anticlockwise);
- ``flip_h``: horizontal flip, i.e. mirror left-right (x -> -x, reflection across the vertical axis);
- ``flip_v``: vertical flip, mirror top-bottom (y -> -y);
- ``transpose``: reflection across the main diagonal (top-left to bottom-right);
- ``antitranspose``: reflection across the anti-diagonal (top-right to bottom-left).

Non-square kernels (e.g. 1x3, 3x5): only the symmetries that keep the shape are defined (rot180,
flip_h, flip_v); the others are reported as null and S averages over those three (|T| = 3).
A mean kernel that is exactly zero has no direction: score and distances are null.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from .base import Analysis, ModelContext, register_analysis, to_list

TRANSFORMS = ("rot90", "rot180", "rot270", "flip_h", "flip_v", "transpose", "antitranspose")
SHAPE_KEEPING = ("rot180", "flip_h", "flip_v")


def transform(K: torch.Tensor, name: str) -> torch.Tensor:
    """Apply one D4 element to the last two dims of K (..., kh, kw)."""
    if name == "rot90":
        return torch.rot90(K, -1, dims=(-2, -1))  # clockwise
    if name == "rot180":
        return torch.rot90(K, 2, dims=(-2, -1))
    if name == "rot270":
        return torch.rot90(K, 1, dims=(-2, -1))
    if name == "flip_h":
        return torch.flip(K, dims=(-1,))
    if name == "flip_v":
        return torch.flip(K, dims=(-2,))
    if name == "transpose":
        return K.transpose(-2, -1)
    if name == "antitranspose":
        return torch.flip(K, dims=(-2, -1)).transpose(-2, -1)
    raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")


def symmetry_score(K: torch.Tensor) -> tuple[float | None, dict[str, float | None]]:
    """(S, {transform: ||T(K^) - K^||_F}) for one 2-D kernel; see the module docstring."""
    if K.dim() != 2:
        raise ValueError(f"expected a 2-D kernel; got shape {tuple(K.shape)}")
    K = K.double()
    names = TRANSFORMS if K.shape[0] == K.shape[1] else SHAPE_KEEPING
    norm = torch.linalg.norm(K)
    if not norm > 0:
        return None, {t: None for t in TRANSFORMS}
    Kh = K / norm
    dist: dict[str, float | None] = {t: None for t in TRANSFORMS}
    for t in names:
        dist[t] = float(torch.linalg.norm(transform(Kh, t) - Kh))
    S = 1.0 - sum(dist[t] for t in names) / (2 * len(names))
    return min(1.0, max(0.0, S)), dist


class SymmetryParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@register_analysis
class Symmetry(Analysis):
    name = "symmetry"
    description = ("Symmetry of the layer's mean kernel under the 7 non-identity symmetries of the square "
                   "(D4), S in [0, 1]; strided and unevenly padded layers flagged.")
    Params = SymmetryParams

    def applies(self, row: dict) -> bool:
        return row.get("type") == "conv" and list(row.get("kernel") or [1, 1]) != [1, 1]

    def _run(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> dict[str, dict]:
        out = {}
        for row in rows:
            K = ctx.weight(row["name"]).mean(dim=(0, 1))
            S, dist = symmetry_score(K)
            out[row["name"]] = {
                "mean_kernel": to_list(K),
                "score": S,
                "distances": dist,
                "strided": any(int(s) > 1 for s in row.get("stride") or [1, 1]),
                "uneven_padding": bool(row.get("uneven_padding", False)),
            }
        return out

    def scalars(self, result: dict) -> dict[str, float]:
        return {} if result.get("score") is None else {"symmetry": float(result["score"])}

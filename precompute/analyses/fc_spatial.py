"""How the weight magnitude of a fully connected layer after a flatten varies with position.

For a linear layer with ``flatten_from`` = [C, H, W] (no pooling before it): weights reshaped to
(out, C, H, W); ``map`` [H][W] = mean |w| over out and C at each position; ``by_y`` [H] the mean of
map over x (AlexNet's first FC layer varies with y), ``by_x`` [W] the mean over y.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from .base import Analysis, ModelContext, register_analysis, to_list


class FCSpatialParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: output neurons of the layer taken at a time: a float64 copy of a whole 100M-weight layer (VGG16's fc6)
#: would be 800 MB; a block of rows is at most a few MB
_ROWS = 64


def position_mean_abs(w: torch.Tensor, C: int, H: int, W: int) -> torch.Tensor:
    """Mean |w| over the outputs and channels at each position (H, W), w (out, C*H*W), summed in float64
    over blocks of rows."""
    total = torch.zeros(H, W, dtype=torch.float64, device=w.device)
    for i in range(0, w.shape[0], _ROWS):
        total += w[i:i + _ROWS].abs().reshape(-1, C, H, W).double().sum(dim=(0, 1))
    return total / (w.shape[0] * C)


@register_analysis
class FCSpatial(Analysis):
    name = "fc-spatial"
    description = "Mean |w| per input position (y, x) of a fully connected layer that follows a flatten."
    Params = FCSpatialParams
    needs_graph = "which linear layer follows a flatten, and of what map size"

    def applies(self, row: dict) -> bool:
        return row.get("type") == "linear" and bool(row.get("flatten_from"))

    def _run(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> dict[str, dict]:
        out = {}
        for row in rows:
            C, H, W = (int(v) for v in row["flatten_from"])
            w = ctx.weight(row["name"])
            if w.shape[1] != C * H * W:
                raise ValueError(f"layer {row['name']!r}: in_features {w.shape[1]} != C*H*W = {C * H * W} "
                                 f"of flatten_from {row['flatten_from']}")
            m = position_mean_abs(w, C, H, W)
            out[row["name"]] = {"shape": [C, H, W], "map": to_list(m), "by_y": to_list(m.mean(1)),
                                "by_x": to_list(m.mean(0))}
        return out

"""BatchNorm scales and shifts (Frankle et al., "Training BatchNorm and only BatchNorm").

gamma = ``BatchNorm2d.weight``, beta = ``.bias`` (a layer without affine parameters reports
gamma = 1 and beta = 0, which is what it computes), the fractions of |gamma| strictly below 0.01,
0.05 and 0.1, and ``follows``: the conv the layer normalises (from the inventory row).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from ..declarations.limits import GAMMA_THRESHOLDS
from .base import Analysis, ModelContext, register_analysis, to_list

#: the |gamma| thresholds of the scalar keys gamma_below_<t>: the floor's, which the server reads them by
THRESHOLDS = GAMMA_THRESHOLDS


class BatchNormParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@register_analysis
class BatchNorm(Analysis):
    name = "batchnorm"
    description = "BatchNorm gamma and beta, and the fractions of |gamma| below 0.01, 0.05 and 0.1."
    Params = BatchNormParams

    def applies(self, row: dict) -> bool:
        return row.get("type") == "batchnorm"

    def _run(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> dict[str, dict]:
        out = {}
        for row in rows:
            m = ctx.module_of(row["name"])
            C = int(row.get("out_channels") or m.num_features)
            gamma = ctx.weight(row["name"]) if getattr(m, "weight", None) is not None else torch.ones(C)
            beta = ctx.bias(row["name"])
            beta = torch.zeros(C) if beta is None else beta
            g = gamma.abs().double()
            out[row["name"]] = {
                "gamma": to_list(gamma), "beta": to_list(beta), "follows": row.get("follows"),
                "frac_below": {t: float((g < float(t)).double().mean()) for t in THRESHOLDS},
            }
        return out

    def scalars(self, result: dict) -> dict[str, float]:
        return {f"gamma_below_{t}": float(result["frac_below"][t]) for t in THRESHOLDS}

"""The strongest input channels of every neuron, with their raw kernels (for the neuron page).

For neuron n of a conv layer W (N, C/groups, kh, kw): the ``t`` input channels whose kernel
W[n, c] has the largest L2 norm, strongest first (ties: lower channel first). Channel indices are
indices into the layer's full input (for a grouped conv, the group's offset is added), so that
they name neurons of the feeding layer.
"""

from __future__ import annotations

from functools import partial

import torch
from pydantic import BaseModel, ConfigDict, Field

from .base import Analysis, LazyResults, ModelContext, register_analysis, to_list


class KernelsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top: int = Field(8, ge=1, le=64, description="input channels kept per neuron (t)")


def top_kernels(weight: torch.Tensor, top: int, groups: int = 1):
    """weight (N, Cg, kh, kw) -> (channels (N, t) long, kernels (N, t, kh, kw), norms (N, t)), t = min(top, Cg)."""
    N, Cg = weight.shape[:2]
    t = min(top, Cg)
    norms = weight.flatten(2).norm(dim=2)  # (N, Cg)
    order = torch.sort(norms, dim=1, descending=True, stable=True).indices[:, :t]
    kern = weight.gather(1, order[:, :, None, None].expand(-1, -1, *weight.shape[2:]))
    top_norms = norms.gather(1, order)
    if groups > 1:
        per = N // groups
        order = order + (torch.arange(N, device=weight.device) // per * Cg)[:, None]
    return order, kern, top_norms


def _result(channels: torch.Tensor, kernels: torch.Tensor, norms: torch.Tensor) -> dict:
    return {"top_channels": channels.cpu().tolist(), "kernels": to_list(kernels), "norms": to_list(norms)}


@register_analysis
class Kernels(Analysis):
    name = "kernels"
    description = "Each neuron's strongest input channels (L2 norm of the kernel) with their raw kernels."
    Params = KernelsParams

    def applies(self, row: dict) -> bool:
        return row.get("type") == "conv" and list(row.get("kernel") or [1, 1]) != [1, 1]

    def _run(self, ctx: ModelContext, rows: list[dict], params: BaseModel) -> dict[str, dict]:
        # the tensors now, the lists when the pipeline writes each layer (they are ~15x bigger)
        return LazyResults({row["name"]: partial(_result, *top_kernels(ctx.weight(row["name"]), params.top,
                                                                       int(row.get("groups") or 1)))
                            for row in rows})

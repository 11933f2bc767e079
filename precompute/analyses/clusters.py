"""Types of reduced forms across experiments (the weight-banding article's figure 12).

k-means over the NMF images of several (model, layer) pairs with the same kernel size and rank:

1. colours are re-aligned jointly: each layer's ``nmf`` colours are consistent within the layer
   only, so every neuron's factors are permuted again against the pooled mean of all pairs, with
   the same rule as the ``nmf`` analysis (:data:`~precompute.colours.COLOUR_RULE`);
2. each neuron's image (kh x kw x r, already divided by its max) is flattened and scaled to unit
   L2 norm (all-zero images stay zero);
3. scikit-learn ``KMeans(n_clusters=k, random_state=seed, n_init=10)``;
4. clusters are renumbered by decreasing size (ties: by their first member), so results are stable.

This is a *group* analysis: its ``run`` takes NMF results, not a model context::

    ClustersAnalysis().run(entries=[(model, layer, nmf_result), ...], params) -> result

Result (docs/FORMATS.md): ``pairs`` [[model, layer]], ``k``, ``proportions`` [pairs][k] (share of
the pair's neurons in each cluster; rows sum to 1), ``centroids`` [k][kh][kw][r] (mean of the
aligned max-normalised images of the members, displayable as RGB), ``counts`` [pairs] (neurons per
pair), ``labels`` [pairs][N] (cluster of each neuron, in the layer's neuron index order).
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

# the computation itself is torch-free (numpy + scikit-learn), shared with the web server
from ..clustering import N_INIT, VERSION, compute_clusters  # noqa: F401
from .base import Analysis, register_analysis
from .nmf import nmf_applies


class ClustersParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(8, ge=4, le=19, description="number of clusters (4..19, as in the article)")
    seed: int = Field(0, ge=0, le=2 ** 31 - 1, description="k-means random state")


@register_analysis
class ClustersAnalysis(Analysis):
    name = "clusters"
    description = ("k-means (k = 4..19) over the normalised NMF images of several (model, layer) pairs of "
                   "one kernel size; per pair the share of neurons in each cluster.")
    Params = ClustersParams

    def applies(self, row: dict) -> bool:
        """Layers that can take part (those with an ``nmf`` result)."""
        return nmf_applies(row)

    def run(self, entries: Sequence[tuple[str, str, dict]], params: BaseModel) -> dict:  # type: ignore[override]
        """Group scope: ``entries`` = [(model, layer, nmf result)], not a ModelContext."""
        return compute_clusters(entries, k=params.k, seed=params.seed)

"""The app's one view of the cache (``app.state.explorer``): the cache reader plus the views of
:mod:`server.views` (and the findings and clusters) kept as ready-to-send blobs, computed once per state of
the records they show (their stamps are part of every key)."""

from __future__ import annotations

from typing import Any, Optional

from precompute.settings import Settings

from . import views
from .blobs import LRU, Blob
from .clusters import K_MAX, K_MIN, Clusters, parse_pairs
from .errors import ExplorerError
from .findings import compute_findings, rgb_svd_layer
from .reader import CacheReader


class Explorer(CacheReader):
    """The reader of the cache at ``settings.cache``, with the computed views as blobs. One per app."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self._computed = LRU(512, 128 << 20, sizeof=lambda b: b.size)
        self._clusters = Clusters(self)

    def _memo(self, key: tuple, make) -> Blob:
        blob = self._computed.get(key)
        if blob is None:
            blob = Blob.of(make())
            self._computed.put(key, blob)
        return blob

    def models_blob(self) -> Blob:
        return self._memo(("models", self.cache_state()),
                          lambda: {"models": views.list_models(self), "count": len(self.model_names())})

    def model_blob(self, model: str) -> Blob:
        rec = self.record(model)
        return self._memo(("model", rec["_stamp"]), lambda: views.model_detail(self, model))

    def layer_context_blob(self, model: str, layer: str) -> Blob:
        rec, _ = self.row(model, layer)
        return self._memo(("layer", rec["_stamp"], layer), lambda: views.layer_context(self, model, layer))

    def neuron_blob(self, model: str, layer: str, i: Any) -> Blob:
        rec, row = self.row(model, layer)
        i = views.neuron_index(model, layer, row, i)
        return self._memo(("neuron", rec["_stamp"], layer, i), lambda: views.neuron(self, model, layer, i))

    # ---- findings across the zoo ------------------------------------------------------------------
    def findings_blob(self, cached_only: bool = False) -> Optional[Blob]:
        """The findings rankings (:func:`server.findings.compute_findings`) over every model in the cache,
        computed once per set of record stamps (``cached_only``: None instead of computing them)."""
        key = ("findings", self.cache_state())
        if cached_only:
            return self._computed.get(key)
        return self._memo(key, self._findings)

    def _findings(self) -> dict:
        records, svds, human = {}, {}, {}
        for n in self.model_names():
            try:
                rec = self.record(n)
            except ExplorerError:
                continue
            records[n] = rec
            human[n] = self.human_names(n)
            layer = rgb_svd_layer(rec)
            if layer:
                try:
                    svds[n] = (layer, self.result_data(n, layer, "svd"))
                except ExplorerError:
                    pass
        return compute_findings(records, svds, human)

    def findings(self) -> dict:
        return self.findings_blob().data

    # ---- clusters -------------------------------------------------------------------------------
    def clusters_blob(self, pairs: str, k: Any = 8, seed: int = 0, cached_only: bool = False) -> Optional[Blob]:
        """The clusters JSON (:mod:`server.clusters`): from memory, else from the group store, else computed
        and stored. ``cached_only``: None unless it is in memory."""
        parsed = parse_pairs(self, pairs)
        k_int = views.parse_int(k, "k", K_MIN, K_MAX)
        stamps = tuple(self.record(m)["_stamp"] for m, _ in parsed)
        key = ("clusters", tuple(parsed), k_int, seed, stamps)
        blob = self._computed.get(key)
        if blob is not None or cached_only:
            return blob
        blob = self._clusters.blob(parsed, k_int, seed)
        self._computed.put(key, blob)
        return blob

"""``GET /api/clusters``: k-means of the NMF reduced forms of several (model, layer) pairs, computed by the
server on demand with the function of the ``clusters`` analysis (:func:`precompute.clustering.compute_clusters`)
and kept in the cache's group store, so a repeated request never runs k-means again.

A new result is bounded: one k-means at a time per server (another request for a new result waits
``settings.cluster_wait_s``, then gets :class:`~server.errors.Busy`), and the group store keeps the newest
``settings.max_cluster_groups`` results.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Optional

from precompute import clustering
from precompute.cache import CorruptEntry, canonical_json
from precompute.declarations.limits import CLUSTER_K_MAX, CLUSTER_K_MIN, MAX_CLUSTER_PAIRS

from .blobs import Blob
from .errors import BadRequest, Busy, NotFound, listing
from .reader import CacheReader

log = logging.getLogger("convscope.server")

#: cluster-count bounds for /api/clusters (their home: precompute/declarations/limits.py)
K_MIN, K_MAX = CLUSTER_K_MIN, CLUSTER_K_MAX


def parse_pairs(reader: CacheReader, pairs: str) -> list[tuple[str, str]]:
    """``"model:layer,model:layer"`` -> validated pairs, each with an NMF result."""
    if not isinstance(pairs, str) or not pairs.strip():
        raise BadRequest("pairs is required: comma-separated model:layer, e.g. "
                         "pairs=resnet20-cifar10:layer1.0.conv1,resnet20-random:layer1.0.conv1")
    out: list[tuple[str, str]] = []
    for part in pairs.split(","):
        part = part.strip()
        model, sep, layer = part.partition(":")
        if not sep or not model or not layer:
            raise BadRequest(f"pair {part!r} is not model:layer (e.g. resnet20-cifar10:layer1.0.conv1)")
        rec, row = reader.row(model, layer)
        nmf_layers = rec["analyses"].get("nmf", {}).get("layers", [])
        if layer not in nmf_layers:
            raise NotFound(f"layer {layer!r} of {model} has no NMF result (1x1, linear and BN layers have none); "
                           f"layers with one: {listing(nmf_layers)}", known=list(nmf_layers))
        if (model, layer) in out:
            raise BadRequest(f"pair {model}:{layer} is given twice")
        out.append((model, layer))
    if len(out) > MAX_CLUSTER_PAIRS:
        raise BadRequest(f"at most {MAX_CLUSTER_PAIRS} pairs; got {len(out)}")
    return out


def cluster_params(reader: CacheReader, parsed: list[tuple[str, str]], k: int, seed: int = 0) -> dict:
    """What a clusters result depends on (its group cache key): the pairs, k, the seed, and each
    pair's NMF result identity (weights, version, parameters)."""
    nmf = []
    for m, _ in parsed:
        rec = reader.record(m)
        info = rec["analyses"]["nmf"]
        nmf.append({"weights_sha256": rec["weights_sha256"], "version": int(info.get("version", 1)),
                    "params": info.get("params", {})})
    return {"pairs": [[m, l] for m, l in parsed], "k": int(k), "seed": int(seed), "nmf": nmf}


class Clusters:
    """The clusters results of one server: from the group store, else computed (one at a time) and stored."""

    def __init__(self, reader: CacheReader):
        self.reader = reader
        self._computing = threading.Lock()  # one k-means at a time: a new (pairs, k) costs seconds of CPU

    def blob(self, parsed: list[tuple[str, str]], k: int, seed: int = 0) -> Blob:
        """The clusters JSON of validated ``parsed`` pairs: stored, or computed now (:class:`Busy` while
        another one is computed for longer than ``settings.cluster_wait_s``)."""
        params = cluster_params(self.reader, parsed, k, seed)
        blob = self._stored(params)
        if blob is None:
            if not self._computing.acquire(timeout=self.reader.settings.cluster_wait_s):
                raise Busy("the server is computing another clusters result (one at a time); retry in a few "
                           "seconds")
            try:
                blob = self._stored(params)  # computed by the request this one waited for?
                if blob is None:
                    blob = self._compute(parsed, k, seed, params)
            finally:
                self._computing.release()
        return blob

    def _stored(self, params: dict) -> Optional[Blob]:
        cache = self.reader.cache
        try:
            entry = cache.get_group("clusters", clustering.VERSION, params)
        except CorruptEntry as e:
            log.warning("discarding a corrupt clusters entry (%s); recomputing it", e)
            cache.discard(cache.group_path("clusters", clustering.VERSION, params))
            return None
        return None if entry is None else Blob.make(entry.payload, hashlib.sha256(entry.payload).hexdigest())

    def _compute(self, parsed: list[tuple[str, str]], k: int, seed: int, params: dict) -> Blob:
        entries = [(m, l, {"images": self.reader.result_data(m, l, "nmf")["images"]}) for m, l in parsed]
        try:
            data = clustering.compute_clusters(entries, k, seed=seed)
        except ValueError as e:
            raise BadRequest(str(e), range=[K_MIN, K_MAX]) from None
        try:
            self.reader.cache.put_group("clusters", clustering.VERSION, params, data,
                                        meta={"models": [m for m, _ in parsed]},
                                        keep=self.reader.settings.max_cluster_groups)
        except OSError as e:  # a read-only cache still answers
            log.warning("could not store the clusters result: %s", e)
        payload = canonical_json(data)
        return Blob.make(payload, hashlib.sha256(payload).hexdigest())

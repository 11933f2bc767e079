"""k-means over the NMF reduced forms of several (model, layer) pairs: the ``clusters`` computation.

Torch-free (numpy + scikit-learn), so the web server (``GET /api/clusters``) and the ``clusters``
analysis (:mod:`precompute.analyses.clusters`) run this one function:

1. colours are re-aligned jointly: each layer's ``nmf`` colours are consistent within the layer
   only, so every neuron's factors are permuted again against the pooled mean of all pairs, with
   the rule of the ``nmf`` analysis (:mod:`precompute.colours`, the one implementation both use, started
   from the given order: ``align_colours(W, start="identity")``);
2. each neuron's image (kh x kw x r, already divided by its max) is flattened and scaled to unit
   L2 norm (all-zero images stay zero);
3. scikit-learn ``KMeans(n_clusters=k, random_state=seed, n_init=10)``;
4. clusters are renumbered by decreasing size (ties: by their first member), so results are stable.

Result (docs/FORMATS.md): ``pairs`` [[model, layer]], ``k``, ``proportions`` [pairs][k] (share of
the pair's neurons in each cluster; rows sum to 1), ``centroids`` [k][kh][kw][r] (mean of the aligned
max-normalised images of the members), ``counts`` [pairs], ``labels`` [pairs][N] (cluster of each
neuron, in the layer's neuron order), ``sizes`` [k] (members per cluster, decreasing).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .colours import align_colours, apply_perm
from .declarations.analyses import ANALYSES

#: version of the computation (the ``clusters`` analysis' declared version; part of the group cache key)
VERSION = ANALYSES.get("clusters").version
N_INIT = 10


def to_list(x: Any, digits: int = 6) -> Any:
    """Nested lists of floats rounded to ``digits`` significant digits (as ``analyses.base.to_list``)."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(x == 0, 0, np.floor(np.log10(np.abs(np.where(x == 0, 1, x)))))
    scale = 10.0 ** (digits - 1 - mag)
    return (np.round(x * scale) / scale).tolist()


def compute_clusters(entries: Sequence[tuple[str, str, Any]], k: int = 8, seed: int = 0) -> dict:
    """k-means of the NMF images of several ``(model, layer, nmf_result)`` entries (``nmf_result`` a
    dict with ``images`` [N][kh][kw][r]); see the module docstring. A ValueError names the problem
    (layers of different kernel size or rank, more clusters than neurons)."""
    if not entries:
        raise ValueError("clusters needs at least one (model, layer, nmf result) entry; got none")
    shapes, imgs = [], []
    for model, layer, res in entries:
        a = np.asarray(res["images"], dtype=np.float64)
        if a.ndim != 4:
            raise ValueError(f"{model}/{layer}: nmf images must be [N][kh][kw][rank]; got shape {a.shape}")
        shapes.append(tuple(a.shape[1:]))
        imgs.append(a)
    if len(set(shapes)) > 1:
        listing = ", ".join(f"{m}/{l}: {s[0]}x{s[1]} rank {s[2]}" for (m, l, _), s in zip(entries, shapes))
        raise ValueError(f"clusters needs layers of one kernel size and rank; got {listing}")
    kh, kw, r = shapes[0]
    counts = [int(a.shape[0]) for a in imgs]
    total = sum(counts)
    if total < k:
        raise ValueError(f"k must be <= the number of neurons; got k={k} > {total} neurons in {len(entries)} layer(s)")
    W = np.concatenate(imgs, 0).reshape(total, kh * kw, r)
    perm, _ = align_colours(W, start="identity")
    aligned = apply_perm(W, perm).reshape(total, kh, kw, r)
    feats = aligned.reshape(total, -1)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    feats = np.where(norms > 0, feats / np.where(norms > 0, norms, 1.0), 0.0)

    from sklearn.cluster import KMeans

    raw = KMeans(n_clusters=k, random_state=seed, n_init=N_INIT).fit_predict(feats)
    sizes = np.bincount(raw, minlength=k)
    first = [int(np.flatnonzero(raw == c)[0]) if sizes[c] else total for c in range(k)]
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    labels = relabel[raw]
    centroids = np.zeros((k, kh, kw, r))
    for c in range(k):
        members = labels == c
        if members.any():
            centroids[c] = aligned[members].mean(0)
    proportions, per_pair, start = [], [], 0
    for n in counts:
        lab = labels[start:start + n]
        proportions.append(np.bincount(lab, minlength=k) / max(n, 1))
        per_pair.append([int(x) for x in lab])
        start += n
    return {
        "pairs": [[m, l] for m, l, _ in entries], "k": int(k),
        "proportions": to_list(np.array(proportions)), "centroids": to_list(centroids),
        "counts": counts, "labels": per_pair, "sizes": [int(sizes[c]) for c in order],
    }

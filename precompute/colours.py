"""The colour alignment of NMF position factors: which factor of each neuron is drawn red, green, blue.

One implementation, in numpy, for both sides: the ``nmf`` analysis (:func:`precompute.analyses.nmf_core.nmf_layers`,
torch, passes its factors through ``.cpu().numpy()``: they are small, (N, kh*kw, r)) and the ``clusters``
computation (:mod:`precompute.clustering`, which the torch-free web server runs). Torch-free, so that the
server can import it.

Shapes: ``W`` (B, P, r) position factors (B neurons, P = kh*kw kernel positions, r factors), ``H``
(B, r, F) channel factors, ``perm`` (B, r) with ``perm[b, j]`` = the factor of neuron b drawn as colour j.
"""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

#: the rule that makes colours consistent across the neurons of a layer (stored with every nmf result)
COLOUR_RULE = (
    "Factors start ordered by energy (||w_k||*||h_k||, largest first). Reference = the layer's mean of "
    "the unit-norm position factors. Each neuron's factors are permuted by an optimal assignment "
    "(Hungarian; exhaustive over the 3! permutations, batched) maximising the summed cosine similarity "
    "to the reference; the reference is recomputed and the matching repeated (3 rounds or until stable). "
    "Red, green, blue = reference factors 0, 1, 2."
)

_TINY = 1e-30


def _unit(F: np.ndarray) -> np.ndarray:
    """Columns (axis 1) to unit L2 norm, zero columns stay zero. (B, P, r)."""
    return F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), _TINY)


def best_permutations(sim: np.ndarray) -> np.ndarray:
    """Optimal assignment for every item of a batch: sim (B, r, r) similarity of factor i to colour j.

    Returns perm (B, r) int64 with perm[b, j] = the factor that becomes colour j, maximising
    sum_j sim[b, perm[b, j], j]. For r <= 5 all r! permutations are scored in one array operation
    (exact, the same optimum as the Hungarian algorithm; ties go to the first permutation in
    ``itertools.permutations`` order); beyond, scipy's linear_sum_assignment per item.
    """
    B, r, _ = sim.shape
    if r <= 5:
        perms = np.array(list(itertools.permutations(range(r))), dtype=np.int64).reshape(-1, r)  # (p, r)
        scores = sim[:, perms, np.arange(r)].sum(-1)  # (B, p)
        return perms[scores.argmax(axis=1)]
    # scipy is imported by the server only when a rank > 5 is aligned (never with the default rank 3)
    from scipy.optimize import linear_sum_assignment

    out = np.empty((B, r), dtype=np.int64)
    for b in range(B):
        rows, cols = linear_sum_assignment(-sim[b])
        out[b, cols] = rows
    return out


def apply_perm(W: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """W (B, P, r) with its factors reordered: out[:, :, j] = W[:, :, perm[:, j]]."""
    return np.take_along_axis(W, np.repeat(perm[:, None, :], W.shape[1], 1), 2)


def align_colours(W: np.ndarray, H: Optional[np.ndarray] = None, rounds: int = 3,
                  reference: Optional[np.ndarray] = None,
                  start: str = "energy") -> tuple[np.ndarray, np.ndarray]:
    """Permute each neuron's factors so that colour j means the same thing across the batch.

    W: (B, P, r) position factors of ONE layer (or of a set of layers aligned together);
    H: (B, r, F) optional channel factors, used only for the initial energy order.
    Returns (perm (B, r) int64, reference (P, r)); apply with :func:`apply_perm`. See :data:`COLOUR_RULE`.
    With ``reference`` given, one matching against it (no iteration). ``start="identity"`` keeps the given
    factor order for the first reference (to re-align factors that are already aligned within groups,
    e.g. layers, across groups). The arithmetic keeps W's dtype (float32 factors stay float32).
    """
    W = np.asarray(W)
    B, P, r = W.shape
    if start not in ("energy", "identity"):
        raise ValueError(f"start must be 'energy' or 'identity'; got {start!r}")
    if start == "identity":
        perm = np.broadcast_to(np.arange(r, dtype=np.int64), (B, r)).copy()
    else:
        energy = np.linalg.norm(W, axis=1)  # (B, r)
        if H is not None:
            energy = energy * np.linalg.norm(np.asarray(H), axis=2)
        # largest first, ties in the given order (a stable sort of the negated energies)
        perm = np.argsort(-energy, axis=1, kind="stable").astype(np.int64)
    if B == 0:
        return perm, np.zeros((P, r), dtype=W.dtype)
    U = _unit(W)
    fixed = reference is not None
    for _ in range(1 if fixed else rounds):
        if not fixed:
            reference = apply_perm(U, perm).mean(0)  # (P, r)
        ref = reference / np.maximum(np.linalg.norm(reference, axis=0, keepdims=True), _TINY)
        sim = np.einsum("bpi,pj->bij", U, ref)  # cosine similarity of factor i to colour j
        new = best_permutations(sim)
        if np.array_equal(new, perm) and not fixed:
            break
        perm = new
    if not fixed:
        reference = apply_perm(U, perm).mean(0)
    return perm, reference

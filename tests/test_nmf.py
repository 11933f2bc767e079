"""The batched NMF core: planted factorisations, colour alignment, ordering, and (slow) quality
against scikit-learn's per-neuron NMF on the real layers of vgg16-hed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from precompute.analyses.nmf_core import (banding_index, batched_nmf, images_from_factors, leaf_order, nmf_layers,
                                          nndsvda_init, nonneg_matrices, relative_error)
from precompute.colours import COLOUR_RULE, align_colours, apply_perm, best_permutations


def planted(B=32, P=9, F=40, r=3, seed=0):
    """X = W H with separable non-negative factors (each factor owns a 'pure' position and channel),
    so the rank-3 NMF is unique up to permutation and scale."""
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(B, P, r, generator=g) * (torch.rand(B, P, r, generator=g) > 0.3)
    H = torch.rand(B, r, F, generator=g) * (torch.rand(B, r, F, generator=g) > 0.3)
    for k in range(r):
        W[:, k, :] = 0
        W[:, k, k] = 1.0
        H[:, :, k] = 0
        H[:, k, k] = 1.0
    return W @ H, W, H


def unit_cols(W):
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)


def test_nonneg_matrices_layout():
    W = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]]])  # N=1, C=1, 2x2
    X = nonneg_matrices(W)
    assert X.shape == (1, 4, 2)
    assert X[0].tolist() == [[1, 0], [0, 2], [0, 0], [3, 0]]
    W = torch.randn(5, 7, 3, 3)
    assert torch.allclose(torch.linalg.vector_norm(nonneg_matrices(W), dim=(1, 2)), W.flatten(1).norm(dim=1))


def test_planted_rank3_recovered():
    X, W0, _ = planted()
    res = batched_nmf(X, tol=1e-7, max_iter=3000)
    assert float(res.error.max()) < 1e-3
    # factors equal up to permutation and scale
    sim = torch.einsum("bpi,bpj->bij", unit_cols(res.W), unit_cols(W0))
    perm = torch.as_tensor(best_permutations(sim.numpy()))
    matched = sim.gather(1, perm[:, None, :]).squeeze(1)  # cosine of factor perm[j] with true factor j
    assert float(matched.min()) > 0.999


def test_nndsvda_matches_sklearn():
    from sklearn.decomposition._nmf import _initialize_nmf

    X, _, _ = planted(B=4, F=20, seed=3)
    W, H = nndsvda_init(X.double(), 3)
    for b in range(4):
        Ws, Hs = _initialize_nmf(X[b].double().numpy(), 3, init="nndsvda")
        assert np.allclose(W[b].numpy(), Ws, atol=1e-6) and np.allclose(H[b].numpy(), Hs, atol=1e-6)


def test_batched_equals_one_by_one_and_deterministic():
    X = nonneg_matrices(torch.randn(12, 16, 3, 3, generator=torch.Generator().manual_seed(0)))
    full = batched_nmf(X)
    assert torch.equal(full.W, batched_nmf(X).W)  # deterministic
    for b in (0, 5, 11):  # per-matrix early stopping: the result does not depend on the batch
        one = batched_nmf(X[b:b + 1])
        assert torch.allclose(one.W[0], full.W[b], atol=1e-5) and int(one.iters[0]) == int(full.iters[b])


def test_extrapolated_default_at_sklearn_error():
    """The default (extrapolated HALS, tol 5e-5) reaches scikit-learn's mean error; plain HALS
    (extrapolate=False) is still available and deterministic."""
    X = nonneg_matrices(torch.randn(16, 32, 3, 3, generator=torch.Generator().manual_seed(7)))
    res = batched_nmf(X)
    assert torch.allclose(res.error, relative_error(X, res.W, res.H), atol=1e-6)
    assert bool((res.W >= 0).all() and (res.H >= 0).all())
    ref = sklearn_errors(X.double().numpy())
    assert res.error.double().numpy().mean() <= ref.mean() * (1 + 1e-3)
    plain = batched_nmf(X, extrapolate=False, tol=2e-2)
    assert torch.equal(plain.W, batched_nmf(X, extrapolate=False, tol=2e-2).W)
    assert float(plain.error.mean()) >= float(res.error.mean()) - 1e-4


def test_exact_when_few_columns():
    X = nonneg_matrices(torch.randn(20, 1, 3, 3))  # depthwise: 9 x 2
    res = batched_nmf(X)
    assert res.n_iter == 0 and float(res.error.max()) < 1e-6


def test_zero_neuron():
    W = torch.randn(4, 8, 3, 3)
    W[2] = 0
    out = nmf_layers({"l": W})["l"]
    assert torch.isfinite(out.images).all() and float(out.images[2].abs().max()) == 0
    assert float(out.error[2]) == 0 and float(out.energy[2]) == 0


def test_rank_validation():
    with pytest.raises(ValueError, match="rank must be >= 1; got 0"):
        batched_nmf(torch.rand(2, 9, 4), rank=0)
    with pytest.raises(ValueError, match="non-negative"):
        batched_nmf(-torch.rand(2, 9, 4))


@pytest.mark.parametrize("r", [2, 3, 4, 6])
def test_best_permutations_is_optimal_assignment(r):
    from scipy.optimize import linear_sum_assignment

    sim = torch.randn(50, r, r, generator=torch.Generator().manual_seed(r))
    perm = torch.as_tensor(best_permutations(sim.numpy()))
    for b in range(50):
        rows, cols = linear_sum_assignment(-sim[b].numpy())
        best = sim[b].numpy()[rows, cols].sum()
        got = sum(float(sim[b, perm[b, j], j]) for j in range(r))
        assert abs(got - best) < 1e-5
        assert sorted(perm[b].tolist()) == list(range(r))


def test_colour_alignment_planted_permutations():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(9, 3, generator=g) ** 4  # three distinct factor images
    perms = list(itertools.permutations(range(3)))
    N = 60
    W = torch.stack([base[:, list(perms[n % 6])] * (0.5 + torch.rand(1, 3, generator=g)) for n in range(N)])
    W = W + 0.01 * torch.rand(N, 9, 3, generator=g)
    perm, ref = align_colours(W.numpy())
    A = unit_cols(torch.as_tensor(apply_perm(W.numpy(), perm)))
    # every neuron ends up with the same factor order: factor j matches the same base image
    sim = torch.einsum("bpj,pk->bjk", A, unit_cols(base[None])[0])
    which = sim.argmax(2)  # (N, 3): the base image each aligned colour is
    assert (which == which[0]).all() and sorted(which[0].tolist()) == [0, 1, 2]
    assert "Hungarian" in COLOUR_RULE


def test_banding_index_pure_forms():
    img = torch.zeros(3, 3, 3, 3)
    img[0, 0, :, 0] = 1  # top row: horizontal stripe
    img[1, :, 2, 1] = 1  # right column: vertical stripe
    img[2, 1, 1, 2] = 1  # centre dot: as much row as column structure
    e = torch.ones(3)
    assert banding_index(img[:1], e[:1]) == pytest.approx(1.0)
    assert banding_index(img[1:2], e[:1]) == pytest.approx(-1.0)
    assert banding_index(img[2:], e[:1]) == pytest.approx(0.0, abs=1e-12)
    assert banding_index(img[:2], torch.tensor([3.0, 1.0])) == pytest.approx(0.5)  # energy-weighted


def test_leaf_order_groups_similar():
    rng = np.random.default_rng(0)
    a, b = rng.random(12), rng.random(12)
    feats = np.stack([a, b, a + 0.01, b + 0.01, a + 0.02, b + 0.02])
    order = leaf_order(feats)
    assert sorted(order) == list(range(6))
    pos = {n: i for i, n in enumerate(order)}
    assert max(pos[0], pos[2], pos[4]) - min(pos[0], pos[2], pos[4]) == 2  # the a's are contiguous


def test_images_normalised():
    W = torch.rand(5, 9, 3) * 7
    img = images_from_factors(W, (3, 3))
    assert img.shape == (5, 3, 3, 3) and torch.allclose(img.amax(dim=(1, 2, 3)), torch.ones(5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    W = torch.randn(64, 32, 3, 3, generator=torch.Generator().manual_seed(0))
    cpu = nmf_layers({"l": W})["l"]
    gpu = nmf_layers({"l": W.cuda()})["l"]
    assert abs(float(cpu.error.mean()) - float(gpu.error.cpu().mean())) < 1e-3


# ---------------------------------------------------------------------------------------------
# quality against scikit-learn on real weights (slow: loads vgg16-hed)

NEURONS_PER_LAYER = 64


def sklearn_errors(X: np.ndarray) -> np.ndarray:
    """Per-matrix relative error of sklearn NMF(n_components=3, init='nndsvda'), default solver and max_iter."""
    import warnings

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    out = []
    for x in X:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = NMF(n_components=3, init="nndsvda", random_state=0)
            w = m.fit_transform(x)
        out.append(np.linalg.norm(x - w @ m.components_) / np.linalg.norm(x))
    return np.array(out)


@pytest.mark.slow
def test_quality_vs_sklearn_on_vgg16_hed(settings):
    """The `nmf` analysis itself (as precompute runs it, every neuron of the 13 real layers) against sklearn's
    per-neuron NMF on the same matrices, for 64 sampled neurons per layer (sklearn on all 4,224 takes ~40 s here;
    benchmarks/nmf.py compares all of them)."""
    from precompute.cache import Cache, ResultKey
    from precompute.pipeline import precompute_model
    from precompute.zoo import load_model

    record = precompute_model("vgg16-hed", settings, analyses=["nmf"], device="cpu")
    info = record["analyses"]["nmf"]
    key = ResultKey(record["weights_sha256"], "nmf", info["version"], info["params"])
    module = load_model("vgg16-hed", settings).module
    convs = [(n, m) for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert len(convs) == 13 and sorted(info["layers"]) == sorted(n for n, _ in convs)
    ours, ref = [], []
    g = torch.Generator().manual_seed(0)
    for name, conv in convs:
        W = conv.weight.detach().float()
        result = Cache(settings.cache).get(key, name).data
        errors = torch.tensor(result["error"], dtype=torch.float64)
        assert errors.shape == (W.shape[0],)
        idx = torch.sort(torch.randperm(W.shape[0], generator=g)[:NEURONS_PER_LAYER]).values
        X = nonneg_matrices(W[idx])
        ours.append(errors[idx].numpy())
        ref.append(sklearn_errors(X.double().numpy()))
    ours, ref = np.concatenate(ours), np.concatenate(ref)
    ratio = ours.mean() / ref.mean()
    # the issue allows 2 % above sklearn; measured 0.9998 (at or below sklearn, the benchmark's target), so the
    # bound is 0.1 % (BLAS/platform noise)
    assert ratio <= 1.001, f"mean relative error {ours.mean():.5f} vs sklearn {ref.mean():.5f} ({ratio:.4f}x)"


def test_sklearn_rule_reproduces_sklearn():
    """stop='violation' is scikit-learn's own stopping rule on the same algorithm and start: same errors."""
    X = nonneg_matrices(torch.randn(8, 32, 3, 3, generator=torch.Generator().manual_seed(5))).double()
    res = batched_nmf(X, stop="violation", tol=1e-4, max_iter=200)
    ref = sklearn_errors(X.numpy())
    assert np.all(res.error.numpy() <= ref * (1 + 1e-4))
    assert abs(res.error.numpy().mean() / ref.mean() - 1) < 1e-3
    with pytest.raises(ValueError, match="stop must be"):
        batched_nmf(X, stop="never")

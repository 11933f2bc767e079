"""Branch statistics (precompute/analyses/branch_stats.py) on planted structure: image-filter frequency and
orientation, eta squared against the one-way ANOVA formula, a permutation test that finds planted branch
differences and keeps its false-positive rate on noise, and the SVD analysis' ``branch_tests`` on a network
whose merging layer was built to tell its branches apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from precompute.analyses import ANALYSES
from precompute.analyses.branch_stats import branch_test, eta_squared, kernel_frequency
from tests.test_analyses import make_ctx, run_all

FLAT = torch.ones(3, 3)
EDGE_X = torch.tensor([[1.0, 0, -1], [1, 0, -1], [1, 0, -1]])  # varies along x: a vertical edge
CHECKER = torch.tensor([[1.0, -1, 1], [-1, 1, -1], [1, -1, 1]])


def _kernels(*ks: torch.Tensor, channels: int = 1) -> torch.Tensor:
    return torch.stack([k.expand(channels, 3, 3) for k in ks])


def test_frequency_orders_blob_edge_checkerboard():
    f, o = kernel_frequency(_kernels(FLAT, EDGE_X, CHECKER))
    assert f[0] < f[1] < f[2], f
    assert f.tolist() == pytest.approx([0.1832, 0.2906, 0.5608], abs=1e-3)
    assert abs(o[0]) < 1e-9 and abs(o[2]) < 1e-9  # blob and checkerboard: no orientation


def test_orientation_sign_and_rotation():
    f, o = kernel_frequency(_kernels(EDGE_X, EDGE_X.T, -EDGE_X))
    assert o[0] > 0.4 and o[1] == pytest.approx(-o[0]) and o[2] == pytest.approx(o[0])  # sign-blind
    assert f[0] == pytest.approx(f[1]) == pytest.approx(f[2])
    # the sum over channels: an RGB filter's spectrum is its channels' together; scaling changes nothing
    f3, o3 = kernel_frequency(_kernels(EDGE_X, channels=3) * 5)
    assert f3[0] == pytest.approx(f[0]) and o3[0] == pytest.approx(o[0])


def test_zero_kernel_and_bad_shape():
    f, o = kernel_frequency(torch.zeros(2, 1, 3, 3))
    assert f.tolist() == [0.0, 0.0] and o.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="conv weight"):
        kernel_frequency(torch.zeros(3, 3))


def test_eta_squared_is_the_anova_share():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    labels = np.repeat([0, 1, 2], 10)
    x[labels == 1, 0] += 3.0
    mean = x.mean(0)
    between = sum((labels == g).sum() * (x[labels == g].mean(0) - mean) ** 2 for g in range(3))
    expected = between / ((x - mean) ** 2).sum(0)
    got = eta_squared(torch.from_numpy(x), torch.from_numpy(labels)).numpy()
    assert np.allclose(got, expected) and got[0] > 0.5 > got[1]
    assert eta_squared(torch.ones(6, 1), torch.tensor([0, 0, 0, 1, 1, 1])).tolist() == [0.0]


def test_planted_branch_difference_is_found():
    torch.manual_seed(0)
    labels = torch.arange(16) // 8
    x = torch.randn(16, 4) * 0.1
    x[:, 2] += labels * 1.0  # column 2 carries the branch
    r = branch_test(x, labels, permutations=500)
    assert r["best"] == 2 and r["eta2_best"] > 0.9
    assert r["p"] == pytest.approx(1 / 501)  # no shuffle comes close
    assert r["chance"] == pytest.approx(1 / 15)
    assert r["means"][1][2] - r["means"][0][2] == pytest.approx(1.0, abs=0.1)


def test_noise_is_significant_about_as_often_as_the_level_says():
    """The max-over-columns statistic is compared with the max over the shuffles, so choosing the best of
    8 columns is paid for: on noise, p < 0.05 about 5 % of the time (not 1 - 0.95^8 = 34 %)."""
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(24) // 6
    ps = [branch_test(torch.randn(24, 8, generator=gen), labels, permutations=200, seed=i)["p"] for i in range(120)]
    rate = np.mean(np.array(ps) < 0.05)
    assert 0.005 <= rate <= 0.12, rate
    # and p is the same for the same input (a fixed seed)
    x = torch.randn(24, 8, generator=gen)
    assert branch_test(x, labels)["p"] == branch_test(x, labels)["p"]


def test_branch_test_refuses_what_it_cannot_judge():
    with pytest.raises(ValueError, match="at least 2 branches"):
        branch_test(torch.randn(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        branch_test(torch.randn(5), torch.zeros(4, dtype=torch.long))


def _branched_net(planted: bool, seed: int = 5) -> nn.Module:
    """Grey image -> conv (8 filters) -> grouped conv (2 branches of 4) -> 1x1 conv that merges them.

    Planted: branch 0 reads the 4 blob filters and branch 1 the 4 checkerboards (so the branches differ in
    frequency), and the merging conv's first 6 neurons read branch 0 strongly, its last 6 branch 1 (so the
    branches separate on a singular vector)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                        nn.Conv2d(8, 12, 1)).eval()
    if planted:
        with torch.no_grad():
            noise = lambda *s: 0.05 * torch.randn(*s)  # noqa: E731
            net[0].weight.copy_(torch.cat([_kernels(FLAT)] * 4 + [_kernels(CHECKER)] * 4) + noise(8, 1, 3, 3))
            w = torch.full((12, 8), 0.1) + noise(12, 8)
            w[:6, :4] += 1.0
            w[6:, 4:] += 1.0
            net[4].weight.copy_(w[:, :, None, None])
    return net


def test_svd_branch_tests_planted():
    res, rows = run_all(ANALYSES.get("svd"), make_ctx(_branched_net(True), (1, 12, 12), "branched"))
    svd = ANALYSES.get("svd")
    # the grouped conv reads the image filters: its feeder's frequency differs by branch; M is block-diagonal,
    # so no separation test there
    grouped = res["2"]["branch_tests"]
    assert grouped["separation"] is None
    freq = grouped["properties"]["frequency"]
    assert freq["eta2_best"] > 0.95 and freq["p"] < 0.05 and freq["means"][1][0] > freq["means"][0][0] + 0.3
    assert set(grouped["properties"]) == {"frequency", "orientation", "norm"}
    # the 1x1 conv merges the branches: they separate on a singular vector
    sep = res["4"]["branch_tests"]["separation"]
    assert sep["eta2_best"] > 0.95 and sep["p"] < 0.05
    assert svd.scalars(res["4"]) == {"branch_separation": sep["eta2_best"], "branch_separation_p": sep["p"]}
    assert svd.scalars(res["2"]) == {"branch_frequency": freq["eta2_best"], "branch_frequency_p": freq["p"]}


def test_svd_branch_tests_random_weights_find_nothing():
    """Untrained networks (12 seeds): p < 0.05 should come out about once in 20; allow 2 of 12 per test."""
    small = {"separation": 0, "frequency": 0}
    for seed in range(12):
        res, _ = run_all(ANALYSES.get("svd"), make_ctx(_branched_net(False, seed), (1, 12, 12), "random"))
        small["separation"] += res["4"]["branch_tests"]["separation"]["p"] < 0.05
        small["frequency"] += res["2"]["branch_tests"]["properties"]["frequency"]["p"] < 0.05
    assert small["separation"] <= 2 and small["frequency"] <= 2, small


def test_no_branch_tests_without_branches():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    res, _ = run_all(ANALYSES.get("svd"), make_ctx(net, (1, 12, 12), "plain"))
    assert "branch_tests" not in res["2"] and ANALYSES.get("svd").scalars(res["2"]) == {}
    assert list(res["2"]["feeder_properties"]) == ["frequency", "orientation", "norm"]

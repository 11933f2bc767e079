"""The analyses registry: every registered analysis declared, validated and run on tiny real models,
then each analysis on planted structure (a symmetric kernel scores 1, a rank-2 |W| has two singular
values, horizontal bands give a banding index near +1, ...)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from precompute.analyses import ANALYSES, ModelContext
from precompute.analyses.clusters import compute_clusters
from precompute.analyses.base import to_list
from precompute.analyses.fc_spatial import position_mean_abs
from precompute.analyses.histogram import HistogramParams, kth_smallest_abs, weight_histogram
from precompute.analyses.nmf_core import nmf_layers
from precompute.analyses.svd import colourfulness, connection_matrix, svd_of
from precompute.analyses.symmetry import symmetry_score
from precompute.declarations.records import InventoryRow
from precompute.inventory import inventory

SHA = "0" * 64

#: keys each analysis' per-layer result must carry (docs/FORMATS.md)
SCHEMA = {
    "symmetry": {"mean_kernel", "score", "distances", "strided", "uneven_padding"},
    "nmf": {"rank", "kernel", "images", "order", "error", "energy", "banding_index", "colour_rule"},
    "kernels": {"top_channels", "kernels", "norms"},
    "svd": {"feeder", "singular_values", "u", "v", "pca", "feeder_property", "feeder_properties"},
    "histogram": {"edges", "counts", "log_edges", "log_counts", "mean", "std", "kurtosis", "near_zero",
                  "top10_l1_share", "underflow", "overflow", "log_underflow", "log_overflow", "numel"},
    "batchnorm": {"gamma", "beta", "follows", "frac_below"},
    "fc-spatial": {"shape", "map", "by_y", "by_x"},
    "clusters": {"pairs", "k", "proportions", "centroids", "counts", "labels"},
}
LAYER_ANALYSES = [n for n, a in ANALYSES.items() if a.scope == "layer"]


# ---------------------------------------------------------------------------------------------
# tiny real models


def gap_net() -> nn.Module:
    """conv-BN-ReLU, strided conv-BN-ReLU, depthwise conv, 1x1 conv, global average pool, linear."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with torch.no_grad():  # non-trivial BatchNorm parameters
        for bn in (m[1], m[4]):
            bn.weight.uniform_(-0.2, 1.0)
            bn.bias.uniform_(-0.5, 0.5)
    return m.eval()


def flat_net() -> nn.Module:
    """conv, max pool, grouped conv (2 branches), flatten, linear: no global pooling."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 5)).eval()


def make_ctx(module: nn.Module, input_size=(3, 16, 16), name="tiny") -> ModelContext:
    return ModelContext(name=name, module=module, inventory=inventory(module, input_size), weights_sha256=SHA,
                        device=torch.device("cpu"))


@pytest.fixture(scope="module")
def contexts() -> list[ModelContext]:
    return [make_ctx(gap_net(), (3, 16, 16), "gap"), make_ctx(flat_net(), (3, 16, 16), "flat")]


def run_all(analysis, ctx: ModelContext, **params):
    rows = [r for r in ctx.inventory if analysis.applies(r)]
    return analysis.run(ctx, rows, analysis.params(**params)), rows


# ---------------------------------------------------------------------------------------------
# registry-wide


def test_registry_lists_every_analysis():
    assert set(ANALYSES.names()) == set(SCHEMA)


@pytest.mark.parametrize("name", ANALYSES.names())
def test_declaration(name):
    a = ANALYSES.get(name)
    assert a.name == name and isinstance(a.version, int) and a.version >= 1 and a.description
    decl = a.declaration()
    assert json.loads(json.dumps(decl, allow_nan=False)) == decl
    assert decl["scope"] in ("layer", "group")
    p = a.params()  # every field has a default
    assert json.dumps(p.model_dump(mode="json"))
    assert a.Params(**p.model_dump()) == p


@pytest.mark.parametrize("name", ANALYSES.names())
def test_bad_params_name_the_field(name):
    a = ANALYSES.get(name)
    with pytest.raises(ValidationError, match="no_such_param"):
        a.params(no_such_param=1)
    for field in a.Params.model_fields:
        with pytest.raises(ValidationError) as e:
            a.params(**{field: "bogus"})
        assert field in str(e.value)


@pytest.mark.parametrize("name,bad,field", [
    ("nmf", {"rank": 0}, "rank"), ("nmf", {"tol": 0}, "tol"), ("nmf", {"order_method": "median"}, "order_method"),
    ("clusters", {"k": 3}, "k"), ("clusters", {"k": 20}, "k"), ("clusters", {"seed": -1}, "seed"),
    ("histogram", {"bins": 0}, "bins"), ("histogram", {"near_zero": 1.5}, "near_zero"),
    ("histogram", {"lo": 1.0, "hi": -1.0}, "lo must be < hi"), ("kernels", {"top": 0}, "top"), ("svd", {"k": 0}, "k"),
])
def test_bad_values(name, bad, field):
    with pytest.raises(ValidationError) as e:
        ANALYSES.get(name).params(**bad)
    assert field in str(e.value)


@pytest.mark.parametrize("name", LAYER_ANALYSES)
def test_runs_on_tiny_models(name, contexts):
    a = ANALYSES.get(name)
    ran = 0
    for ctx in contexts:
        res, rows = run_all(a, ctx)
        assert set(res) == {r["name"] for r in rows}
        for layer, data in res.items():
            text = json.dumps(data, allow_nan=False)
            assert SCHEMA[name] <= set(data), f"{name}/{layer} lacks {SCHEMA[name] - set(data)}"
            assert json.loads(text) == data
            scal = a.scalars(data)
            assert all(isinstance(v, float) and math.isfinite(v) for v in scal.values())
        again, _ = run_all(a, ctx)
        assert json.dumps(dict(again), sort_keys=True) == json.dumps(dict(res), sort_keys=True), "not deterministic"
        ran += len(res)
    assert ran > 0, f"{name} applies to no layer of the tiny models"


def test_applies_where_expected(contexts):
    gap, flat = contexts
    applied = {n: [r["name"] for r in gap.inventory if ANALYSES.get(n).applies(r)] for n in LAYER_ANALYSES}
    assert applied["symmetry"] == applied["nmf"] == applied["kernels"] == ["0", "3", "6"]  # not the 1x1
    assert applied["batchnorm"] == ["1", "4"]
    assert applied["histogram"] == ["0", "3", "6", "8", "11"]
    assert applied["svd"] == ["3", "8", "11"]  # the first conv has no feeder; depthwise "6" left out
    assert applied["fc-spatial"] == []
    assert [r["name"] for r in flat.inventory if ANALYSES.get("fc-spatial").applies(r)] == ["6"]


def test_tiny_results_shapes(contexts):
    gap, flat = contexts
    nmf, _ = run_all(ANALYSES.get("nmf"), gap)
    assert np.array(nmf["3"]["images"]).shape == (16, 3, 3, 3)
    assert sorted(nmf["3"]["order"]) == list(range(16))
    assert max(nmf["6"]["error"]) < 1e-4  # depthwise: [W+, W-] is 9 x 2, rank 3 is exact
    img = np.array(nmf["0"]["images"])
    assert img.min() >= 0 and np.allclose(img.reshape(8, -1).max(1), 1.0)
    sym, _ = run_all(ANALYSES.get("symmetry"), gap)
    assert sym["3"]["strided"] and not sym["0"]["strided"]
    assert sym["3"]["uneven_padding"]  # 3x3, stride 2, pad 1 on 16x16: bottom/right padding unused
    svd, _ = run_all(ANALYSES.get("svd"), gap)
    assert svd["3"]["feeder"] == "0" and svd["3"]["feeder_property"]["name"] == "colourfulness"
    assert np.array(svd["3"]["u"]).shape == (16, 8) and np.array(svd["3"]["v"]).shape == (8, 8)
    assert svd["11"]["feeder"] == "8" and np.array(svd["11"]["v"]).shape == (8, 8)
    fsvd, _ = run_all(ANALYSES.get("svd"), flat)
    prop = fsvd["3"]["feeder_property"]  # an RGB feeder of a grouped conv: colourfulness and branches
    assert prop["name"] == "colourfulness" and prop["branch"] == [0, 0, 1, 1] and len(prop["values"]) == 4
    assert list(fsvd["3"]["feeder_properties"]) == ["colourfulness", "branch", "frequency", "orientation", "norm"]
    assert fsvd["6"]["feeder_properties"]["branch"] == [0, 0, 0, 1, 1, 1]  # the feeder's own groups
    assert list(svd["8"]["feeder_properties"]) == ["norm"]  # fed by a depthwise conv: no branches
    assert fsvd["6"]["feeder"] == "3" and np.array(fsvd["6"]["v"]).shape == (6, 5)
    ker, _ = run_all(ANALYSES.get("kernels"), flat)
    ch = np.array(ker["3"]["top_channels"])
    assert ch.shape == (6, 2) and set(ch[:3].ravel()) == {0, 1} and set(ch[3:].ravel()) == {2, 3}
    bn, _ = run_all(ANALYSES.get("batchnorm"), gap)
    assert bn["1"]["follows"] == "0" and bn["4"]["follows"] == "3"
    fc, _ = run_all(ANALYSES.get("fc-spatial"), flat)
    assert fc["6"]["shape"] == [6, 5, 5] and np.array(fc["6"]["map"]).shape == (5, 5)


def test_clusters_on_tiny_model(contexts):
    nmf, _ = run_all(ANALYSES.get("nmf"), contexts[0])
    c = ANALYSES.get("clusters")
    entries = [("gap", layer, nmf[layer]) for layer in ("0", "3", "6")]
    res = c.run(entries, c.params(k=4))
    assert SCHEMA["clusters"] <= set(res)
    json.dumps(res, allow_nan=False)
    assert res["pairs"] == [["gap", "0"], ["gap", "3"], ["gap", "6"]] and res["counts"] == [8, 16, 16]
    assert np.allclose(np.array(res["proportions"]).sum(1), 1.0)
    assert np.array(res["centroids"]).shape == (4, 3, 3, 3)
    assert res == c.run(entries, c.params(k=4))


# ---------------------------------------------------------------------------------------------
# planted structure


def conv_ctx(weight: torch.Tensor, **row_over) -> tuple[ModelContext, dict]:
    """A one-conv model with the given weight and its inventory row, made (and checked) by InventoryRow."""
    N, C, kh, kw = weight.shape
    conv = nn.Conv2d(C, N, (kh, kw), bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    module = nn.Sequential(conv)
    row = InventoryRow.as_written({
        "name": "0", "index": 0, "type": "conv", "class": "Conv2d", "weight_shape": [N, C, kh, kw],
        "in_channels": C, "out_channels": N, "kernel": [kh, kw], "stride": [1, 1], "padding": [0, 0],
        "pads": [0, 0, 0, 0], "dilation": [1, 1], "groups": 1, "padding_mode": "zeros", "depthwise": False,
        "input_size": [8, 8], "output_size": [8 - kh + 1, 8 - kw + 1], "feeds_from": None, "follows": None,
        "uneven_padding": False, "uneven_detail": {"top": 0, "bottom": 0, "left": 0, "right": 0},
        "flatten_from": None, "params": weight.numel(), **row_over}).public()
    return ModelContext("planted", module, [row], SHA, torch.device("cpu")), row


def run_one(name: str, weight: torch.Tensor, **params):
    ctx, row = conv_ctx(weight)
    a = ANALYSES.get(name)
    return a.run(ctx, [row], a.params(**params))["0"]


def test_symmetric_kernel_scores_one():
    K = torch.tensor([[1.0, 2.0, 1.0], [2.0, 5.0, 2.0], [1.0, 2.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    W = K * torch.rand(6, 4, 1, 1, generator=g)
    res = run_one("symmetry", W)
    assert abs(res["score"] - 1.0) < 1e-6
    assert all(abs(d) < 1e-6 for d in res["distances"].values())


def test_corner_impulse_scores_low():
    K = torch.zeros(3, 3)
    K[0, 0] = 1.0
    S, dist = symmetry_score(K)
    # the main-diagonal reflection keeps the corner; the 6 others move it: distance sqrt(2) each
    assert dist["transpose"] == 0.0 and all(abs(dist[t] - math.sqrt(2)) < 1e-9 for t in dist if t != "transpose")
    assert abs(S - (1 - 6 * math.sqrt(2) / 14)) < 1e-9 and S < 0.5


def test_symmetry_transform_conventions():
    K = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # top centre
    _, dist = symmetry_score(K)
    assert dist["flip_h"] == 0.0 and dist["flip_v"] > 1  # left-right mirror keeps the top centre
    K = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # mirror images across the anti-diagonal
    _, dist = symmetry_score(K)
    assert dist["antitranspose"] == 0.0 and dist["transpose"] > 1 and dist["rot180"] > 1
    K = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # middle left
    rot = torch.rot90(K, -1)  # clockwise: middle left -> top centre
    assert rot[0, 1] == 1.0
    from precompute.analyses.symmetry import transform
    assert torch.equal(transform(K, "rot90"), rot) and torch.equal(transform(transform(K, "rot90"), "rot270"), K)


def test_symmetry_non_square_and_degenerate():
    S, dist = symmetry_score(torch.tensor([[1.0, 2.0, 1.0]]))
    assert abs(S - 1) < 1e-12 and dist["rot90"] is None and dist["transpose"] is None and dist["flip_h"] == 0
    S, dist = symmetry_score(torch.tensor([[1.0, 0.0, 0.0]]))
    assert 0 < S < 1 and dist["flip_v"] == 0.0
    S, dist = symmetry_score(torch.zeros(3, 3))
    assert S is None and all(v is None for v in dist.values())
    res = run_one("symmetry", torch.zeros(2, 2, 3, 3))
    assert res["score"] is None and ANALYSES.get("symmetry").scalars(res) == {}
    json.dumps(res, allow_nan=False)


def test_symmetry_flags_from_row():
    ctx, row = conv_ctx(torch.randn(4, 2, 3, 3), stride=[2, 2], uneven_padding=True)
    res = ANALYSES.get("symmetry").run(ctx, [row], ANALYSES.get("symmetry").params())["0"]
    assert res["strided"] is True and res["uneven_padding"] is True


def banded_weight(direction: str, N=64, C=16, k=3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if direction == "horizontal":  # constant along x: each row of the kernel is one value
        return torch.randn(N, C, k, 1, generator=g).expand(N, C, k, k).contiguous()
    if direction == "vertical":
        return torch.randn(N, C, 1, k, generator=g).expand(N, C, k, k).contiguous()
    return torch.randn(N, C, k, k, generator=g)


@pytest.mark.parametrize("k", [3, 5])
def test_banding_index_planted(k):
    h = run_one("nmf", banded_weight("horizontal", k=k))["banding_index"]
    v = run_one("nmf", banded_weight("vertical", k=k))["banding_index"]
    r = run_one("nmf", banded_weight("random", N=256, k=k))["banding_index"]
    assert h > 0.9 and v < -0.9 and abs(r) < 0.2, (h, v, r)


def test_nmf_result_planted_layer():
    res = run_one("nmf", banded_weight("horizontal"))
    img = np.array(res["images"])
    assert img.shape == (64, 3, 3, 3) and res["kernel"] == [3, 3] and res["rank"] == 3
    assert np.allclose(img, img[:, :, :1, :], atol=1e-3)  # every image constant along x
    energy = banded_weight("horizontal").flatten(1).norm(dim=1)
    assert np.allclose(res["energy"], energy.numpy(), rtol=1e-5)
    assert sorted(res["order"]) == list(range(64)) and isinstance(res["colour_rule"], str)


def test_svd_rank_two():
    g = torch.Generator().manual_seed(0)
    a, b, c, d = (torch.rand(n, generator=g) for n in (12, 10, 12, 10))
    M = torch.outer(a, b) + torch.outer(c, d)
    signs = torch.randint(0, 2, (12, 10, 3, 3), generator=g) * 2 - 1.0
    W = M[:, :, None, None] / 9 * signs  # |W| summed over the 9 positions is M
    assert torch.allclose(connection_matrix(W), M, atol=1e-6)
    s = svd_of(M, 8)["singular_values"].numpy()
    assert s.shape == (8,) and s[1] > 1e-3 * s[0]
    res = svd_of(M, 8)
    u, v = res["u"].numpy(), res["v"].numpy()
    assert np.allclose(u[:, :2].T @ u[:, :2], np.eye(2), atol=1e-6) and np.allclose(v[:, :2].T @ v[:, :2], np.eye(2), atol=1e-6)
    assert np.all(s[2:] == 0) and np.all(u[:, 2:] == 0) and np.all(v[:, 2:] == 0)  # no arbitrary null-space basis
    assert u[:, 0].min() >= 0 and v[:, 0].min() >= 0  # first vector of a non-negative matrix: same sign
    assert np.allclose((u[:, :2] * s[:2]) @ v[:, :2].T, M.double().numpy(), atol=1e-6)
    evr = res["pca"]["explained_variance_ratio"].numpy()
    assert abs(evr.sum() - 1) < 1e-6 and np.all(np.diff(evr) <= 1e-12)  # centred: rank <= 2, all variance in k


@pytest.mark.parametrize("shape", [(12, 10), (10, 12), (64, 3), (40, 40)])
def test_top_svd_backends_agree(shape):
    """The CUDA path (torch.linalg.eigh on the device) and the CPU path (scipy, top k only) give the same
    leading triplets, up to the sign of each pair, on a full-rank and on a rank-2 matrix."""
    from precompute.analyses.svd import top_svd

    g = torch.Generator().manual_seed(1)
    full = torch.rand(*shape, generator=g, dtype=torch.float64)
    low = torch.outer(torch.rand(shape[0], generator=g, dtype=torch.float64),
                      torch.rand(shape[1], generator=g, dtype=torch.float64)) * 3 + torch.outer(
        torch.rand(shape[0], generator=g, dtype=torch.float64), torch.rand(shape[1], generator=g, dtype=torch.float64))
    for M in (full, low):
        Ut, St, Vt = top_svd(M, 8, backend="torch")
        Us, Ss, Vs = top_svd(M, 8, backend="scipy")
        ref = torch.linalg.svdvals(M)[:St.numel()]
        assert torch.allclose(St, Ss, rtol=1e-9, atol=1e-9)
        assert torch.allclose(St[St > 0], ref[St > 0], rtol=1e-7)
        ok = St > 0
        sign = (Ut[:, ok] * Us[:, ok]).sum(0).sign()
        assert torch.allclose(Ut[:, ok] * sign, Us[:, ok], atol=1e-6) and torch.allclose(Vt[:, ok] * sign, Vs[:, ok], atol=1e-6)
        assert torch.all(Ut[:, ~ok] == 0) and torch.all(Us[:, ~ok] == 0)
    with pytest.raises(ValueError, match="backend must be"):
        top_svd(full, 2, backend="numpy")


def test_svd_grouped_block_diagonal():
    W = torch.ones(4, 3, 3, 3)  # 4 neurons, groups 2: each sees 3 of the 6 feeder channels
    M = connection_matrix(W, groups=2)
    expect = torch.zeros(4, 6)
    expect[:2, :3] = 9
    expect[2:, 3:] = 9
    assert torch.equal(M, expect)
    assert torch.equal(connection_matrix(torch.ones(4, 1, 3, 3), groups=4), 9 * torch.eye(4))  # depthwise


def test_svd_flatten_linear():
    W = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 12) - 5
    M = connection_matrix(W, flatten_from=[3, 2, 2])
    assert torch.allclose(M, W.abs().reshape(2, 3, 4).sum(2))


def test_svd_feeder_properties_planted():
    """An RGB feeder with 2 grey and 2 colour filters under a grouped conv (2 branches): colourfulness 0 for
    the grey ones, the branch index of each feeder neuron, and the norm always; the default (the old
    ``feeder_property``) is colourfulness with the branches beside it."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3, groups=2), nn.ReLU(),
                        nn.Conv2d(6, 5, 1)).eval()
    with torch.no_grad():
        grey = torch.randn(2, 1, 3, 3).expand(2, 3, 3, 3)
        colour = torch.randn(2, 3, 3, 3)
        colour -= colour.mean(1, keepdim=True)  # channels sum to zero: colour-opponent
        net[0].weight.copy_(torch.cat([grey, colour]))
    res, rows = run_all(ANALYSES.get("svd"), make_ctx(net, (3, 12, 12), "planted"))
    assert [r["name"] for r in rows] == ["2", "4"]
    props = res["2"]["feeder_properties"]
    assert list(props) == ["colourfulness", "branch", "frequency", "orientation", "norm"]  # "0" reads the image
    c = props["colourfulness"]
    assert abs(c[0]) < 1e-6 and abs(c[1]) < 1e-6 and min(c[2:]) > 0.3, c
    assert props["branch"] == [0, 0, 1, 1]
    assert np.allclose(props["norm"], net[0].weight.detach().flatten(1).norm(dim=1).numpy(), rtol=1e-5)
    assert res["2"]["feeder_property"] == {"name": "colourfulness", "values": c, "branch": [0, 0, 1, 1]}
    # the 1x1 conv fed by the grouped conv: branches of its (grouped) feeder, and the norm
    props = res["4"]["feeder_properties"]
    assert list(props) == ["branch", "norm"] and props["branch"] == [0, 0, 0, 1, 1, 1]
    assert np.allclose(props["norm"], net[2].weight.detach().flatten(1).norm(dim=1).numpy(), rtol=1e-5)
    assert res["4"]["feeder_property"] == {"name": "branch", "values": [0, 0, 0, 1, 1, 1]}
    # a plain (ungrouped, not RGB) feeder: the norm only, which is also the default
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3), nn.Conv2d(6, 2, 3)).eval()
    res, _ = run_all(ANALYSES.get("svd"), make_ctx(plain, (3, 12, 12), "plain"))
    assert list(res["2"]["feeder_properties"]) == ["norm"]
    assert res["2"]["feeder_property"] == {"name": "norm", "values": res["2"]["feeder_properties"]["norm"]}
    assert list(res["1"]["feeder_properties"]) == ["colourfulness", "frequency", "orientation", "norm"]


def test_colourfulness():
    grey = torch.randn(1, 1, 5, 5).expand(1, 3, 5, 5)
    opp = torch.stack([torch.ones(5, 5), -torch.ones(5, 5), torch.zeros(5, 5)])[None]
    val = colourfulness(torch.cat([grey, opp, torch.zeros(1, 3, 5, 5)]))
    assert abs(val[0]) < 1e-6 and abs(val[1] - 1) < 1e-6 and val[2] == 0


def test_histogram_counts_and_stats():
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(10000, generator=g) * 0.15, torch.tensor([0.0, 0.0, -3.0, 2.5, 1.0, -1.0])])
    p = HistogramParams()
    res = weight_histogram(w, p)
    n = w.numel()
    assert res["numel"] == n
    assert sum(res["counts"]) + res["underflow"] + res["overflow"] == n
    assert sum(res["log_counts"]) + res["log_underflow"] + res["log_overflow"] == n
    assert res["underflow"] == 1 and res["overflow"] == 1 and res["log_underflow"] >= 2
    assert res["counts"][-1] >= 1  # w == hi falls in the last bin
    assert len(res["edges"]) == p.bins + 1 and len(res["log_edges"]) == p.log_bins + 1
    x = w.double().numpy()
    from scipy.stats import kurtosis
    assert abs(res["mean"] - x.mean()) < 1e-12 and abs(res["std"] - x.std()) < 1e-12
    assert abs(res["kurtosis"] - kurtosis(x)) < 1e-9
    assert res["near_zero"] == pytest.approx(np.mean(np.abs(x) < 0.01 * np.abs(x).max()))


def test_histogram_top10_and_near_zero_exact():
    w = torch.arange(1, 101, dtype=torch.float32)  # top 10 % = 91..100
    res = weight_histogram(w, HistogramParams(near_zero=0.05))
    assert res["top10_l1_share"] == pytest.approx(955 / 5050)
    assert res["near_zero"] == pytest.approx(0.04)  # 1..4 < 0.05 * 100
    ties = weight_histogram(torch.ones(95), HistogramParams())  # ceil(9.5) = 10 of 95 equal weights
    assert ties["top10_l1_share"] == pytest.approx(10 / 95) and ties["kurtosis"] is None


@pytest.mark.parametrize("n", [3, 7, 4096, (1 << 22) + 5])
def test_histogram_chunked_top10_is_the_whole_layer_formula(n):
    """Issue 18 (big models): the k-th largest |w| (a radix selection over chunks) and the mass above it
    are exactly, to the last bit, what kthvalue and a mask over a copy of the whole layer give."""
    g = torch.Generator().manual_seed(n)
    w = torch.randn(n, generator=g) * 0.05
    w[::13] = 0.0  # ties at zero
    w[5::17] = 3.0  # ties at the top
    w[7::19] = 1e-42  # denormals
    a = w.abs().float()
    k = max(1, math.ceil(0.1 * n))
    thr = float(torch.kthvalue(a, n - k + 1).values)
    sel = a > thr
    share = (float(a[sel].double().sum()) + (k - int(sel.sum())) * thr) / float(a.double().sum())
    res = weight_histogram(w, HistogramParams())
    assert kth_smallest_abs(w, n - k + 1) == thr
    assert res["max_abs"] == float(a.max())
    assert res["top10_l1_share"] == pytest.approx(share, rel=1e-12, abs=0)


def test_histogram_max_abs_of_zeros_is_plus_zero():
    """max |w| comes from each block's min and max (no |w| copy): a layer of (negative) zeros still gives +0.0."""
    for w in (torch.zeros(10), -torch.zeros(10)):
        assert math.copysign(1.0, weight_histogram(w, HistogramParams())["max_abs"]) == 1.0
    assert weight_histogram(torch.tensor([0.5, -3.0, 2.0]), HistogramParams())["max_abs"] == 3.0


@pytest.mark.parametrize("n", [1, 5, 4097, 65_537, (1 << 22) + 5, 10_276_045])
def test_float32_summed_in_float64_is_the_float64_copys_sum(n):
    """Issue 18 (big models): the histogram keeps the weights above the top-10 % threshold in float32 and sums
    them with ``sum(dtype=float64)``; that is the sum of their float64 copy to the last bit (the cached
    ``top10_l1_share`` did not change when the buffer went from float64 to float32)."""
    a = torch.rand(n, generator=torch.Generator().manual_seed(n)) * 3.0
    assert float(a.sum(dtype=torch.float64)) == float(a.double().sum())


def test_kth_smallest_abs_every_rank_with_ties_zeros_and_inf():
    w = torch.tensor([0.0, -0.0, 1.0, -1.0, 2.5, float("inf"), -float("inf"), 1e-45, 3.0, -2.5, 0.5])
    for r in range(1, w.numel() + 1):
        assert kth_smallest_abs(w, r) == float(torch.kthvalue(w.abs(), r).values), r
    with pytest.raises(ValueError, match="rank must be in 1..11; got 12"):
        kth_smallest_abs(w, 12)


def test_fc_spatial_and_svd_by_blocks_of_rows_equal_the_whole_layer():
    """fc-spatial and the SVD's connection matrix take a linear layer a block of rows at a time (no copy
    of a 100M-weight layer): the connection matrix is the same to the bit, the position means to 1e-15
    (float64 summed in another order), hence the same 6 significant digits in the results."""
    C, H, W, out = 8, 7, 7, 200
    w = torch.randn(out, C * H * W, generator=torch.Generator().manual_seed(0))
    assert torch.equal(connection_matrix(w, flatten_from=[C, H, W]), w.abs().reshape(out, C, H * W).sum(2))
    whole = w.abs().reshape(out, C, H, W).double().mean(dim=(0, 1))
    blocks = position_mean_abs(w, C, H, W)
    assert torch.allclose(blocks, whole, rtol=1e-14, atol=0)
    assert to_list(blocks) == to_list(whole)


def test_nmf_batches_do_not_change_results():
    """NMF solves its neurons in batches of a bounded size (the CPU's is small, for memory): a batch that
    splits a layer or spans two gives the same images, errors, order and banding index to the bit."""
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(40, 16, 3, 3, generator=g), "b": torch.randn(24, 16, 3, 3, generator=g)}
    one = nmf_layers(weights, max_batch_elems=2 ** 24)
    per = 3 * 3 * 2 * 16
    for budget in (per * 7, per * 50):  # 7 neurons a batch; a batch across the two layers
        other = nmf_layers(weights, max_batch_elems=budget)
        for name in weights:
            assert torch.equal(one[name].images, other[name].images)
            assert torch.equal(one[name].error, other[name].error)
            assert torch.equal(one[name].energy, other[name].energy)
            assert list(one[name].order) == list(other[name].order)
            assert one[name].banding_index == other[name].banding_index


def test_histogram_edges_shared():
    a = weight_histogram(torch.randn(100), HistogramParams())
    b = weight_histogram(torch.randn(50, 3, 3, 3) * 0.01, HistogramParams())
    assert a["edges"] == b["edges"] and a["log_edges"] == b["log_edges"]


def test_batchnorm_fractions_exact():
    bn = nn.BatchNorm2d(10)
    gamma = torch.tensor([0.001, -0.005, 0.02, -0.04, 0.07, 0.2, 1.0, -0.5, 0.0999, 0.05])
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(torch.arange(10.0))
    row = {"name": "0", "type": "batchnorm", "follows": "conv", "out_channels": 10, "in_channels": 10}
    ctx = ModelContext("bn", nn.Sequential(bn), [row], SHA, torch.device("cpu"))
    res = ANALYSES.get("batchnorm").run(ctx, [row], ANALYSES.get("batchnorm").params())["0"]
    assert res["frac_below"] == {"0.01": 0.2, "0.05": 0.4, "0.1": 0.7}  # 0.05 itself is not below 0.05
    assert res["follows"] == "conv" and res["beta"] == list(np.arange(10.0))
    assert np.allclose(res["gamma"], gamma.numpy())
    assert ANALYSES.get("batchnorm").scalars(res)["gamma_below_0.1"] == 0.7


def test_fc_spatial_planted_y():
    C, H, W = 4, 5, 6
    g = torch.Generator().manual_seed(0)
    y = torch.arange(1, H + 1, dtype=torch.float32)[None, None, :, None]
    w = (y * torch.sign(torch.randn(7, C, H, W, generator=g))).reshape(7, -1)
    lin = nn.Linear(C * H * W, 7)
    with torch.no_grad():
        lin.weight.copy_(w)
    row = {"name": "0", "type": "linear", "flatten_from": [C, H, W], "in_channels": C * H * W, "out_channels": 7}
    ctx = ModelContext("fc", nn.Sequential(lin), [row], SHA, torch.device("cpu"))
    res = ANALYSES.get("fc-spatial").run(ctx, [row], ANALYSES.get("fc-spatial").params())["0"]
    assert np.all(np.diff(res["by_y"]) > 0.99) and np.allclose(res["by_y"], np.arange(1, H + 1))
    assert np.allclose(res["by_x"], 3.0) and np.array(res["map"]).shape == (H, W)


def planted_images(kind: int, n: int, rng) -> np.ndarray:
    """n noisy 3x3 RGB images of one of 4 types (bands at top / middle / bottom, a vertical band)."""
    base = np.zeros((3, 3, 3))
    if kind < 3:
        base[kind, :, kind] = 1.0
    else:
        base[:, 1, 0] = 1.0
    imgs = np.clip(base[None] + 0.1 * rng.random((n, 3, 3, 3)), 0, None)
    return imgs / imgs.reshape(n, -1).max(1)[:, None, None, None]


def test_clusters_recover_planted_groups():
    rng = np.random.default_rng(0)
    a = np.concatenate([planted_images(0, 30, rng), planted_images(1, 10, rng)])
    b = np.concatenate([planted_images(2, 20, rng), planted_images(3, 20, rng)])
    entries = [("m1", "l1", {"images": a.tolist()}), ("m2", "l2", {"images": b.tolist()})]
    res = compute_clusters(entries, k=4, seed=0)
    la, lb = np.array(res["labels"][0]), np.array(res["labels"][1])
    groups = [la[:30], la[30:], lb[:20], lb[20:]]
    assert all(len(set(g)) == 1 for g in groups)  # each planted group is one cluster
    assert len({g[0] for g in groups}) == 4  # and the four are different
    assert sorted(np.array(res["proportions"])[0].tolist()) == [0, 0, 0.25, 0.75]
    assert sorted(np.array(res["proportions"])[1].tolist()) == [0, 0, 0.5, 0.5]
    assert res["counts"] == [40, 40] and res["labels"][0][0] == 0  # largest cluster first
    cen = np.array(res["centroids"])[la[0]]
    assert cen[0, :, 0].min() > 0.9 and cen[2].max() < 0.2


def test_clusters_sizes_must_match():
    rng = np.random.default_rng(0)
    entries = [("m1", "conv3", {"images": planted_images(0, 10, rng).tolist()}),
               ("m2", "conv5", {"images": np.zeros((10, 5, 5, 3)).tolist()})]
    with pytest.raises(ValueError, match=r"m1/conv3: 3x3.*m2/conv5: 5x5"):
        compute_clusters(entries, k=4)
    with pytest.raises(ValueError, match="k must be <= the number of neurons"):
        compute_clusters(entries[:1], k=11)


def test_banding_index_sees_stripes_that_cancel_in_the_colour_sum():
    """The typical banded neuron: its three NMF factors are the three rows of the kernel. Their RGB
    image is a horizontal stripe in every colour, but the colours add up to a flat image, so an index
    computed on the sum over colours would read 0. Planted: each input channel excites one row."""
    g = torch.Generator().manual_seed(3)
    N, C, k = 32, 12, 3
    W = torch.zeros(N, C, k, k)
    scale = torch.rand(N, 1, generator=g) + 0.5
    for c in range(C):
        W[:, c, c % k, :] = scale  # channel c lives on row c % 3, flat along x; rows of equal strength
    res = run_one("nmf", W)
    img = np.array(res["images"])
    assert np.allclose(img.sum(-1), img.sum(-1)[:, :1, :1], atol=0.05)  # the colour sum is ~flat...
    assert res["banding_index"] > 0.9, res["banding_index"]  # ...yet the layer is banded
    assert run_one("nmf", W.transpose(2, 3).contiguous())["banding_index"] < -0.9


@pytest.mark.parametrize("name", [n for n, a in ANALYSES.items() if a.scope == "layer"])
def test_every_layer_analysis_runs_under_the_base_class_thread_limit(name, monkeypatch):
    """run -> thread limit -> _run is written once, in the base class: no analysis overrides run, and
    _run sees the analysis' declared thread count on the CPU (0: torch's own setting)."""
    from precompute.analyses.base import Analysis

    a = ANALYSES.get(name)
    assert type(a).run is Analysis.run, f"{name} overrides run; put its work in _run"
    seen = []
    monkeypatch.setattr(type(a), "_run", lambda self, ctx, rows, params: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ctx = make_ctx(nn.Sequential(nn.Conv2d(3, 4, 3)))
        a.run(ctx, [], a.params())
        assert seen == [a.threads or 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", [n for n, a in ANALYSES.items() if a.scope == "layer"])
def test_scalar_keys_are_the_declared_ones(name, contexts):
    """The server reads the model record's scalars by the keys of precompute/declarations/analyses.py."""
    from precompute.declarations.analyses import ANALYSES as DECLARED

    a = ANALYSES.get(name)
    keys = set()
    for ctx in contexts:
        results, _ = run_all(a, ctx)
        for res in results.values():
            keys |= set(a.scalars(res))
    assert keys <= set(DECLARED.get(name).scalars), (name, sorted(keys))
    assert bool(keys) == bool(DECLARED.get(name).scalars) or name == "batchnorm", (name, sorted(keys))

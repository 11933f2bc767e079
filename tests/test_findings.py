"""The findings rankings (server/findings.py) on planted records, and the human layer names
(server/layernames.py): pure functions, no cache, no server."""

from __future__ import annotations

import math

import pytest

from precompute.declarations.records import RECORD_FORMAT, TrainingRun
from server.findings import colour_axis, compute_findings, gamma_share, rgb_svd_layer, symmetry_baseline, twins
from server.layernames import human_names


def conv(name, index, stride=1, in_ch=8, out=8, feeds=None, kernel=3, uneven=False):
    return {"name": name, "index": index, "type": "conv", "stride": [stride, stride], "in_channels": in_ch,
            "out_channels": out, "feeds_from": feeds, "kernel": [kernel, kernel], "uneven_padding": uneven,
            "weight_shape": [out, in_ch, kernel, kernel]}


def bn(name, index, follows, n):
    return {"name": name, "index": index, "type": "batchnorm", "follows": follows, "weight_shape": [n]}


def record(name, family="real", arch="net", extra=None, inventory=(), scalars=None, svd_layers=()):
    return {"name": name, "spec": {"family": family, "arch": arch, "extra": extra or {}},
            "inventory": list(inventory), "scalars": scalars or {},
            "analyses": {"svd": {"layers": list(svd_layers)}}}


def run(experiment, variant):
    """A variant's run record as the zoo puts it in spec.extra (the server reads it as a TrainingRun)."""
    return TrainingRun(format=RECORD_FORMAT, model=f"{experiment}-{variant}", experiment=experiment, variant=variant,
                       arch="net", arch_kwargs={}, dataset="planted", input_size=[3, 8, 8]).public()


def net(name, family, sym, band, gammas=None, extra=None):
    """Four convs (c0 RGB stem, c1, c2 strided, c3) with given S and banding index, two BN layers."""
    inv = [conv("c0", 0, in_ch=3), conv("c1", 1, feeds="c0"), conv("c2", 2, stride=2, feeds="c1", uneven=True),
           conv("c3", 3, feeds="c2"), bn("b1", 4, "c1", 100), bn("b3", 5, "c3", 300)]
    sc = {f"c{i}": {"symmetry": s, "banding_index": b} for i, (s, b) in enumerate(zip(sym, band))}
    for layer, g in (gammas or {}).items():
        sc[layer] = {"gamma_below_0.01": g[0], "gamma_below_0.1": g[1]}
    return record(name, family, "net", extra, inv, sc, svd_layers=["c1"])


@pytest.fixture
def zoo():
    trained = net("m", "real", sym=[0.3, 0.9, 0.5, 0.8], band=[0.0, 0.1, 0.3, 0.7],
                  gammas={"b1": (0.5, 0.6), "b3": (0.1, 0.2)})
    twin = net("m-random", "random", sym=[0.3, 0.5, 0.45, 0.5], band=[0.05, -0.2, 0.01, 0.02],
               gammas={"b1": (0.0, 0.0), "b3": (0.0, 0.0)}, extra={"twin_of": "m"})
    variant = net("exp-a", "variant", sym=[0.3, 0.6, 0.6, 0.6], band=[0, 0, 0, -0.5], extra=run("exp", "a"))
    variant_random = net("exp-random", "variant", sym=[0.3, 0.5, 0.5, 0.5], band=[0, 0, 0, 0.1],
                         extra=run("exp", "random"))
    return {r["name"]: r for r in (trained, twin, variant, variant_random)}


def test_twins_pairs_real_models_and_variants(zoo):
    assert twins(zoo) == {"m": "m-random", "exp-a": "exp-random"}


def test_banding_ranking_and_the_measured_noise_floor(zoo):
    f = compute_findings(zoo)
    rows = f["banding"]
    assert [r["value"] for r in rows] == sorted((r["value"] for r in rows), reverse=True)
    top = rows[0]
    assert (top["model"], top["layer"], top["value"], top["twin_value"]) == ("m", "c3", 0.7, 0.02)
    # the noise floor is the largest |index| of an untrained model's layer: m-random c1 (-0.2)
    assert f["thresholds"]["banding_noise_floor"] == pytest.approx(0.2)
    banded = {(r["model"], r["layer"]) for r in rows if r["banded"]}
    assert banded == {("m", "c3"), ("m", "c2"), ("exp-a", "c3")}  # |-0.5| > 0.2 counts: vertical bands
    assert f["counts"]["banded"] == 3
    assert all(not r["banded"] for r in rows if r["untrained"])
    assert top["url"] == "/models/m/layers/c3#fig-grid"


def test_symmetry_drop_is_against_the_unstrided_mean_after_the_first_conv(zoo):
    f = compute_findings(zoo)
    assert symmetry_baseline(zoo["m"]) == pytest.approx((0.9 + 0.8) / 2)  # c0 (pixels) and c2 (strided) left out
    row = next(r for r in f["symmetry_drops"] if r["model"] == "m")
    assert row["layer"] == "c2" and row["drop"] == pytest.approx(0.85 - 0.5)
    assert row["twin_drop"] == pytest.approx(0.5 - 0.45) and row["beyond_twin"] and row["uneven"]
    drops = [r["drop"] for r in f["symmetry_drops"]]
    assert drops == sorted(drops, reverse=True) and f["symmetry_drops"][0]["model"] == "m"


def test_gamma_share_is_channel_weighted(zoo):
    g = gamma_share(zoo["m"], "0.01")
    assert g["channels"] == 400 and g["share"] == pytest.approx((100 * 0.5 + 300 * 0.1) / 400) and g["count"] == 80
    rows = compute_findings(zoo)["gamma"]
    assert rows[0]["model"] == "m" and rows[0]["twin_share"] == 0.0
    assert rows[0]["share_loose"] == pytest.approx((100 * 0.6 + 300 * 0.2) / 400)


def _svd(colour, v, pv):
    return {"feeder": "c0", "feeder_properties": {"colourfulness": colour, "norm": [1.0] * len(colour)},
            "v": v, "pca": {"v": pv}}


def test_colour_axis_finds_the_component_that_follows_colourfulness(zoo):
    colour = [0.0, 0.1, 0.5, 0.9, 1.0, 0.3]
    v = [[1.0, -2 * c, 0.1 * (i % 2)] for i, c in enumerate(colour)]  # vector 1 is colour (r = -1)
    pv = [[0.1 * (i % 3), 0.2] for i in range(len(colour))]
    c = colour_axis("c1", _svd(colour, v, pv))
    assert (c["best_basis"], c["best_component"]) == ("svd", 1) and c["best"] == pytest.approx(1.0)
    assert c["corr_svd"][0] == 0.0 and c["filters"] == 6
    assert rgb_svd_layer(zoo["m"]) == "c1"
    noise = [[0.3, (-1) ** i * 0.2, 0.0] for i in range(len(colour))]
    f = compute_findings(zoo, {"m": ("c1", _svd(colour, v, pv)), "m-random": ("c1", _svd(colour, noise, pv))})
    row = next(r for r in f["colour_axis"] if r["model"] == "m")
    assert row["twin"] == "m-random" and row["twin_best"] < 0.5 < row["best"] and row["beyond_twin"]
    assert row["url"] == "/models/m/layers/c1?svd=svd&cx=1&cy=0&colour=colourfulness#fig-svd"


def test_twin_table_sets_each_trained_model_against_its_twin(zoo):
    rows = {r["model"]: r for r in compute_findings(zoo)["twins"]}
    assert set(rows) == {"m", "exp-a"}
    m = rows["m"]
    assert (m["banding_last"], m["twin_banding_last"]) == (0.7, 0.02)
    assert m["symmetry"] == pytest.approx(0.85) and m["twin_symmetry"] == pytest.approx(0.5)
    assert m["twin_url"] == "/models/m-random"


def test_findings_of_an_empty_zoo_are_empty():
    f = compute_findings({})
    assert f["banding"] == f["gamma"] == f["twins"] == [] and f["thresholds"]["banding_noise_floor"] is None


def test_nan_scalars_are_skipped(zoo):
    zoo["m"]["scalars"]["c3"]["banding_index"] = math.nan
    assert all(not (r["model"] == "m" and r["layer"] == "c3") for r in compute_findings(zoo)["banding"])


# ---- human layer names ----------------------------------------------------------------------------
def _vgg_inventory(prefix="", bn_after=False):
    rows, i, idx = [], 0, 0
    for block, n in enumerate((2, 2, 3, 3, 3)):
        for _ in range(n):
            rows.append(conv(f"{prefix}{i}", idx))
            idx += 1
            if bn_after:
                rows.append(bn(f"{prefix}{i + 1}", idx, f"{prefix}{i}", 8))
                idx += 1
                i += 1
            i += 2
        i += 1
    return rows


def test_vgg16_names():
    names = human_names("vgg16", _vgg_inventory())
    assert names["28"] == "conv5_3" and names["0"] == "conv1_1" and names["2"] == "conv1_2" and names["5"] == "conv2_1"
    assert len(names) == 13
    full = human_names("vgg16-full", _vgg_inventory("features.") + [
        {"name": f"classifier.{k}", "index": 20 + k, "type": "linear"} for k in (0, 3, 6)])
    assert full["features.28"] == "conv5_3" and full["classifier.6"] == "fc8"
    withbn = human_names("vgg16-bn", _vgg_inventory(bn_after=True))
    assert withbn["0"] == "conv1_1" and withbn["1"] == "conv1_1 BN"


def test_architectures_without_conventional_names_get_none():
    assert human_names("resnet20", [conv("layer1.0.conv1", 0)]) == {}
    assert human_names(None, []) == {}

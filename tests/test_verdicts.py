"""The experiment verdicts on planted numbers: each rule says reproduced, not reproduced or inconclusive exactly
where its threshold says, every seed must agree, and runs short of their plateau are named."""

from __future__ import annotations

import pytest

from server.verdicts import (INCONCLUSIVE, NOT_MEASURED, NOT_REPRODUCED, REPRODUCED, VERDICTS, experiment_verdicts)

PLATEAU = {"reached": True, "span": 0.2, "epochs": 3, "threshold": 0.5}


def _row(variant, band=None, *, seeds=(), plateau=PLATEAU, **kw):
    """A variant row as server/experiments.py makes it; band = (second-to-last, last) conv banding index."""
    b = [] if band is None else [{"layer": "conv5", "value": band[0]}, {"layer": "conv6", "value": band[1]}]
    row = {"variant": variant, "model": f"x-{variant}", "banding": b, "plateau": plateau,
           "profiles": {"banding": [{"layer": "conv6", "value": 0.01}], "symmetry": kw.pop("symmetry", [])},
           "seeds": [], **kw}
    row["seeds"] = [dict(_row(variant, s), model=f"x-{variant}-seed{i + 1}") for i, s in enumerate(seeds)]
    return row


def _by_effect(verdicts):
    return [v["verdict"] for v in verdicts]


def test_banding_reproduced_where_the_article_says():
    rows = [_row("baseline", (0.05, 0.3), seeds=[(0.06, 0.25), (0.0, 0.2)]), _row("rot90", (-0.05, -0.3)),
            _row("nogap", (0.01, 0.02)), _row("xpool", (0.2, 0.03)), _row("random", (0.01, 0.01))]
    v = experiment_verdicts("banding", rows)
    assert _by_effect(v) == [REPRODUCED] * 4
    assert v[0]["measured"] == "baseline conv6: +0.250 (3 seeds: +0.200 to +0.300)"
    assert v[0]["numbers"]["threshold"] == 0.1 and "untrained net" in v[0]["threshold"]
    assert not any(x["not_at_plateau"] for x in v)


def test_banding_seeds_must_agree_and_the_threshold_follows_the_noise_floor():
    rows = [_row("baseline", (0.0, 0.3), seeds=[(0.0, 0.05)]), _row("rot90", (0.0, 0.2)),
            _row("nogap", (0.0, 0.3)), _row("xpool", (0.01, 0.02))]
    v = experiment_verdicts("banding", rows)
    assert _by_effect(v) == [INCONCLUSIVE, NOT_REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE]
    # an untrained net with |index| 0.05 raises the bar to 3 x 0.05 = 0.15: 0.12 no longer counts
    noisy = _row("random", (0.0, 0.0))
    noisy["profiles"]["banding"] = [{"layer": "conv6", "value": -0.05}]
    v = experiment_verdicts("banding", [_row("baseline", (0.0, 0.12)), noisy])
    assert v[0]["verdict"] == NOT_REPRODUCED and v[0]["numbers"]["threshold"] == pytest.approx(0.15)
    # nogap without bands is only "no bands to remove" when the baseline has none either
    v = experiment_verdicts("banding", [_row("baseline", (0.0, 0.02)), _row("nogap", (0.0, 0.01))])
    assert v[2]["verdict"] == INCONCLUSIVE and v[3]["verdict"] == NOT_MEASURED


def test_runs_short_of_their_plateau_are_named():
    short = {"reached": False, "span": 1.4, "epochs": 3, "threshold": 0.5}
    v = experiment_verdicts("banding", [_row("baseline", (0.0, 0.3), plateau=short), _row("rot90", (0, -0.3))])
    assert v[0]["not_at_plateau"] == ["x-baseline"] and v[1]["not_at_plateau"] == []


def test_bnonly_rules():
    def row(v, gamma, dead, change, acc):
        return _row(v, **{"gamma_below_0.01": {"value": gamma, "source": "record"},
                          "dead_relu": {"fraction": dead}, "gamma_clamp": {"change": change}, "accuracy": acc})

    paper = [row("all", 0.04, 0.05, 0.0, 90.0), row("bn", 0.3, 0.3, -0.2, 60.0), row("bn-output", 0.3, 0.3, 0, 70.0)]
    assert _by_effect(experiment_verdicts("bnonly", paper)) == [REPRODUCED] * 4
    short = [row("all", 0.01, 0.01, 0.0, 67.5), row("bn", 0.012, 0.03, -0.02, 36.5), row("bn-output", 0.01, 0.02, 0, 55.5)]
    v = experiment_verdicts("bnonly", short)  # the 2-epoch runs of RESULTS.md
    assert _by_effect(v) == [NOT_REPRODUCED, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED]
    assert "|gamma| < 0.01: bn 1.2 %, all 1.0 %" == v[0]["measured"]


def test_symmetry_rules():
    def prof(*vals, strided=()):
        return [{"layer": f"c{i}", "value": x, "strided": i in strided} for i, x in enumerate(vals)]

    zero = _row("zeropad", symmetry=prof(0.5, 0.8, 0.8, 0.6, 0.8, 0.6, strided=(3, 5)), mean_symmetry=0.7)
    refl = _row("reflectpad", symmetry=prof(0.5, 0.8, 0.8, 0.79, 0.8, 0.78, strided=(3, 5)), mean_symmetry=0.75)
    odd = _row("oddsize", symmetry=prof(0.5, 0.8, 0.8, 0.62, 0.8, 0.6, strided=(3, 5)), mean_symmetry=0.7)
    rand = _row("random", symmetry=prof(0.4, 0.4, 0.4, 0.4, 0.4, 0.4, strided=(3, 5)), mean_symmetry=0.4)
    v = experiment_verdicts("symmetry", [zero, refl, odd, rand])
    assert _by_effect(v) == [REPRODUCED, REPRODUCED, REPRODUCED, NOT_REPRODUCED]
    assert v[1]["numbers"]["drop"] == [pytest.approx(0.2)]


def test_every_experiment_has_rules_and_branches_says_why_not():
    from precompute.declarations.experiments import EXPERIMENTS

    assert sorted(VERDICTS.names()) == sorted(EXPERIMENTS.names())
    sep, freq, colour = experiment_verdicts("branches", [_row("1"), _row("2")])
    assert colour["verdict"] == NOT_MEASURED and "grey" in colour["measured"]
    assert sep["verdict"] == freq["verdict"] == NOT_MEASURED  # rows without branch tests
    assert experiment_verdicts("nope", []) == []


def _tests(sep, freq):
    return {"separation": {"layer": "merge", "eta2": sep[0], "p": sep[1]},
            "frequency": {"layer": "first", "eta2": freq[0], "p": freq[1]}}


@pytest.mark.parametrize("two, four, expected", [
    ((0.6, 0.001), (0.5, 0.004), REPRODUCED),          # both significant and large
    ((0.6, 0.001), (0.2, 0.004), INCONCLUSIVE),        # significant but small in one
    ((0.6, 0.001), (0.5, 0.2), INCONCLUSIVE),          # one run does not show it
    ((0.15, 0.18), (0.23, 0.34), NOT_REPRODUCED),      # neither: p >= 0.05 everywhere
])
def test_branch_verdicts_from_the_tests(two, four, expected):
    rows = [_row("1"), _row("2", branch_tests=_tests(two, two)), _row("4", branch_tests=_tests(four, four))]
    sep, freq, _ = experiment_verdicts("branches", rows)
    assert sep["verdict"] == freq["verdict"] == expected
    assert f"η² {two[0]:.2f} (p = {two[1]:.3f})" in sep["measured"] and "(merge)" in sep["measured"]
    assert "(first)" in freq["measured"] and "1,000 label shuffles" in sep["threshold"]
    assert sep["numbers"]["separation_2"] == [list(two)]

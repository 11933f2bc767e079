"""What each paper predicts for an experiment, what convscope measured on its variants, and a verdict computed
from the numbers: ``reproduced``, ``not reproduced``, ``inconclusive`` or ``not measured``, with the threshold
it was judged by. Pure functions of the experiment page's variant rows (server/experiments.py
``variant_row``: headline numbers from the cache and the run records, plus ``seeds``: the same numbers for
the runs of other seeds), no I/O, no torch.

One verdict function per experiment, registered with :func:`verdicts_for`; each returns a list of
:class:`Verdict` dicts. Where several seeds exist a verdict needs every seed to agree ("reproduced" only if
each seed passes the threshold, "not reproduced" only if none does, else "inconclusive"), and the measured
figure is given as mean and range. Runs that did not reach their accuracy plateau are named in
``not_at_plateau`` wherever they enter a verdict.
"""

from __future__ import annotations

from statistics import mean
from typing import Callable, Optional, Sequence

from precompute.declarations.limits import BRANCH_PERMUTATIONS
from precompute.registry import Registry

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED = "reproduced", "not reproduced", "inconclusive", "not measured"

#: |banding index| above which a layer counts as banded (and at least BAND_OVER_RANDOM x the untrained net's)
BAND = 0.1
BAND_OVER_RANDOM = 3.0
#: symmetry: "far more symmetric than at initialisation" = mean S higher by at least this
SYM_GAIN = 0.1
#: a strided layer's S "drops" when it is below the unstrided layers' mean S by at least this
SYM_DROP = 0.1
#: ... and the drop is "removed" when it is below this
SYM_NO_DROP = 0.05
#: branches: a branch test counts when its permutation p value is below BRANCH_P and the branch explains at least
#: BRANCH_ETA2 of the variance (a large effect, not only a detectable one); p >= BRANCH_P_NONE is "no effect"
BRANCH_P = 0.01
BRANCH_ETA2 = 0.3
BRANCH_P_NONE = 0.05

Rows = dict[str, dict]  # variant -> variant row
VerdictFn = Callable[[Rows], list[dict]]
#: experiment -> its verdict function
VERDICTS: Registry[VerdictFn] = Registry("experiment verdict rule")


def verdicts_for(experiment: str) -> Callable[[VerdictFn], VerdictFn]:
    """Decorator: the verdict function of ``experiment``."""
    return VERDICTS.register(experiment)


def experiment_verdicts(experiment: str, rows: Sequence[dict]) -> list[dict]:
    """The verdicts of ``experiment`` over its variant rows ([] for an experiment without rules)."""
    return VERDICTS.get(experiment)({r["variant"]: r for r in rows}) if experiment in VERDICTS else []


# ---- helpers ------------------------------------------------------------------------------------------------
def _runs(row: Optional[dict]) -> list[dict]:
    """The row itself (seed 0) and its other seeds' rows."""
    return [] if row is None else [row] + list(row.get("seeds") or [])


def _values(row: Optional[dict], get: Callable[[dict], Optional[float]]) -> list[float]:
    return [v for v in (get(r) for r in _runs(row)) if v is not None]


def _fmt(values: Sequence[float], digits: int = 3, pct: bool = False, sign: bool = False) -> str:
    """``+0.196`` or ``+0.180 (3 seeds: +0.150 to +0.210)``."""
    def one(v):
        if pct:
            return f"{100 * v:.{max(digits - 2, 0)}f} %"
        return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"

    if not values:
        return "—"
    if len(values) == 1:
        return one(values[0])
    return f"{one(mean(values))} ({len(values)} seeds: {one(min(values))} to {one(max(values))})"


def _not_at_plateau(*rows: Optional[dict]) -> list[str]:
    out = []
    for row in rows:
        for r in _runs(row):
            p = r.get("plateau") or {}
            if p.get("reached") is not True and r.get("variant") != "random":
                out.append(r.get("model"))
    return out


def _verdict(effect: str, paper: str, measured: str, verdict: str, rule: str, rows=(), **numbers) -> dict:
    return {"effect": effect, "paper": paper, "measured": measured, "verdict": verdict, "threshold": rule,
            "not_at_plateau": _not_at_plateau(*rows), "numbers": numbers}


def _all_or_none(values: Sequence[float], passes: Callable[[float], bool]) -> str:
    if not values:
        return NOT_MEASURED
    ok = [passes(v) for v in values]
    return REPRODUCED if all(ok) else NOT_REPRODUCED if not any(ok) else INCONCLUSIVE


def _band(row: Optional[dict], which: int) -> Callable[[dict], Optional[float]]:
    """Banding index of the last (which=-1) or second-to-last (-2) conv layer with an NMF result."""
    def get(r: dict) -> Optional[float]:
        b = r.get("banding") or []
        return b[which]["value"] if len(b) >= -which else None

    return get


def _layer(row: Optional[dict], which: int) -> str:
    b = (row or {}).get("banding") or []
    return b[which]["layer"] if len(b) >= -which else "?"


# ---- weight banding -------------------------------------------------------------------------------------------
@verdicts_for("banding")
def banding(rows: Rows) -> list[dict]:
    base, rot, nogap, xpool, rand = (rows.get(v) for v in ("baseline", "rot90", "nogap", "xpool", "random"))
    floor = max((abs(p["value"]) for p in ((rand or {}).get("profiles") or {}).get("banding", [])), default=0.0)
    t = max(BAND, BAND_OVER_RANDOM * floor)
    floor_text = (f"{BAND_OVER_RANDOM:g}x the untrained net's largest |index| ({floor:.3f})" if rand is not None
                  else f"{BAND_OVER_RANDOM:g}x the untrained net's largest |index| (no untrained run here)")
    thr = f"|banding index| >= {t:.3f}: the larger of {BAND} and {floor_text}; with several seeds every seed must pass"
    last = _layer(base or rot, -1)
    before = _layer(base or rot, -2)
    out = []
    v = _values(base, _band(base, -1))
    out.append(_verdict(
        f"horizontal bands in the last conv layer ({last}) with global average pooling",
        "banding 'consistently forms in the final convolutional layer of vision models with global average pooling' "
        "(horizontal stripes; the article has no number)",
        f"baseline {last}: {_fmt(v, sign=True)}", _all_or_none(v, lambda x: x >= t), thr, (base,), values=v, threshold=t))
    v = _values(rot, _band(rot, -1))
    out.append(_verdict(
        f"vertical bands in {last} after rotating the inputs 90 degrees",
        "rotating the training images by 90 degrees turns the bands vertical",
        f"rot90 {last}: {_fmt(v, sign=True)}", _all_or_none(v, lambda x: x <= -t), thr, (rot,), values=v, threshold=t))
    v = _values(nogap, _band(nogap, -1))
    has_bands = bool(_values(base, _band(base, -1))) and all(x >= t for x in _values(base, _band(base, -1)))
    verdict = _all_or_none(v, lambda x: abs(x) < t)
    if verdict == REPRODUCED and not has_bands:
        verdict = INCONCLUSIVE  # nothing to remove: the baseline has no bands either
    out.append(_verdict(
        f"no bands in {last} without global average pooling (flatten, then linear)",
        "removing global average pooling removes the banding",
        f"nogap {last}: {_fmt(v, sign=True)}; baseline {_fmt(_values(base, _band(base, -1)), sign=True)}", verdict,
        thr + "; reproduced only where the baseline has bands", (nogap, base), values=v, threshold=t))
    vl, vb = _values(xpool, _band(xpool, -1)), _values(xpool, _band(xpool, -2))
    if not vl or not vb:
        verdict = NOT_MEASURED
    elif any(abs(x) >= t for x in vl):
        verdict = NOT_REPRODUCED if all(abs(x) >= t for x in vl) else INCONCLUSIVE
    elif all(abs(x) >= t for x in vb):
        verdict = REPRODUCED
    else:
        verdict = INCONCLUSIVE  # gone from the last layer, but not (clearly) present in the one before
    out.append(_verdict(
        f"pooling over x only removes the bands from {last} but not from {before}",
        "average pooling along x only (keeping y) removes banding from the last layer (5b) but not from 5a",
        f"xpool {last}: {_fmt(vl, sign=True)}; {before}: {_fmt(vb, sign=True)}", verdict,
        thr + f"; reproduced when {last} is below it and {before} above it", (xpool,), last=vl, before=vb,
        threshold=t))
    return out


# ---- training BatchNorm only -----------------------------------------------------------------------------------
def _gamma(r: dict) -> Optional[float]:
    g = r.get("gamma_below_0.01")
    return g.get("value") if isinstance(g, dict) else None


def _dead(r: dict) -> Optional[float]:
    d = r.get("dead_relu")
    return d.get("fraction") if isinstance(d, dict) else None


def _clamp(r: dict) -> Optional[float]:
    c = r.get("gamma_clamp")
    return c.get("change") if isinstance(c, dict) else None


def _share_against_all(bn: Sequence[float], allp: Sequence[float], beats_all: Callable[[float, float], bool]) -> str:
    """A share the paper puts high when only BatchNorm trains: reproduced when every bn seed is >= 20 % and
    ``beats_all(mean bn, mean all)``, not reproduced when every bn seed is < 10 %, else inconclusive."""
    if not bn or not allp:
        return NOT_MEASURED
    if all(x >= 0.2 for x in bn) and beats_all(mean(bn), mean(allp)):
        return REPRODUCED
    return NOT_REPRODUCED if all(x < 0.1 for x in bn) else INCONCLUSIVE


@verdicts_for("bnonly")
def bnonly(rows: Rows) -> list[dict]:
    bn, allp, bno = rows.get("bn"), rows.get("all"), rows.get("bn-output")
    out = []
    g_bn, g_all = _values(bn, _gamma), _values(allp, _gamma)
    verdict = _share_against_all(g_bn, g_all, lambda b, a: b >= 3 * a)
    out.append(_verdict(
        "training only BatchNorm leaves a large share of gammas near 0",
        "27 % to 33 % of |gamma| < 0.01 when only BatchNorm trains, 4 % to 5 % when everything trains",
        f"|gamma| < 0.01: bn {_fmt(g_bn, pct=True)}, all {_fmt(g_all, pct=True)}", verdict,
        "reproduced: bn >= 20 % and at least 3x all; not reproduced: bn < 10 %", (bn, allp), bn=g_bn, all=g_all))
    c, f = _values(bn, _clamp), _values(bn, _gamma)
    if not c:
        verdict = NOT_MEASURED
    elif any(x < -1.0 for x in c):
        verdict = NOT_REPRODUCED
    elif f and min(f) >= 0.05:
        verdict = REPRODUCED
    else:
        verdict = INCONCLUSIVE  # too few gammas near 0 for the test to mean anything
    out.append(_verdict(
        "setting those gammas to 0 keeps the accuracy",
        "clamping every |gamma| < 0.01 to 0 leaves the accuracy unchanged",
        f"bn: accuracy change {_fmt(c, digits=2, sign=True)} points with {_fmt(f, pct=True)} of the gammas set to 0",
        verdict, "reproduced: change >= -1 point with at least 5 % of the gammas clamped", (bn,), change=c, clamped=f))
    d_bn, d_all = _values(bn, _dead), _values(allp, _dead)
    verdict = _share_against_all(d_bn, d_all, lambda b, a: b > a)
    out.append(_verdict(
        "many ReLU channels are switched off when only BatchNorm trains",
        "28 % to 39 % of ReLU channels output 0 on more than 99 % of inputs (bn only), at most 10 % (CIFAR-10, all)",
        f"dead ReLU channels: bn {_fmt(d_bn, pct=True)}, all {_fmt(d_all, pct=True)}", verdict,
        "reproduced: bn >= 20 % and above all; not reproduced: bn < 10 %", (bn, allp), bn=d_bn, all=d_all))
    a_bn = _values(bn, lambda r: r.get("accuracy"))
    a_bno = _values(bno, lambda r: r.get("accuracy"))
    if not a_bn or not a_bno:
        verdict = NOT_MEASURED
    else:
        gain = mean(a_bno) - mean(a_bn)
        verdict = REPRODUCED if gain >= 2 else NOT_REPRODUCED if gain <= 0 else INCONCLUSIVE
    out.append(_verdict(
        "training the output layer too gains accuracy",
        "BatchNorm plus the output layer adds accuracy over BatchNorm alone (about 25 points top-5 on ImageNet)",
        f"test accuracy: bn-output {_fmt(a_bno, digits=2)} %, bn {_fmt(a_bn, digits=2)} %", verdict,
        "reproduced: at least 2 points more; not reproduced: no gain", (bn, bno), bn=a_bn, bn_output=a_bno))
    return out


# ---- symmetry of the mean kernel ---------------------------------------------------------------------------------
def _mean_s(r: dict) -> Optional[float]:
    return r.get("mean_symmetry")


def _drop(r: dict) -> Optional[float]:
    """Mean S of the unstrided conv layers after the first (which sees pixels) minus the mean S at the strided ones."""
    prof = (r.get("profiles") or {}).get("symmetry") or []
    plain = [p["value"] for p in prof[1:] if not p.get("strided")]
    strided = [p["value"] for p in prof if p.get("strided")]
    if not plain or not strided:
        return None
    return mean(plain) - mean(strided)


@verdicts_for("symmetry")
def symmetry(rows: Rows) -> list[dict]:
    zero, refl, odd, rand = (rows.get(v) for v in ("zeropad", "reflectpad", "oddsize", "random"))
    out = []
    s_t, s_r = _values(zero, _mean_s), _values(rand, _mean_s)
    if not s_t or not s_r:
        verdict = NOT_MEASURED
    else:
        gain = mean(s_t) - mean(s_r)
        verdict = REPRODUCED if min(s_t) - mean(s_r) >= SYM_GAIN else NOT_REPRODUCED if gain < 0.02 else INCONCLUSIVE
    out.append(_verdict(
        "trained mean kernels are far more symmetric than at initialisation",
        "the mean kernels of trained networks are close to symmetric under the square's symmetries; untrained ones are not",
        f"mean S over the conv layers: zeropad {_fmt(s_t)}, untrained {_fmt(s_r)}", verdict,
        f"reproduced: higher by at least {SYM_GAIN}; not reproduced: by less than 0.02", (zero,), trained=s_t,
        untrained=s_r))
    d0 = _values(zero, _drop)
    out.append(_verdict(
        "S drops at the strided layers that consume zero padding on one side",
        "strided layers (stride 2, 3x3, pad 1, even input: only the top/left padding is used) have less symmetric mean kernels",
        f"zeropad: unstrided minus strided mean S = {_fmt(d0, sign=True)}",
        _all_or_none(d0, lambda x: x >= SYM_DROP) if d0 else NOT_MEASURED,
        f"reproduced: a drop of at least {SYM_DROP}", (zero,), drop=d0))
    for row, name, how in ((refl, "reflectpad", "reflection padding"), (odd, "oddsize", "an odd input size")):
        d = _values(row, _drop)
        if not d or not d0:
            verdict = NOT_MEASURED
        elif all(x < SYM_NO_DROP for x in d):
            verdict = REPRODUCED if all(x >= SYM_DROP for x in d0) else INCONCLUSIVE  # no drop to remove
        elif all(x >= SYM_DROP for x in d):
            verdict = NOT_REPRODUCED
        else:
            verdict = INCONCLUSIVE
        out.append(_verdict(
            f"{how} removes the drop",
            f"with {how} every strided layer consumes its padding evenly, and the drop goes",
            f"{name}: drop {_fmt(d, sign=True)} (zeropad {_fmt(d0, sign=True)})", verdict,
            f"reproduced: drop below {SYM_NO_DROP} where zeropad's is at least {SYM_DROP}", (row, zero), drop=d,
            zeropad=d0))
    return out


# ---- branch specialisation ---------------------------------------------------------------------------------------
def _branch_test(key: str) -> Callable[[dict], Optional[tuple[float, float]]]:
    """(eta squared, p) of the variant row's branch test ``key`` ("separation" or "frequency")."""
    def get(r: dict) -> Optional[tuple[float, float]]:
        t = (r.get("branch_tests") or {}).get(key)
        return (t["eta2"], t["p"]) if t else None

    return get


def _branch_verdict(tests: dict[str, list[tuple[float, float]]]) -> str:
    """Reproduced when every branched run's test has p < BRANCH_P and eta squared >= BRANCH_ETA2; not
    reproduced when none has p < BRANCH_P_NONE; inconclusive between."""
    runs = [t for ts in tests.values() for t in ts]
    if not runs:
        return NOT_MEASURED
    if all(p < BRANCH_P and eta >= BRANCH_ETA2 for eta, p in runs):
        return REPRODUCED
    return NOT_REPRODUCED if all(p >= BRANCH_P_NONE for _, p in runs) else INCONCLUSIVE


def _branch_measured(tests: dict[str, list[tuple[float, float]]], rows: Rows, key: str) -> str:
    parts = []
    for variant, ts in tests.items():
        layer = ((rows[variant].get("branch_tests") or {}).get(key) or {}).get("layer", "?")
        parts.append(f"{variant} branches ({layer}): " + ", ".join(f"η² {eta:.2f} (p = {p:.3f})" for eta, p in ts))
    return "; ".join(parts) if parts else "—"


#: the branch tests judged: (key of the variant rows' branch_tests, effect, what the paper says, what is measured)
_BRANCH_EFFECTS = (
    ("separation", "the branches separate where they merge (SVD of |W| of the first layer that reads them all)",
     "neurons of different branches connect to different neurons of the next layer: in unbranched networks the "
     "leading singular vectors of |W| already split colour from black and white, then frequency",
     "largest share of a singular vector's variance between the branches"),
    ("frequency", "the branches specialise in spatial frequency (grey images: the image filters each branch reads)",
     "AlexNet-style splits: a high-frequency black-and-white branch and a low-frequency colour branch; with four "
     "branches, high-, mid- and low-frequency ones",
     "share of the stem filters' frequency variance between the branches that read them"),
)


@verdicts_for("branches")
def branches(rows: Rows) -> list[dict]:
    branched = {v: rows[v] for v in ("2", "4") if rows.get(v)}
    rule = (f"reproduced: every branched run p < {BRANCH_P} ({BRANCH_PERMUTATIONS:,} label shuffles) and "
            f"η² >= {BRANCH_ETA2}; not reproduced: every p >= {BRANCH_P_NONE}")
    out = []
    for key, effect, paper, what in _BRANCH_EFFECTS:
        tests = {v: _values(r, _branch_test(key)) for v, r in branched.items()}
        out.append(_verdict(effect, paper, f"{what}: {_branch_measured(tests, rows, key)}", _branch_verdict(tests),
                            rule, tuple(branched.values()),
                            **{f"{key}_{v}": [list(t) for t in ts] for v, ts in tests.items()}))
    out.append(_verdict(
        "the branches of a split layer specialise (colour vs black and white)",
        "in AlexNet-style two-branch networks one branch learns colour features, the other black-and-white ones",
        "not measured: the variants train on Fashion-MNIST, which is grey, and no RGB image dataset installs "
        "offline from PyPI or Debian here (CIFAR-10 needs a download: `convscope train branches --dataset "
        "cifar10 --download`)",
        NOT_MEASURED, "colour vs black and white needs RGB inputs", tuple(branched.values())))
    return out

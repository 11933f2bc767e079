"""What the zoo shows, ranked: one pure function over the cached model records (and, for the colour axis,
one SVD result per model). No I/O, no HTTP: :meth:`server.explorer.Explorer.findings_blob` gathers the inputs, the
routes serve the output. The measurements are those of ``benchmarks/findings.py`` (RESULTS.md quotes them):

- **banding**: every layer with a banding index (NMF), ranked by the index (+1 horizontal stripes);
  a layer is called banded when its index exceeds the largest |index| of any layer of any untrained
  (random-initialisation) model in the cache: the noise floor, measured, not chosen.
- **symmetry drops**: every strided conv after the first (which sees pixels) with a symmetry score S, ranked by its drop: the mean S of the
  model's unstrided convs after the first one, minus the layer's S. Set against the same layer of the
  model's random twin (a drop there comes from the architecture, not from training).
- **gamma**: models ranked by the share of all their BatchNorm channels with |gamma| < 0.01 (the
  paper's threshold; < 0.1 beside it), channel-weighted over layers.
- **colour axis**: per model, the first SVD pair fed by an RGB layer: |corr| between each RGB filter's
  colourfulness and its coordinate on singular vectors 0..3 and on centred components 0..3; ranked by
  the largest, against the twin's largest (chance correlations with few filters are large).
- **twins**: each trained model beside its random twin on those four numbers.

A model's random twin is the model whose spec names it (``extra.twin_of``); an experiment variant's is
its experiment's ``random`` variant. Untrained: family ``random`` or the variant ``random``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from precompute.declarations.experiments import RANDOM
from precompute.declarations.limits import GAMMA_OFF, GAMMA_THRESHOLDS

from .runs import run_of

#: the paper's threshold for a switched-off BatchNorm channel (and a looser one beside it)
GAMMA_LOOSE = GAMMA_THRESHOLDS[-1]
#: components of the SVD / PCA compared with the colourfulness
COLOUR_COMPONENTS = 4


def finite(v) -> Optional[float]:
    """``float(v)`` when it is a finite number, else None (records hold NaN, None and strings alike)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def is_untrained(rec: dict) -> bool:
    if (rec.get("spec") or {}).get("family") == "random":
        return True
    run = run_of(rec)
    return run is not None and run.variant == RANDOM


def twins(records: dict[str, dict]) -> dict[str, str]:
    """``{trained model: its random twin}`` for the models of ``records`` that have one there."""
    out = {}
    for name, rec in records.items():
        spec = rec.get("spec") or {}
        extra = spec.get("extra") or {}
        if spec.get("family") == "random" and extra.get("twin_of"):
            real = extra["twin_of"]
            # the twin of every trained model of its architecture (e.g. the four CIFAR ResNets share
            # resnet20-random... only where the architecture is the same, so each of them is named)
            for other, r2 in records.items():
                s2 = r2.get("spec") or {}
                if other == real or (s2.get("family") == "real" and s2.get("arch") == spec.get("arch")):
                    out.setdefault(other, name)
    for name, rec in records.items():
        run = run_of(rec)
        if run is not None and run.experiment and run.variant and run.variant != RANDOM \
                and f"{run.experiment}-{RANDOM}" in records:
            out[name] = f"{run.experiment}-{RANDOM}"
    return out


def _ordered(rec: dict) -> list[dict]:
    return sorted(rec.get("inventory", []), key=lambda r: r.get("index", 0))


def _strided(row: dict) -> bool:
    return any(int(x) > 1 for x in (row.get("stride") or [1]))


def _symmetry_rows(rec: dict) -> list[tuple[dict, float]]:
    sc = rec.get("scalars", {})
    return [(r, v) for r in _ordered(rec) if r.get("type") == "conv"
            and (v := finite(sc.get(r["name"], {}).get("symmetry"))) is not None]


def symmetry_baseline(rec: dict) -> Optional[float]:
    """Mean S of the unstrided convs after the first conv with a score (the first layer sees pixels)."""
    rows = _symmetry_rows(rec)[1:]
    vals = [v for r, v in rows if not _strided(r)]
    return sum(vals) / len(vals) if vals else None


def gamma_share(rec: dict, threshold: str) -> Optional[dict]:
    """Channel-weighted share of the model's BatchNorm channels with |gamma| < threshold."""
    sc = rec.get("scalars", {})
    num = den = 0.0
    for r in rec.get("inventory", []):
        v = finite(sc.get(r["name"], {}).get(f"gamma_below_{threshold}"))
        if r.get("type") != "batchnorm" or v is None:
            continue
        n = int((r.get("weight_shape") or [0])[0] or 0)
        den += n
        num += n * v
    return {"share": num / den, "channels": int(den), "count": int(round(num))} if den else None


def corr(a: list[float], b: list[float]) -> Optional[float]:
    n = len(a)
    if n < 3 or len(b) != n:
        return None
    ma, mb = sum(a) / n, sum(b) / n
    sa = math.sqrt(sum((x - ma) ** 2 for x in a))
    sb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb) if sa > 0 and sb > 0 else 0.0


def rgb_svd_layer(rec: dict) -> Optional[str]:
    """The first layer with an SVD result whose feeder is an RGB conv fed by the image (or None)."""
    rows = {r["name"]: r for r in rec.get("inventory", [])}
    have = set(rec.get("analyses", {}).get("svd", {}).get("layers", []))
    for r in _ordered(rec):
        f = rows.get(r.get("feeds_from") or "")
        if r["name"] in have and f and f.get("type") == "conv" and f.get("in_channels") == 3 and not f.get("feeds_from"):
            return r["name"]
    return None


def colour_axis(layer: str, svd: dict) -> Optional[dict]:
    """|corr(colourfulness, coordinate)| on singular vectors and centred components 0..3 of one SVD result."""
    props = svd.get("feeder_properties") or {}
    colour = props.get("colourfulness")
    if colour is None and (svd.get("feeder_property") or {}).get("name") == "colourfulness":
        colour = svd["feeder_property"].get("values")
    if not colour:
        return None

    def series(vectors):
        if not vectors:
            return []
        k = min(len(vectors[0]), COLOUR_COMPONENTS)
        return [abs(c) if (c := corr(colour, [row[i] for row in vectors])) is not None else None for i in range(k)]

    csvd = series(svd.get("v"))
    cpca = series((svd.get("pca") or {}).get("v"))
    cands = [("svd", i, c) for i, c in enumerate(csvd) if c is not None] + \
            [("pca", i, c) for i, c in enumerate(cpca) if c is not None]
    if not cands:
        return None
    basis, comp, best = max(cands, key=lambda t: t[2])
    return {"layer": layer, "feeder": svd.get("feeder"), "filters": len(colour), "corr_svd": csvd, "corr_pca": cpca,
            "best": best, "best_basis": basis, "best_component": comp}


def compute_findings(records: dict[str, dict], colour_svds: Optional[dict[str, tuple[str, dict]]] = None,
                     human: Optional[dict[str, dict[str, str]]] = None) -> dict[str, Any]:
    """The rankings of the findings view.

    records: ``{model: cached model record}`` (inventory, scalars, spec, analyses);
    colour_svds: ``{model: (layer, svd result data)}`` for the layer :func:`rgb_svd_layer` names;
    human: ``{model: {module path: human name}}``.
    Every row carries ``url``, the view that shows it.
    """
    colour_svds = colour_svds or {}
    human = human or {}
    twin_of = twins(records)
    fam = {m: (r.get("spec") or {}).get("family", "real") for m, r in records.items()}
    untrained = {m for m, r in records.items() if is_untrained(r)}

    def hname(m, l):
        return (human.get(m) or {}).get(l)

    # ---- banding ------------------------------------------------------------------------------------
    banding = []
    floor = None
    for m, rec in records.items():
        sc = rec.get("scalars", {})
        convs = [r for r in _ordered(rec) if r.get("type") == "conv"]
        for i, r in enumerate(convs):
            v = finite(sc.get(r["name"], {}).get("banding_index"))
            if v is None:
                continue
            if m in untrained:
                floor = abs(v) if floor is None else max(floor, abs(v))
            t = twin_of.get(m)
            tv = finite(records[t].get("scalars", {}).get(r["name"], {}).get("banding_index")) if t else None
            banding.append({"model": m, "family": fam[m], "untrained": m in untrained, "layer": r["name"],
                            "human": hname(m, r["name"]), "value": v, "depth": i / (len(convs) - 1) if len(convs) > 1 else 0.0,
                            "nmf_error": finite(sc.get(r["name"], {}).get("nmf_error")),
                            "twin": t, "twin_value": tv,
                            "url": f"/models/{m}/layers/{r['name']}#fig-grid"})
    banding.sort(key=lambda x: -x["value"])
    for row in banding:
        row["banded"] = floor is not None and not row["untrained"] and abs(row["value"]) > floor

    # ---- symmetry drops at strided layers -----------------------------------------------------------------
    drops = []
    for m, rec in records.items():
        base = symmetry_baseline(rec)
        if base is None:
            continue
        t = twin_of.get(m)
        tbase = symmetry_baseline(records[t]) if t else None
        tsc = records[t].get("scalars", {}) if t else {}
        for r, s in _symmetry_rows(rec)[1:]:  # the first conv sees pixels: its asymmetry is the image's
            if not _strided(r):
                continue
            ts = finite(tsc.get(r["name"], {}).get("symmetry"))
            tdrop = tbase - ts if tbase is not None and ts is not None else None
            drops.append({"model": m, "family": fam[m], "untrained": m in untrained, "layer": r["name"],
                          "human": hname(m, r["name"]), "S": s, "baseline": base, "drop": base - s,
                          "uneven": bool(r.get("uneven_padding")), "kernel": r.get("kernel"),
                          "twin": t, "twin_drop": tdrop,
                          "beyond_twin": tdrop is not None and base - s > tdrop,
                          "url": f"/models/{m}#fig-symmetry"})
    drops.sort(key=lambda x: -x["drop"])

    # ---- switched-off gammas ------------------------------------------------------------------------------
    gammas = []
    for m, rec in records.items():
        g = gamma_share(rec, GAMMA_OFF)
        if g is None:
            continue
        loose = gamma_share(rec, GAMMA_LOOSE)
        t = twin_of.get(m)
        tg = gamma_share(records[t], GAMMA_OFF) if t else None
        gammas.append({"model": m, "family": fam[m], "untrained": m in untrained, "share": g["share"],
                       "count": g["count"], "channels": g["channels"], "share_loose": loose["share"] if loose else None,
                       "twin": t, "twin_share": tg["share"] if tg else None,
                       "url": f"/models/{m}#fig-gamma"})
    gammas.sort(key=lambda x: -x["share"])

    # ---- the colour axis of the first layer's SVD -----------------------------------------------------------
    colours = {}
    for m, (layer, svd) in colour_svds.items():
        c = colour_axis(layer, svd)
        if c is not None:
            colours[m] = c
    colour_rows = []
    for m, c in colours.items():
        t = twin_of.get(m)
        tc = colours.get(t) if t else None
        basis, comp = c["best_basis"], c["best_component"]
        other = 1 if comp == 0 else 0
        colour_rows.append({"model": m, "family": fam[m], "untrained": m in untrained, **c,
                            "human": hname(m, c["layer"]), "feeder_human": hname(m, c["feeder"]),
                            "twin": t, "twin_best": tc["best"] if tc else None,
                            "beyond_twin": tc is not None and c["best"] > tc["best"],
                            "url": f"/models/{m}/layers/{c['layer']}?svd={basis}&cx={comp}&cy={other}"
                                   f"&colour=colourfulness#fig-svd"})
    colour_rows.sort(key=lambda x: -x["best"])

    # ---- trained against random twin -------------------------------------------------------------------------
    def last_banding(rec):
        sc = rec.get("scalars", {})
        vals = [v for r in _ordered(rec) if (v := finite(sc.get(r["name"], {}).get("banding_index"))) is not None]
        return vals[-1] if vals else None

    twin_rows = []
    for m, t in sorted(twin_of.items()):
        a, b = records[m], records[t]
        ga, gb = gamma_share(a, GAMMA_OFF), gamma_share(b, GAMMA_OFF)
        twin_rows.append({
            "model": m, "family": fam[m], "twin": t,
            "banding_last": last_banding(a), "twin_banding_last": last_banding(b),
            "symmetry": symmetry_baseline(a), "twin_symmetry": symmetry_baseline(b),
            "gamma_share": ga["share"] if ga else None, "twin_gamma_share": gb["share"] if gb else None,
            "colour_best": colours[m]["best"] if m in colours else None,
            "twin_colour_best": colours[t]["best"] if t in colours else None,
            "url": f"/models/{m}", "twin_url": f"/models/{t}",
        })

    return {
        "thresholds": {
            "banding_noise_floor": floor,
            "banding_rule": "a layer of a trained model is called banded when its index exceeds the largest "
                            "|banding index| of any layer of any untrained model here (the noise floor)",
            "gamma": float(GAMMA_OFF), "gamma_loose": float(GAMMA_LOOSE),
            "symmetry_rule": "drop = mean S of the model's unstrided convs after the first, minus the layer's S "
                             "(strided convs after the first); set against the same layer of the random twin",
            "colour_rule": f"largest |corr(colourfulness, coordinate)| over singular vectors and centred "
                           f"components 0..{COLOUR_COMPONENTS - 1}; the random twin's largest is the chance level",
        },
        "banding": banding, "symmetry_drops": drops, "gamma": gammas, "colour_axis": colour_rows, "twins": twin_rows,
        "counts": {"models": len(records), "untrained": len(untrained), "banded": sum(1 for r in banding if r["banded"])},
    }

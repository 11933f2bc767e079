"""The views: what the API and the pages show of a model, a layer, a neuron, shaped from the cache.

Functions of a :class:`~server.reader.CacheReader` (they read records and results through it and keep no
state of their own) and pure functions of a model record. No HTTP here: a bad name or index raises a
:mod:`server.errors` error whose message names the bad value and what exists.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from precompute.declarations.limits import GAMMA_THRESHOLDS, MAX_CLUSTER_PAIRS

from .errors import BadRequest, ExplorerError, NotFound, nearest
from .findings import finite
from .reader import CacheReader
from .runs import run_of

#: a neuron index as a client sends it (the OpenAPI pattern of the neuron parameter)
NEURON_PATTERN = r"^-?[0-9]{1,11}$"
NEURON = re.compile(NEURON_PATTERN)


# ---- what a person is told when a link points at nothing --------------------------------------------
def gone(reader: CacheReader, model: str, layer: Optional[str] = None, neuron: Any = None) -> Optional[dict]:
    """What is wrong with the page ``/models/model[/layers/layer[/neurons/neuron]]`` in words for
    people: ``{"message", "near": [{"label", "url"}], "back": {"label", "url"}}`` (the nearest
    matches, at most five, and one link back to the closest page that exists); None when it exists."""
    names = reader.model_names()
    if model not in names:
        return {"message": f"There is no model named {model!r} here.",
                "near": [{"label": m, "url": f"/models/{m}"} for m in nearest(model, names)],
                "back": {"label": "all models", "url": "/"}}
    try:
        rec = reader.record(model)
    except ExplorerError:
        return None
    if layer is None:
        return None
    mpage = f"/models/{model}"
    row = rec["_rows"].get(layer)
    if row is None:
        human = reader.human_names(model)
        layers = [r["name"] for r in rec.get("inventory", [])]
        by_human = {v: k for k, v in human.items()}
        near = nearest(layer, layers) or [by_human[h] for h in nearest(layer, list(by_human))]
        return {"message": f"{model} has no layer {layer!r}.",
                "near": [{"label": l + (f" ({human[l]})" if l in human else ""), "url": f"{mpage}/layers/{l}"}
                         for l in near],
                "back": {"label": f"{model}: all {len(layers)} layers", "url": f"{mpage}#layers"}}
    if neuron is None:
        return None
    lpage = f"{mpage}/layers/{layer}"
    n = neuron_count(row)
    back = {"label": f"layer {layer} of {model}", "url": lpage}
    if not n:
        return {"message": f"Layer {layer} of {model} is a {row.get('type')} layer: it has no neurons to show.",
                "near": [], "back": back}
    text = str(neuron)
    if not NEURON.fullmatch(text):
        return {"message": f"{text[:40]!r} is not a neuron number: the neurons of layer {layer} are numbered "
                           f"0 to {n - 1}.",
                "near": [{"label": "neuron 0", "url": f"{lpage}/neurons/0"}], "back": back}
    i = int(text)
    if 0 <= i < n:
        return None
    j = min(max(i, 0), n - 1)
    return {"message": f"Layer {layer} of {model} has {n} neurons, numbered 0 to {n - 1}: there is no neuron {i}.",
            "near": [{"label": f"neuron {j}", "url": f"{lpage}/neurons/{j}"}], "back": back}


def pair_problem(reader: CacheReader, pair: str, analysis: str) -> Optional[str]:
    """Why ``model:layer`` cannot be shown with a result of ``analysis``, in a short sentence (never the
    list of everything that exists); None when it can."""
    model, sep, layer = str(pair).partition(":")
    if not sep or not model or not layer:
        return f"{str(pair)[:80]!r} is not model:layer"
    g = gone(reader, model, layer)
    if g is not None:
        near = ", ".join(x["label"] for x in g["near"][:3])
        return g["message"] + (f" Nearest: {near}." if near else "")
    try:
        rec = reader.record(model)
    except ExplorerError as e:
        return e.message.split(". Known")[0]
    if layer not in rec["analyses"].get(analysis, {}).get("layers", []):
        row = rec["_rows"][layer]
        why = {"nmf": "1×1, linear and BatchNorm layers have none", "histogram": "only conv and linear layers have one"}
        return (f"layer {layer} of {model} (a {row.get('type')} layer) has no {analysis} result"
                + (f" ({why[analysis]})" if analysis in why else "") + ".")
    return None


def check_pairs(reader: CacheReader, pairs: Optional[str], analysis: str,
                limit: int = MAX_CLUSTER_PAIRS) -> tuple[list[str], list[dict]]:
    """Split a comma-separated ``model:layer`` list from a URL into the pairs that can be shown (in
    order, each once, at most ``limit``) and the ones that cannot, each with its reason."""
    ok: list[str] = []
    bad: list[dict] = []
    for part in (pairs or "").split(","):
        part = part.strip()
        if not part:
            continue
        if part in ok:
            continue
        why = pair_problem(reader, part, analysis)
        if why is None and len(ok) >= limit:
            why = f"at most {limit} pairs are shown at once"
        if why is None:
            ok.append(part)
        else:
            bad.append({"pair": part[:120], "reason": why})
    return ok, bad


def list_models(reader: CacheReader) -> list[dict]:
    out = []
    for name in reader.model_names():
        try:
            rec = reader.record(name)
        except ExplorerError:
            continue
        out.append(model_summary(rec))
    return out


def model_detail(reader: CacheReader, model: str) -> dict:
    rec = reader.record(model)
    return {
        "name": rec["name"], "spec": rec.get("spec", {}), "summary": model_summary(rec),
        "weights_sha256": rec.get("weights_sha256"), "file_sha256": rec.get("file_sha256"),
        "status": rec.get("status"), "created": rec.get("created"), "device": rec.get("device"),
        "seconds": rec.get("seconds"), "errors": public_errors(rec), "analyses": rec["analyses"],
        "inventory": rec.get("inventory", []), "scalars": rec["scalars"], "profiles": profiles(rec),
        "human_names": reader.human_names(model),
        # a model read from a file without its graph (--arch none): what needs the architecture, and how to
        # give it; a graph file's notes on what it holds but convscope does not analyse. Only when present,
        # so the bodies of every other model are unchanged
        **({"skipped": dict(rec["skipped"])} if rec.get("skipped") else {}),
        **({"notes": list(rec["notes"])} if rec.get("notes") else {}),
    }


def layer_context(reader: CacheReader, model: str, layer: str) -> dict:
    """The layer's row and what relates to it: analyses with a result, the BN that follows it, its
    feeder and consumers, neighbours in execution order and its neuron count."""
    rec, row = reader.row(model, layer)
    inv = rec.get("inventory", [])
    available = sorted(a for a, info in rec["analyses"].items() if layer in info.get("layers", []))
    bn = next((r["name"] for r in inv if r.get("type") == "batchnorm" and r.get("follows") == layer), None)
    consumers = [r["name"] for r in inv if r.get("feeds_from") == layer]
    svd_consumers = [c for c in consumers if c in rec["analyses"].get("svd", {}).get("layers", [])]
    order = [r["name"] for r in sorted(inv, key=lambda r: r.get("index", 0))]
    pos = order.index(layer)
    return {
        "model": model, "layer": layer, "row": row, "analyses": available,
        "scalars": rec["scalars"].get(layer, {}), "bn": bn,
        "bn_analyses": sorted(a for a, info in rec["analyses"].items() if bn and bn in info.get("layers", [])),
        "follows": row.get("follows"), "feeds_from": row.get("feeds_from"), "consumers": consumers,
        "svd_consumers": svd_consumers,
        "prev": order[pos - 1] if pos > 0 else None, "next": order[pos + 1] if pos + 1 < len(order) else None,
        "neurons": neuron_count(row), "family": rec.get("spec", {}).get("family"),
        "human": reader.human_names(model).get(layer),
        **({"skipped": dict(rec["skipped"])} if rec.get("skipped") else {}),  # weights alone: see model_detail
    }


def neuron_index(model: str, layer: str, row: dict, i: Any) -> int:
    """``i`` as an index in 0..N-1 of the layer: BadRequest when not an integer, NotFound when out of range."""
    n = neuron_count(row)
    if not n:
        raise NotFound(f"layer {layer!r} of {model} has no neurons to show", known=[])
    if not isinstance(i, int):
        text = str(i)
        if not NEURON.fullmatch(text):
            raise BadRequest(f"neuron must be an integer index in 0..{n - 1} for layer {layer!r} of {model}; "
                             f"got {text[:40]!r}", range=[0, n - 1])
        i = int(text)
    if i < 0 or i >= n:
        raise NotFound(f"neuron {i} is out of range for layer {layer!r} of {model}: it has {n} neurons "
                       f"(0..{n - 1})", range=[0, n - 1])
    return i


def neuron(reader: CacheReader, model: str, layer: str, i: Any) -> dict:
    """Everything about neuron ``i`` of ``layer``: NMF image and error, position in the sorted order
    with neighbours, raw kernels of its strongest input channels, gamma/beta of the BN that follows the
    layer, and its SVD coordinates (as this layer's neuron, and as the feeder of the next layer)."""
    ctx = layer_context(reader, model, layer)
    n = ctx["neurons"]
    i = neuron_index(model, layer, ctx["row"], i)
    out: dict[str, Any] = {"model": model, "layer": layer, "neuron": i, "neurons": n,
                           "row": ctx["row"], "analyses": ctx["analyses"]}
    nmf = reader.maybe(model, layer, "nmf")
    if nmf:
        order = list(nmf["order"])
        pos = order.index(i) if i in order else None
        near = []
        if pos is not None:
            for p in range(max(0, pos - 6), min(len(order), pos + 7)):
                j = order[p]
                near.append({"neuron": j, "position": p, "image": nmf["images"][j]})
        out["nmf"] = {
            "image": nmf["images"][i], "error": _at(nmf.get("error"), i), "energy": _at(nmf.get("energy"), i),
            "kernel": nmf.get("kernel"), "rank": nmf.get("rank"), "position": pos,
            "prev": order[pos - 1] if pos is not None and pos > 0 else None,
            "next": order[pos + 1] if pos is not None and pos + 1 < len(order) else None,
            "neighbours": near, "banding_index": nmf.get("banding_index"),
        }
    else:
        out["nmf"] = None
    kern = reader.maybe(model, layer, "kernels")
    out["kernels"] = None if not kern else {
        "top_channels": kern["top_channels"][i], "kernels": kern["kernels"][i], "norms": kern["norms"][i]}
    out["connections"] = connections(reader, model, layer, i, ctx, kern)
    bn_layer = layer if ctx["row"].get("type") == "batchnorm" else ctx["bn"]
    bn = reader.maybe(model, bn_layer, "batchnorm")
    out["batchnorm"] = None if not bn else {
        "layer": bn_layer, "gamma": bn["gamma"][i], "beta": bn["beta"][i],
        "gamma_rank": _rank(bn["gamma"], i, absolute=True), "channels": len(bn["gamma"]),
        "gammas": bn["gamma"], "betas": bn["beta"]}
    svd = reader.maybe(model, layer, "svd")
    out["svd"] = None if not svd else {
        "as": "layer", "layer": layer, "feeder": svd.get("feeder"), "u": svd["u"][i],
        "pca_u": svd.get("pca", {}).get("u", [None] * (i + 1))[i],
        "singular_values": svd.get("singular_values")}
    out["svd_as_feeder"] = []
    for c in ctx["svd_consumers"]:
        s2 = reader.maybe(model, c, "svd")
        if s2 and i < len(s2["v"]):
            prop = s2.get("feeder_property") or {}
            vals = prop.get("values") or []
            out["svd_as_feeder"].append({
                "layer": c, "v": s2["v"][i], "pca_v": (s2.get("pca", {}).get("v") or [None] * (i + 1))[i],
                "property": {"name": prop.get("name"), "value": vals[i] if i < len(vals) else None}})
    return out


def connections(reader: CacheReader, model: str, layer: str, i: int, ctx: dict, kern: Optional[dict],
                top: int = 8) -> dict:
    """The neuron's strongest connections, as Microscope shows them: ``incoming``, its input channels
    with the largest kernel norm ‖W[i, c]‖ (neurons of the feeder layer, linked when the feeder's
    outputs are this layer's inputs one to one); ``outgoing``, per consumer layer, the neurons j of
    that layer whose strongest input channels include this one, by ‖W_next[j, i]‖. From the
    ``kernels`` results (each keeps a neuron's ``top`` strongest input channels)."""
    rec = reader.record(model)
    rows = rec["_rows"]
    feeder = ctx.get("feeds_from")
    frow = rows.get(feeder) if feeder else None
    linked = bool(frow) and neuron_count(frow) == ctx["row"].get("in_channels")
    incoming = []
    if kern:
        for c, nrm in zip(kern["top_channels"][i], kern["norms"][i]):
            incoming.append({"channel": c, "norm": nrm, "layer": feeder if linked else None,
                             "url": f"/models/{model}/layers/{feeder}/neurons/{c}" if linked else None})
    outgoing = []
    for cons in ctx.get("consumers", []):
        ck = reader.maybe(model, cons, "kernels")
        if not ck:
            continue
        hits = [(j, ck["norms"][j][t]) for j, chans in enumerate(ck["top_channels"]) for t, c in enumerate(chans) if c == i]
        hits.sort(key=lambda h: -h[1])
        outgoing.append({"layer": cons, "human": reader.human_names(model).get(cons), "neurons": len(ck["top_channels"]),
                         "top": len(ck["top_channels"][0]) if ck["top_channels"] else 0,
                         "units": [{"neuron": j, "norm": nrm, "url": f"/models/{model}/layers/{cons}/neurons/{j}"}
                                   for j, nrm in hits[:top]], "count": len(hits)})
    return {"feeder": feeder, "feeder_human": reader.human_names(model).get(feeder) if feeder else None,
            "linked": linked, "incoming": incoming, "outgoing": outgoing}


# ---- pure helpers of a record ----------------------------------------------------------------------
def _at(seq, i):
    return seq[i] if seq is not None and i < len(seq) else None


def _rank(values, i, absolute=False) -> Optional[float]:
    """Share of values (by |.| when absolute) below values[i], in [0, 1]."""
    if not values:
        return None
    key = (lambda v: abs(v)) if absolute else (lambda v: v)
    x = key(values[i])
    return sum(1 for v in values if key(v) < x) / len(values)


def parse_int(value: Any, name: str, lo: int, hi: int) -> int:
    try:
        v = int(str(value).strip())
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer in {lo}..{hi}; got {value!r}", range=[lo, hi]) from None
    if v < lo or v > hi:
        raise BadRequest(f"{name} must be in {lo}..{hi}; got {v}", range=[lo, hi])
    return v


def neuron_count(row: dict) -> Optional[int]:
    """The neurons of a layer: conv and linear layers' output units, a BatchNorm's channels; None for others."""
    if row.get("type") in ("conv", "linear"):
        shape = row.get("weight_shape") or []
        return int(row.get("out_channels") or (shape[0] if shape else 0)) or None
    if row.get("type") == "batchnorm":
        shape = row.get("weight_shape") or []
        return int(shape[0]) if shape else None
    return None


def public_errors(rec: dict) -> dict:
    return {k: v for k, v in rec.get("errors", {}).items() if not k.endswith(":traceback")}


def model_summary(rec: dict) -> dict:
    spec = rec.get("spec", {}) or {}
    inv = rec.get("inventory", [])
    count = lambda t: sum(1 for r in inv if r.get("type") == t)  # noqa: E731
    source = spec.get("source") or {}
    prof = profiles(rec)
    return {
        "name": rec.get("name"), "arch": spec.get("arch"), "dataset": spec.get("dataset"),
        "family": spec.get("family", "real"), "source": source.get("kind") if isinstance(source, dict) else source,
        "source_detail": source, "accuracy": spec.get("accuracy"), "description": spec.get("description", ""),
        "origin": spec.get("origin", ""), "license": spec.get("license", ""), "input_size": spec.get("input_size"),
        "status": rec.get("status"), "created": rec.get("created"),
        "layers": {"conv": count("conv"), "linear": count("linear"), "batchnorm": count("batchnorm")},
        "params": sum(int(r.get("params") or 0) for r in inv if r.get("type") in ("conv", "linear")),
        "weights_sha256": rec.get("weights_sha256"), "errors": len(public_errors(rec)),
        "symmetry_profile": [round(p["value"], 4) for p in prof["symmetry"]],
        "mean_symmetry": (sum(p["value"] for p in prof["symmetry"]) / len(prof["symmetry"])) if prof["symmetry"] else None,
        **_training_summary(rec),
    }


def _training_summary(rec: dict) -> dict:
    """For a trained variant (family ``variant``): how it was trained and whether it reached its accuracy
    plateau (the run record's ``plateau``), so that every page that shows it can say so; {} for other models."""
    run = run_of(rec)
    if run is None:
        return {}
    return {"training": {"experiment": run.experiment, "variant": run.variant, "epochs": run.epochs,
                         "seed": run.seed, "plateau": run.plateau.public() if run.plateau else None,
                         "snapshot": run.snapshot.public() if run.snapshot else None,
                         "at_plateau": run.at_plateau() or run.epochs == 0}}


def profiles(rec: dict) -> dict:
    """Depth profiles for the model page: symmetry (conv, with strided/uneven flags), banding index,
    share of small |gamma| (per BN layer) and weight sparsity (conv and linear), in execution order."""
    inv = sorted(rec.get("inventory", []), key=lambda r: r.get("index", 0))
    sc = rec.get("scalars", {})
    sym, band, gam, spars = [], [], [], []
    convs = [r for r in inv if r.get("type") == "conv"]
    depth = {r["name"]: (i / (len(convs) - 1) if len(convs) > 1 else 0.0) for i, r in enumerate(convs)}
    for r in inv:
        s = sc.get(r["name"], {})
        strided = any(int(x) > 1 for x in (r.get("stride") or [1]))
        base = {"layer": r["name"], "index": r.get("index"), "depth": depth.get(r["name"]),
                "label": r["name"] + ("*" if strided else "")}
        if r.get("type") == "conv":
            v = finite(s.get("symmetry"))
            if v is not None:
                sym.append({**base, "value": v, "strided": strided, "uneven": bool(r.get("uneven_padding")),
                            "uneven_detail": r.get("uneven_detail"), "kernel": r.get("kernel"),
                            "depthwise": bool(r.get("depthwise"))})
            v = finite(s.get("banding_index"))
            if v is not None:
                band.append({**base, "value": v, "nmf_error": finite(s.get("nmf_error"))})
        if r.get("type") in ("conv", "linear"):
            v = finite(s.get("sparsity"))
            if v is not None:
                spars.append({**base, "value": v, "kurtosis": finite(s.get("kurtosis")), "type": r.get("type")})
        if r.get("type") == "batchnorm":
            vals = {t: finite(s.get(f"gamma_below_{t}")) for t in GAMMA_THRESHOLDS}
            if any(v is not None for v in vals.values()):
                follows = r.get("follows")
                gam.append({**base, "follows": follows, "depth": depth.get(follows) if follows else None,
                            "values": vals})
    return {"symmetry": sym, "banding": band, "gamma": gam, "sparsity": spars}

"""The experiment pages' data: the trained variants of each experiment, side by side. No HTTP here and
no torch: the runs come from the model records in the cache, whose ``spec.extra`` is the variant's run
record (reference/README.md): experiment, variant, final test accuracy, measurements, command.

An experiment is listed when at least one of its variants is precomputed. Titles, descriptions, papers
and the declared variants come from the declarations the trainer uses too
(``precompute/declarations/experiments.py``), so the pages also name the variants not trained yet.

Headline numbers per variant (:func:`variant_row`):

- ``accuracy``: the record's ``final_test_accuracy`` (% on the test split, the saved float16 weights);
- ``banding``: banding index of the last two conv layers with an NMF result (``nmf`` scalars);
- ``gamma_below_0.01``: share of all BatchNorm |gamma| < 0.01, from the record's ``gamma_clamp``
  measurement when there is one (``source: "record"``), else from the ``batchnorm`` analysis scalars,
  channel-weighted over the BN layers (``source: "weights"``: the same quantity, from the cached weights);
- ``gamma_clamp``: test-accuracy change (points) when those gammas are set to 0 (record only);
- ``dead_relu``: share of ReLU channels whose output is 0 on > 99 % of (test image, pixel) pairs (record only);
- ``strided_symmetry``: symmetry S of the mean kernel at the conv layers with stride > 1.
"""

from __future__ import annotations

from typing import Optional

from precompute.declarations.experiments import EXPERIMENTS, RANDOM, Experiment
from precompute.declarations.limits import CLUSTER_K_DEFAULT as DEFAULT_K
from precompute.declarations.limits import GAMMA_OFF
from precompute.declarations.limits import MAX_CLUSTER_PAIRS as MAX_PAIRS
from precompute.declarations.records import TrainingRun
from precompute.names import is_model_name

from .errors import ExplorerError, NotFound, unknown
from .explorer import Explorer
from .findings import finite
from .runs import run_of
from .views import profiles
from .verdicts import experiment_verdicts



def _declared(experiment: str) -> Optional[Experiment]:
    """The experiment's declaration (precompute/declarations/experiments.py), None for an undeclared one."""
    return EXPERIMENTS.get(experiment) if experiment in EXPERIMENTS else None


def variant_records(ex: Explorer, seeds: Optional[dict] = None,
                    snapshots: Optional[dict] = None) -> dict[str, dict[str, dict]]:
    """experiment -> {variant: model record} over the precomputed models of family ``variant``: the seed-0 run
    of each variant (or its lowest seed). Runs of the other seeds (``<experiment>-<variant>-seed<S>``) go into
    ``seeds`` when given: {experiment: {variant: [records, by seed]}}. Weight snapshots taken during a run
    (``<model>.e<epoch>``, ``convscope train --snapshots``) are models of their own, not variants: they go
    into ``snapshots`` when given: {model: [{model, epoch}, by epoch]}."""
    out: dict[str, dict[str, dict]] = {}
    by_seed: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for name in ex.model_names():
        try:
            rec = ex.record(name)
        except ExplorerError:
            continue
        run = run_of(rec)
        if run is None or run.experiment is None or run.variant is None or not is_model_name(run.experiment):
            continue
        if run.snapshot is not None:
            if snapshots is not None:
                snapshots.setdefault(run.snapshot.of, []).append({"model": name, "epoch": run.snapshot.epoch})
            continue
        by_seed.setdefault((run.experiment, run.variant), []).append((run.seed, rec))
    for (exp, var), runs in by_seed.items():
        runs.sort(key=lambda sr: (sr[0], sr[1].get("name", "")))
        out.setdefault(exp, {})[var] = runs[0][1]
        if seeds is not None and len(runs) > 1:
            seeds.setdefault(exp, {})[var] = [r for _, r in runs[1:]]
    return out


def declared_variants(experiment: str) -> list[str]:
    declared = _declared(experiment)
    return declared.variant_names(with_random=True) if declared else []


def _ordered(experiment: str, variants) -> list[str]:
    declared = declared_variants(experiment)
    rank = {v: i for i, v in enumerate(declared)}
    return sorted(variants, key=lambda v: (rank.get(v, len(declared)), v))


def _info(experiment: str) -> dict:
    declared = _declared(experiment)
    return {"name": experiment, "title": declared.title if declared else experiment,
            "description": declared.description if declared else "",
            "paper": declared.paper if declared else "", "declared_variants": declared_variants(experiment),
            "url": f"/experiments/{experiment}", "api": f"/api/experiments/{experiment}"}


def _command(experiment: str) -> str:
    return f"convscope train {experiment} && convscope precompute --all"


# ---- headline numbers ---------------------------------------------------------------------------------
def _nmf_layers(rec: dict) -> list[str]:
    """Layers with an NMF result, in execution order."""
    have = set(rec.get("analyses", {}).get("nmf", {}).get("layers", []))
    inv = sorted(rec.get("inventory", []), key=lambda r: r.get("index", 0))
    return [r["name"] for r in inv if r["name"] in have]


def gamma_below(rec: dict, threshold: str = GAMMA_OFF) -> Optional[dict]:
    """Share of BatchNorm |gamma| < threshold over the whole model: from the run record's gamma_clamp
    measurement when present, else channel-weighted over the ``batchnorm`` scalars of the cache."""
    run = run_of(rec)
    meas = (run.measurements.get("gamma_clamp") if run is not None else None) or {}
    t = (meas.get("thresholds") or {}).get(threshold) or {}
    v = finite(t.get("fraction_clamped"))
    if v is None and threshold == GAMMA_OFF and finite(meas.get("threshold")) == float(GAMMA_OFF):
        v = finite(meas.get("fraction_clamped"))
    if v is not None:
        return {"value": v, "source": "record"}
    num = den = 0.0
    sc = rec.get("scalars", {})
    for r in rec.get("inventory", []):
        if r.get("type") != "batchnorm":
            continue
        f = finite(sc.get(r["name"], {}).get(f"gamma_below_{threshold}"))
        n = (r.get("weight_shape") or [0])[0]
        if f is None or not n:
            continue
        num += f * n
        den += n
    return {"value": num / den, "source": "weights"} if den else None


def training_history(run: Optional[TrainingRun]) -> Optional[dict]:
    """The run's history (precompute/experiments/history.py) as series over training progress, for the
    training-history figure: ``{epoch: [...], test_accuracy, train_loss, dead_relu: [...] | None,
    gamma: {threshold: [...]}, banding: {layer: [...]}, symmetry: {layer: [...]}, layers: [conv layers]}``
    (x = epochs of training done: 0, 0.125, 0.25, 0.5, 1, 2, ...). None for a run without history; runs
    made before the weight metrics existed give only accuracy and loss (their metric series are empty)."""
    rows = sorted((h for h in (run.history if run else ()) if finite(h.epoch) is not None), key=lambda h: h.epoch)
    if not rows:
        return None

    def series(get) -> list:
        return [get(h) for h in rows]

    def keyed(metric: str) -> dict[str, list]:
        keys: list[str] = []
        for h in rows:
            for k in h.metrics.get(metric) or {}:
                if k not in keys:
                    keys.append(k)
        return {k: series(lambda h, k=k: finite((h.metrics.get(metric) or {}).get(k))) for k in keys}

    dead = series(lambda h: finite(h.dead_relu))
    banding = keyed("banding")
    return {"epoch": series(lambda h: h.epoch), "test_accuracy": series(lambda h: finite(h.test_accuracy)),
            "train_loss": series(lambda h: finite(h.train_loss)),
            "dead_relu": dead if any(v is not None for v in dead) else None,
            "gamma": keyed("gamma"), "banding": banding, "symmetry": keyed("symmetry"), "layers": list(banding)}


def branch_tests(rec: dict) -> dict:
    """The branch tests of the SVD analysis (precompute/analyses/branch_stats.py) from the model record's
    scalars, at the first layer in execution order that has each: ``separation`` (where the branches merge:
    do they separate on the singular vectors of |W|?) and ``frequency`` (do the image filters that each
    branch reads differ in spatial frequency?), each {layer, eta2, p}; {} for a model without branches."""
    sc = rec.get("scalars") or {}
    out: dict = {}
    for row in sorted(rec.get("inventory") or [], key=lambda r: r.get("index", 0)):
        s = sc.get(row.get("name")) or {}
        for key, name in (("separation", "branch_separation"), ("frequency", "branch_frequency")):
            eta, p = finite(s.get(name)), finite(s.get(f"{name}_p"))
            if key not in out and eta is not None and p is not None:
                out[key] = {"layer": row["name"], "eta2": eta, "p": p}
    return out


def _picked(result: Optional[dict], keys: tuple[str, ...]) -> Optional[dict]:
    return {k: result.get(k) for k in keys} if isinstance(result, dict) else None


def variant_row(experiment: str, variant: str, rec: dict) -> dict:
    """One row of the experiment table: the run and its headline numbers (see the module docstring)."""
    run = run_of(rec)
    spec = rec.get("spec") or {}
    prof = profiles(rec)
    meas = run.measurements if run else {}
    name = rec.get("name")
    accuracy = run.final_test_accuracy if run and run.final_test_accuracy is not None else spec.get("accuracy")
    return {
        "variant": variant, "model": name, "url": f"/models/{name}", "api": f"/api/models/{name}",
        "description": (run.description if run else "") or spec.get("description", ""),
        "reference": bool(run and run.reference), "replaces_reference": bool(run and run.replaces_reference),
        "arch": spec.get("arch"), "dataset": spec.get("dataset"),
        "epochs": run and run.epochs, "limit": run and run.limit, "seed": run.seed if run else None,
        "train_size": run and run.train_size, "test_size": run and run.test_size,
        "device": run and run.device, "command": run and run.command, "created": run and run.created,
        "trainable": run.trainable_rule() if run else None,
        "input_transform": run.transform_name() if run else None,
        "accuracy": finite(accuracy),
        "banding": [{"layer": p["layer"], "value": p["value"]} for p in prof["banding"][-2:]],
        "gamma_below_0.01": gamma_below(rec),
        "gamma_clamp": _picked(meas.get("gamma_clamp") or None,
                               ("threshold", "accuracy", "accuracy_clamped", "change", "fraction_clamped")),
        "dead_relu": _picked(meas.get("dead_relu") or None, ("p", "fraction", "disabled", "channels")),
        "strided_symmetry": [{"layer": p["layer"], "value": p["value"], "uneven": p["uneven"]}
                             for p in prof["symmetry"] if p["strided"]],
        "mean_symmetry": (sum(p["value"] for p in prof["symmetry"]) / len(prof["symmetry"])) if prof["symmetry"] else None,
        "nmf_layers": _nmf_layers(rec),
        "branch_tests": branch_tests(rec),
        "status": rec.get("status"),
        "profiles": {"symmetry": prof["symmetry"], "banding": prof["banding"]},
        "history": training_history(run),
        "plateau": run.plateau.public() if run and run.plateau else None,
        "resumed": [r.from_epoch for r in run.resumed] if run else [],
    }


# ---- the experiments ------------------------------------------------------------------------------------
def list_experiments(ex: Explorer) -> dict:
    """The experiments with at least one precomputed variant, and the declared ones without any."""
    found = variant_records(ex)
    names = [n for n in EXPERIMENTS if n in found] + sorted(n for n in found if n not in EXPERIMENTS)
    rows = []
    for name in names:
        variants = _ordered(name, found[name])
        runs = {v: run_of(found[name][v]) for v in variants}  # every record in found has its run
        accs = {v: finite(runs[v].final_test_accuracy) for v in variants}
        rows.append({**_info(name), "variants": variants, "models": [found[name][v].get("name") for v in variants],
                     "accuracy": accs,
                     "not_at_plateau": [v for v in variants if v != RANDOM and not runs[v].at_plateau()],
                     "missing": [v for v in declared_variants(name) if v not in found[name]]})
    untrained = [{**_info(n), "command": _command(n)} for n in EXPERIMENTS if n not in found]
    return {"experiments": rows, "count": len(rows), "untrained": untrained}


def experiment_names(ex: Explorer) -> list[str]:
    return [e["name"] for e in list_experiments(ex)["experiments"]]


def experiment_detail(ex: Explorer, experiment: str) -> dict:
    """Everything the experiment page shows: a row per precomputed variant (registry order, then
    ``random``), the NMF layers all variants share (for the neuron grids; default the last), the default
    layers of the cluster figure (the last two shared ones) and how the runs were made.
    404 (with the known experiments) for an experiment without a precomputed variant."""
    seeds: dict = {}
    snaps: dict = {}
    found = variant_records(ex, seeds, snaps)
    known = [n for n in EXPERIMENTS if n in found] + sorted(n for n in found if n not in EXPERIMENTS)
    if experiment not in found:
        msg = unknown("experiment", experiment, known)
        if experiment in EXPERIMENTS:
            msg = (f"experiment {experiment!r} has no precomputed variant yet: train and precompute it with "
                   f"`{_command(experiment)}`. Experiments with variants: {', '.join(known) or 'none'}")
        raise NotFound(msg, known=known)
    recs = found[experiment]
    variants = _ordered(experiment, recs)
    rows = []
    for v in variants:
        row = variant_row(experiment, v, recs[v])
        row["seeds"] = [_seed_row(experiment, v, r) for r in seeds.get(experiment, {}).get(v, [])]
        row["snapshots"] = sorted(snaps.get(row["model"], []), key=lambda s: (s["epoch"] or 0, s["model"]))
        rows.append(row)
    shared = [l for l in rows[0]["nmf_layers"] if all(l in r["nmf_layers"] for r in rows[1:])]
    # how the trained variants were made (random has epochs = 0 by design)
    scales = sorted({(r["dataset"], r["epochs"], r["limit"], r["seed"]) for r in rows if r["variant"] != RANDOM},
                    key=repr)
    return {
        **_info(experiment),
        "variants": rows,
        "missing": [v for v in declared_variants(experiment) if v not in recs],
        "layers": shared,
        "default_layer": shared[-1] if shared else None,
        "cluster_layers": shared[-2:],
        "default_k": DEFAULT_K,
        "max_pairs": MAX_PAIRS,
        "runs": [{"dataset": d, "epochs": e, "limit": l, "seed": s} for d, e, l, s in scales],
        "mixed_runs": len(scales) > 1,
        "train_command": _command(experiment),
        "verdicts": experiment_verdicts(experiment, rows),
        "not_at_plateau": [run["model"] for row in rows for run in [row] + row["seeds"]
                           if run["variant"] != RANDOM and (run.get("plateau") or {}).get("reached") is not True],
    }


def _seed_row(experiment: str, variant: str, rec: dict) -> dict:
    """A run of another seed: the variant's headline numbers, without the per-layer profiles' bulk."""
    row = variant_row(experiment, variant, rec)
    row.pop("history", None)
    return row

"""Precompute: load a model, take its inventory, run the registered analyses, write the cache.

Crash-safe by construction: every per-layer entry is written atomically and the model record last,
so a run killed at any point leaves only complete entries, and the next run skips what is cached.
"""

from __future__ import annotations

import time
import traceback
from typing import Callable, Iterable, Optional

import torch

from .analyses import ANALYSES, ModelContext
from .cache import Cache, CorruptEntry, ResultKey
from .declarations.records import InventoryRow, ModelRecord
from .devices import resolve_device
from .inventory import inventory
from .settings import Settings, get_settings
from .zoo import ModelError, get_spec, load_model

#: progress(fraction in [0, 1], message) for job runners; the CLI shows a tqdm bar instead
Progress = Callable[[float, str], None]


def layer_analyses(names: Optional[Iterable[str]] = None) -> list:
    """The per-model analyses to run (all registered ones of scope 'layer' by default)."""
    if names is None:
        return [a for _, a in ANALYSES.items() if a.scope == "layer"]
    chosen = [ANALYSES.get(n) for n in names]  # UnknownName lists what exists
    group = [a.name for a in chosen if a.scope != "layer"]
    if group:
        raise ValueError(f"{', '.join(group)} runs over several models, not in precompute; "
                         f"ask the API for it (GET /api/clusters?pairs=MODEL:LAYER,MODEL:LAYER&k=8) or the compare page")
    return chosen


def result_key(weights_sha256: str, analysis, params=None) -> ResultKey:
    params = params if params is not None else analysis.params()
    return ResultKey(weights_sha256, analysis.name, analysis.version, params.model_dump(mode="json"))


def precompute_model(name: str, settings: Optional[Settings] = None, analyses: Optional[list[str]] = None,
                     device: str = "auto", force: bool = False, progress: Optional[Progress] = None,
                     bar: bool = False) -> dict:
    """Run the analyses over every layer of ``name``; returns the model record (also cached).

    Layers already in the cache under the same key are skipped unless ``force``.
    """
    settings = settings or get_settings()
    cache = Cache(settings.cache)
    chosen = layer_analyses(analyses)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    report = progress or (lambda f, m: None)
    report(0.0, f"loading {name}")
    loaded = load_model(get_spec(name, settings), settings)
    module = loaded.module.to(dev)
    skipped: dict[str, str] = {}
    notes: list[str] = []
    if loaded.graph is not None:  # ONNX / Keras / bare weights: the rows come from the file, nothing is run
        rows, notes = loaded.graph.inventory, loaded.graph.notes
        if not loaded.graph.graph:
            skipped = needs_architecture(chosen, loaded.spec)
    else:
        rows = inventory(module, loaded.spec.input_size, dev)
    for r in rows:  # a row the readers would refuse fails here, before the analyses run
        InventoryRow.as_written(r)
    ctx = ModelContext(name=name, module=module, inventory=rows, weights_sha256=loaded.weights_sha256, device=dev)

    record = {
        "name": name, "spec": loaded.spec.public(), "weights_sha256": loaded.weights_sha256,
        "file_sha256": loaded.file_sha256, "inventory": rows, "analyses": {}, "scalars": {}, "errors": {},
        "device": str(dev), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # analyses (and flags) that need the graph a bare-weights file does not have: {what: how to give it}
        "skipped": skipped,
        # what a graph file holds that convscope does not analyse (e.g. an ONNX model's ConvTranspose head)
        "notes": notes,
    }

    iterator = chosen
    if bar:
        from tqdm import tqdm

        iterator = tqdm(chosen, desc=name, unit="analysis", leave=False)
    for i, analysis in enumerate(iterator):
        if bar:
            iterator.set_postfix_str(analysis.name)
        report(i / len(chosen), f"{name}: {analysis.name}")
        params = analysis.params()
        key = result_key(loaded.weights_sha256, analysis, params)
        targets = [r for r in rows if analysis.applies(r)]
        todo = [r for r in targets if force or not cache.has(key, r["name"])]
        try:
            results = analysis.run(ctx, todo, params) if todo else {}
            missing = {r["name"] for r in todo} - set(results)
            if missing:
                raise RuntimeError(f"analysis {analysis.name} returned no result for {sorted(missing)}")
            # one layer's result at a time (a LazyResults makes it as it is read): written, its scalars kept
            fresh: dict[str, dict] = {}
            for r in todo:
                data = results[r["name"]]
                cache.put(key, r["name"], data, meta={
                    "model": name, "layer_type": r["type"], "weight_shape": r["weight_shape"],
                    "device": str(dev), "torch": torch.__version__})
                fresh[r["name"]] = analysis.scalars(data)
                del data
        except Exception as e:  # one failing analysis must not lose the others
            record["errors"][analysis.name] = f"{type(e).__name__}: {e}"
            record["errors"][analysis.name + ":traceback"] = traceback.format_exc(limit=5)
            continue
        record["analyses"][analysis.name] = {"version": analysis.version, "params": key.params,
                                             "layers": [r["name"] for r in targets]}
        for r in targets:
            if r["name"] in fresh:
                record["scalars"].setdefault(r["name"], {}).update(fresh[r["name"]])
                continue
            data = _cached_data(cache, key, r["name"])
            if data is not None:
                record["scalars"].setdefault(r["name"], {}).update(analysis.scalars(data))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    # so that the torch-free job queue can tell a record computed by older analysis versions
    registry = {a.name: {"version": a.version, "params": a.params().model_dump(mode="json")}
                for a in layer_analyses(None)}
    if cache.get_registry() != registry:
        cache.put_registry(registry)
    with cache.model_lock(name):
        _merge_previous(record, _safe_model(cache, name), [a.name for a in chosen])
        record["status"] = "partial" if record["errors"] else "done"
        ModelRecord.as_written(record)  # the record's contract (precompute/declarations/records.py), checked
        cache.put_model(name, record)
    report(1.0, f"{name}: {record['status']}")
    return record


def needs_architecture(chosen: list, spec) -> dict[str, str]:
    """What cannot be computed for weights without a graph, with how to give the architecture: the
    analyses that declare ``needs_graph`` and the padding flags of the symmetry profile."""
    how = (f"needs the architecture: add the file again with it, e.g. `convscope add FILE --arch ARCH "
           f"--name {spec.name}-arch` (ARCH one of `convscope zoo list`'s, torchvision:NAME or timm:NAME), or "
           f"export the model to ONNX (torch.onnx.export) and add the .onnx file")
    out = {a.name: f"{a.needs_graph}: {how}" for a in chosen if a.needs_graph}
    if any(a.name == "symmetry" for a in chosen):
        out["padding"] = f"strides and padding (the uneven-padding flags of the symmetry profile): {how}"
    return out


def _safe_model(cache: Cache, name: str):
    try:
        return cache.get_model(name)
    except CorruptEntry:
        return None


def _merge_previous(record: dict, previous, ran: list[str]) -> None:
    """Keep what earlier runs with other ``--analyses`` (or other workers) computed for the same weights."""
    if not previous or previous.get("weights_sha256") != record["weights_sha256"]:
        return
    for a, info in previous.get("analyses", {}).items():
        record["analyses"].setdefault(a, info)
    for a, msg in previous.get("errors", {}).items():
        if a.split(":")[0] not in ran and a.split(":")[0] not in record["analyses"]:
            record["errors"].setdefault(a, msg)
    for layer, metrics in previous.get("scalars", {}).items():
        merged = dict(metrics)
        merged.update(record["scalars"].get(layer, {}))
        record["scalars"][layer] = merged


def _cached_data(cache: Cache, key: ResultKey, layer: str):
    try:
        entry = cache.get(key, layer)
    except CorruptEntry:
        return None
    return None if entry is None else entry.data


def precompute_many(names: list[str], settings: Optional[Settings] = None, log=print, **kw) -> dict[str, str]:
    """Precompute several models; a failing model is reported and the others still run.

    Returns {name: "done" | "partial" | "failed: <reason>"}.
    """
    outcome: dict[str, str] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            record = precompute_model(name, settings, **kw)
            outcome[name] = record["status"]
            extra = "; ".join(f"{k}: {v}" for k, v in record["errors"].items() if ":traceback" not in k)
            log(f"{name}: {record['status']} in {time.perf_counter() - t0:.1f}s" + (f" ({extra})" if extra else ""))
        except (ModelError, ValueError, KeyError, OSError, RuntimeError) as e:
            outcome[name] = f"failed: {e}"
            log(f"{name}: FAILED: {e}")
    return outcome

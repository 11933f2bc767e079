"""The branch tests of the `branches` experiment straight from its checkpoints, with the controls: the 1-branch
and the untrained network with their channels split as the branched ones are (no reason to differ).

    python benchmarks/branch_controls.py [--reference reference]

Prints, per network and split: the separation of the merging layer's feeder neurons on the singular vectors of
|W| (eta squared, permutation p) and the stem filters' spatial frequency by branch (eta squared, p, the means per
branch). The same functions as the SVD analysis (precompute/analyses/branch_stats.py), so the branched rows equal
the cached ``branch_tests``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.analyses.branch_stats import branch_test, kernel_frequency  # noqa: E402
from precompute.analyses.svd import connection_matrix, svd_of  # noqa: E402

MERGE, FEEDER_WIDTH, STEM, STEM_WIDTH = "layer3.0.conv1.weight", 32, "conv1.weight", 16


def tests(path: Path, groups: int) -> str:
    sd = load_file(str(path))
    v = svd_of(connection_matrix(sd[MERGE].float()).double(), 8)["v"]
    frequency, _ = kernel_frequency(sd[STEM].float())
    sep = branch_test(v, torch.arange(FEEDER_WIDTH) // (FEEDER_WIDTH // groups))
    fr = branch_test(frequency, torch.arange(STEM_WIDTH) // (STEM_WIDTH // groups))
    means = " / ".join(f"{m[0]:.3f}" for m in fr["means"])
    return (f"separation eta2 {sep['eta2_best']:.2f} (p = {sep['p']:.3f}); "
            f"frequency eta2 {fr['eta2_best']:.2f} (p = {fr['p']:.3f}), per branch {means}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, default=Path(__file__).resolve().parents[1] / "reference")
    args = ap.parse_args(argv)
    files = sorted(args.reference.glob("branches-*.safetensors"))
    if not files:
        raise SystemExit(f"no branches-*.safetensors in {args.reference}: train them (RESULTS.md) or give --reference")
    for path in files:
        variant = re.match(r"branches-([^-.]+)", path.stem).group(1)
        splits = (int(variant),) if variant.isdigit() and int(variant) > 1 else (2, 4)
        for g in splits:
            label = path.stem if variant.isdigit() and int(variant) > 1 else f"{path.stem} split in {g} (control)"
            print(f"{label:40s} {tests(path, g)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory and wall time of `convscope precompute` on big models, each in a fresh process.

For every model: a seeded random state dict of the architecture is written once as ``.safetensors`` (what a
user uploads), registered with ``convscope add`` in a data dir of its own, then precomputed by a fresh
``python -m precompute.cli precompute NAME --device cpu`` whose peak resident set size is the kernel's
(``os.wait4``'s ``ru_maxrss`` of that one process), so the figure counts everything the process touched:
the interpreter and torch, the module, the analyses' temporaries. ``--before COMMIT`` runs the same
precompute with the code of an earlier commit (a temporary ``git worktree``, the same virtual environment)
on the same file, into a fresh cache, and then compares the two caches' results, entry by entry. Usage::

    python benchmarks/precompute_memory.py                               # vgg16-full, convnext_xlarge, resnet50
    python benchmarks/precompute_memory.py --before 9877925 --models vgg16-full
    python benchmarks/precompute_memory.py --weights-dir /tmp/bench-weights   # keep the generated files

The >= 1 GB model is timm's ConvNeXt-XL (350 M parameters, 1.40 GB of fp32): a real CNN (7x7 depthwise
convs, pointwise linears) whose file is bigger than the 1 GB the target allows on top of it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the cache reader, run as a script from anywhere

from precompute.cache import Cache, ResultKey  # noqa: E402  (torch-free)
#: short name -> architecture (convscope's or a library's by name)
MODELS = {"vgg16-full": "vgg16-full", "convnext-xlarge": "timm:convnext_xlarge",
          "resnet50": "torchvision:resnet50"}

_WRITE = """
import sys, torch
from safetensors.torch import save_file
from precompute.architectures import build
torch.manual_seed(0)
m = build(sys.argv[1])
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, sys.argv[2])
"""


def _env(code: Path, data: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    env.update(PYTHONPATH=str(code), CONVSCOPE_DATA_DIR=str(data), CONVSCOPE_REFERENCE_DIR=str(data / "noref"),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    return env


def weights_file(arch: str, folder: Path) -> Path:
    """The seeded random state dict of ``arch`` as safetensors (written once, in its own process)."""
    path = folder / (arch.replace(":", "_") + ".safetensors")
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.safetensors")
        subprocess.run([sys.executable, "-c", _WRITE, arch, str(tmp)], cwd=REPO, env=_env(REPO, folder / "gen"),
                       check=True)
        os.replace(tmp, path)
    return path


def precompute(code: Path, arch: str, weights: Path, data: Path) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of one precompute of ``weights`` by the code in ``code``."""
    env = _env(code, data)
    add = [sys.executable, "-m", "precompute.cli", "add", str(weights), "--arch", arch, "--name", "bench"]
    done = subprocess.run(add, cwd=code, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{code}: convscope add failed: {done.stderr[-2000:]}")
    cmd = [sys.executable, "-m", "precompute.cli", "precompute", "bench", "--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{code}: precompute failed (exit {proc.returncode}): {out[-2000:].decode(errors='replace')}")
    return usage.ru_maxrss * 1024, wall  # Linux reports kilobytes


def same_results(a: Path, b: Path) -> tuple[bool, int, list[str]]:
    """Whether the two data dirs hold the same precompute of model ``bench``: the same weights sha256 and,
    for every analysis and layer, the same cached result (the JSON data, compared exactly). Returns
    (same, entries compared, what differs)."""
    ra, rb = Cache(a / "cache").get_model("bench"), Cache(b / "cache").get_model("bench")
    if ra["weights_sha256"] != rb["weights_sha256"]:
        return False, 0, ["weights_sha256"]
    n, diff = 0, []
    for analysis, info in ra["analyses"].items():
        key = ResultKey(ra["weights_sha256"], analysis, info["version"], info["params"])
        for layer in info["layers"]:
            ea, eb = Cache(a / "cache").get(key, layer), Cache(b / "cache").get(key, layer)
            n += 1
            if ea is None or eb is None or ea.data != eb.data:
                diff.append(f"{analysis}:{layer}")
    return not diff, n, diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--before", help="also run the code of this earlier commit (e.g. 9877925)")
    ap.add_argument("--weights-dir", type=Path, help="where the random weight files are kept (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        codes = []
        if args.before:
            before = tmp / "before"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before],
                           check=True, capture_output=True)
            codes.append((f"before ({args.before})", before))
        codes.append(("now", REPO))
        notes: list[str] = []
        print("| model | file | code | peak RSS | peak - file | peak / file | wall time |")
        print("|---|---:|---|---:|---:|---:|---:|")
        try:
            for short in args.models:
                arch = MODELS[short]
                weights = weights_file(arch, args.weights_dir or tmp / "weights")
                size = weights.stat().st_size
                datas = []
                for label, code in codes:
                    datas.append(Path(tempfile.mkdtemp(dir=tmp)))
                    peak, wall = precompute(code, arch, weights, datas[-1])
                    print(f"| {short} | {size / 1e6:,.0f} MB | {label} | {peak / 1e6:,.0f} MB | "
                          f"{(peak - size) / 1e6:,.0f} MB | {peak / size:.2f} | {wall:.1f} s |", flush=True)
                if len(datas) == 2:
                    same, n, diff = same_results(*datas)
                    notes.append(f"{short}: {n} cached results compared, "
                                 + ("all identical" if same else f"{len(diff)} differ: {', '.join(diff[:10])}"))
                for d in datas:  # the uploaded copy of the weights: a GB each for the big model
                    shutil.rmtree(d, ignore_errors=True)
            for line in notes:
                print(line)
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "before")],
                               capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

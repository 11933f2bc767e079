"""Print what the analyses show on the zoo's real models, from a precomputed cache (RESULTS.md quotes it).

    .venv/bin/convscope precompute --all
    .venv/bin/python benchmarks/findings.py [--data-dir DIR] [--json]

Per model: the symmetry profile of the mean kernels (strided layers marked *, unevenly padded ones !),
the banding index of the last two NMF layers, the share of |gamma| < 0.01 / 0.1 over all BatchNorm
channels, and, for the first conv-to-conv pair fed by an RGB layer, where the colour axis appears in the
SVD of |W|: the correlation of each RGB filter's colourfulness with its coordinate on the first right
singular vectors and on the first centred principal components (the branch-specialization article finds
colour vs. black-and-white on one of the leading components). Reads only the cache (no torch needed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precompute.cache import Cache, CorruptEntry, ResultKey  # noqa: E402

#: the models of RESULTS.md's real-model section: trained ones first, then their random twins
MODELS = ["vgg16-hed", "vgg16-bn-craft", "mobilenet-v2-imagenet", "mobilenet-v2-imagenet-b",
          "efficientnet-lite0-imagenet", "efficientnet-lite1-imagenet", "efficientnet-lite2-imagenet",
          "cifar10-cnn", "resnet20-cifar10", "resnet32-cifar10", "resnet44-cifar10", "resnet56-cifar10",
          "vgg16-random", "vgg16-bn-random", "mobilenet-v2-random", "efficientnet-lite0-random", "cifar10-cnn-random",
          "resnet20-random", "resnet56-random"]


def result(cache: Cache, rec: dict, analysis: str, layer: str):
    info = rec.get("analyses", {}).get(analysis)
    if not info or layer not in info.get("layers", []):
        return None
    try:
        entry = cache.get(ResultKey(rec["weights_sha256"], analysis, info["version"], info["params"]), layer)
    except CorruptEntry:
        return None
    return None if entry is None else entry.data


def corr(a: list[float], b: list[float]) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    sa = math.sqrt(sum((x - ma) ** 2 for x in a))
    sb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return sum((x - ma) * (y - mb) for x, y in zip(a, b)) / (sa * sb) if sa > 0 and sb > 0 else 0.0


def colour_axis(cache: Cache, rec: dict) -> dict | None:
    """The first layer whose SVD feeder is an RGB conv: |corr(colourfulness, coordinate)| per component."""
    for row in sorted(rec["inventory"], key=lambda r: r.get("index", 0)):
        res = result(cache, rec, "svd", row["name"])
        if not res or res["feeder_property"]["name"] != "colourfulness":
            continue
        colour = res["feeder_property"]["values"]
        v = res["v"]  # (N1, k): the feeder's neurons on the right singular vectors
        vc = res["pca"]["v"]
        k = min(len(v[0]), 4)
        return {
            "layer": row["name"], "feeder": res["feeder"], "feeder_neurons": len(colour),
            "singular_values": [round(s, 3) for s in res["singular_values"][:4]],
            "corr_svd": [round(abs(corr(colour, [r[i] for r in v])), 3) for i in range(k)],
            "corr_pca": [round(abs(corr(colour, [r[i] for r in vc])), 3) for i in range(min(len(vc[0]), 4))],
            "pca_explained": [round(x, 3) for x in res["pca"]["explained_variance_ratio"][:4]],
        }
    return None


def summary(cache: Cache, name: str) -> dict | None:
    try:
        rec = cache.get_model(name)
    except CorruptEntry:
        return None
    if not rec:
        return None
    inv = sorted(rec["inventory"], key=lambda r: r.get("index", 0))
    sc = rec.get("scalars", {})
    sym = [(r["name"], sc[r["name"]]["symmetry"], max(r.get("stride") or [1]) > 1, bool(r.get("uneven_padding")))
           for r in inv if "symmetry" in sc.get(r["name"], {})]
    band = [(r["name"], sc[r["name"]]["banding_index"]) for r in inv if "banding_index" in sc.get(r["name"], {})]
    # BatchNorm: channel-weighted share of small |gamma| over the whole model
    num = {t: 0.0 for t in ("0.01", "0.1")}
    den = 0
    for r in inv:
        if r.get("type") != "batchnorm" or f"gamma_below_0.01" not in sc.get(r["name"], {}):
            continue
        n = (r.get("weight_shape") or [0])[0]
        den += n
        for t in num:
            num[t] += n * sc[r["name"]][f"gamma_below_{t}"]
    strided = [s for _, s, st, _ in sym if st]
    unstrided = [s for _, s, st, _ in sym if not st]
    return {
        "model": name,
        "symmetry": [{"layer": l, "S": round(s, 3), "strided": st, "uneven": un} for l, s, st, un in sym],
        "mean_S_unstrided": round(sum(unstrided) / len(unstrided), 3) if unstrided else None,
        "mean_S_strided": round(sum(strided) / len(strided), 3) if strided else None,
        "banding_last_two": [round(b, 3) for _, b in band[-2:]],
        "gamma_below": {t: round(num[t] / den, 4) for t in num} if den else None,
        "colour_axis": colour_axis(cache, rec),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CONVSCOPE_DATA_DIR", "~/.convscope")))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("models", nargs="*", default=MODELS)
    args = ap.parse_args()
    cache = Cache(Path(os.environ.get("CONVSCOPE_CACHE_DIR", args.data_dir.expanduser() / "cache")))
    rows = [s for s in (summary(cache, m) for m in args.models) if s]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for s in rows:
        prof = " ".join(f"{x['S']:.2f}{'*' if x['strided'] else ''}{'!' if x['uneven'] else ''}" for x in s["symmetry"])
        print(f"## {s['model']}")
        print(f"  symmetry profile: {prof}")
        print(f"  mean S unstrided {s['mean_S_unstrided']}, strided {s['mean_S_strided']}; "
              f"banding last two {s['banding_last_two']}; |gamma| < 0.01 / < 0.1: {s['gamma_below']}")
        if s["colour_axis"]:
            c = s["colour_axis"]
            print(f"  colour axis ({c['feeder']} -> {c['layer']}, {c['feeder_neurons']} RGB filters): "
                  f"|corr(colourfulness, v_i)| = {c['corr_svd']}, centred PCA {c['corr_pca']} "
                  f"(explained {c['pca_explained']}); singular values {c['singular_values']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

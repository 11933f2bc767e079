"""Limits and fixed lists with one home each. The server checks requests against them, the workers
compute with them, and the pages get them in their boot data (:func:`public`), so the JavaScript and
the templates hold no copies.

Torch-free (the ground floor, see ``precompute/declarations/__init__.py``).
"""

from __future__ import annotations

#: clusters (/api/clusters, the compare and experiment pages): the cluster counts offered; the weight-
#: banding article's figure 12 uses 4..19
CLUSTER_K_MIN, CLUSTER_K_MAX = 4, 19
#: the cluster count shown when none is asked for
CLUSTER_K_DEFAULT = 8
#: /api/clusters takes, and the pages show, at most this many (model, layer) pairs at once
MAX_CLUSTER_PAIRS = 16

#: file extensions of torch checkpoints: safetensors, or a torch file read with weights_only (no pickled code)
CHECKPOINT_EXTENSIONS = (".safetensors", ".pt", ".pth", ".th")

#: files analysed without an architecture in code (precompute/graphs/): the ``--arch`` value of each format
#: (also an upload's arch; empty means "the one the extension says") -> (its extensions, picked by extension
#: alone). "none": weights without a graph, only by name.
FILE_FORMATS = {
    "onnx": ((".onnx",), True),
    "keras": ((".h5", ".keras"), True),
    "none": (CHECKPOINT_EXTENSIONS, False),
}

#: file extensions accepted for user models (uploads and ``convscope add``): checkpoints and graph files
UPLOAD_EXTENSIONS = CHECKPOINT_EXTENSIONS + tuple(
    e for exts, _ in FILE_FORMATS.values() for e in exts if e not in CHECKPOINT_EXTENSIONS)


#: the arch that asks convscope to find the architecture: a graph file's format from its extension, a
#: state dict's architecture from its keys and shapes (precompute/archmatch.py)
AUTO_ARCH = "auto"


def file_format(arch: str, filename: str) -> str | None:
    """The graph-file format an upload or ``convscope add`` names: ``arch`` itself when it is one
    (``onnx``, ``keras``, ``none``), the format the extension says when ``arch`` is empty (or ``auto``), else
    None (an architecture in code). ValueError when the two disagree."""
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if arch in FILE_FORMATS:
        exts = FILE_FORMATS[arch][0]
        if suffix not in exts:
            raise ValueError(f"arch {arch!r} reads {', '.join(exts)} files; got {filename[:100]!r}")
        return arch
    by_ext = next((f for f, (exts, auto) in FILE_FORMATS.items() if auto and suffix in exts), None)
    if by_ext and arch == AUTO_ARCH:  # --arch auto: a file with its graph needs no guess
        return by_ext
    if by_ext and arch:
        raise ValueError(f"a {suffix} file carries its graph: leave the architecture empty (or give {by_ext!r}), "
                         f"not {arch[:100]!r}")
    if not arch and not by_ext:
        raise ValueError(f"a {suffix or 'file without extension'} file does not carry its graph: name its "
                         f"architecture, '{AUTO_ARCH}' to find it from the keys and shapes, or 'none' for the "
                         f"analyses of the weights alone")
    return by_ext

#: what a job does: precompute a model, register and precompute an uploaded checkpoint, train variants
JOB_KINDS = ("precompute", "upload", "train")

#: BatchNorm |gamma| thresholds below which a channel counts as (nearly) switched off; 0.01 is the
#: training-BatchNorm-only paper's, as written in the cache's scalar keys (``gamma_below_0.01``)
GAMMA_THRESHOLDS = ("0.01", "0.05", "0.1")
#: the threshold of the findings' and experiments' headline "switched off" share
GAMMA_OFF = GAMMA_THRESHOLDS[0]
#: the threshold the compare page's "small |gamma| along depth" chart draws: 0.05 rather than 0.01, because
#: normally trained nets have almost no |gamma| < 0.01 (0 to 3.5 % in the zoo), so their lines would lie flat at 0
GAMMA_COMPARE = GAMMA_THRESHOLDS[1]

#: label shuffles of the branch tests' permutation test (precompute/analyses/branch_stats.py); the smallest p
#: value they can give is 1 / (BRANCH_PERMUTATIONS + 1). A change alters cached p values: bump svd's version
BRANCH_PERMUTATIONS = 1000


def int_range_pattern(low: int, high: int) -> str:
    """A JSON-schema (ECMA) pattern for the integers ``low..high`` written plainly (0 <= low <= high < 100):
    ``int_range_pattern(4, 19) == "^(?:[4-9]|1[0-9])$"``."""
    if not 0 <= low <= high < 100:
        raise ValueError(f"int_range_pattern covers 0..99; got {low}..{high}")
    parts = []
    for tens in range(low // 10, high // 10 + 1):
        first, last = max(low, 10 * tens) % 10, min(high, 10 * tens + 9) % 10
        digits = str(first) if first == last else f"[{first}-{last}]"
        parts.append((str(tens) if tens else "") + digits)
    return "^(?:" + "|".join(parts) + ")$"


#: the OpenAPI pattern of the k parameter
CLUSTER_K_PATTERN = int_range_pattern(CLUSTER_K_MIN, CLUSTER_K_MAX)


def public() -> dict:
    """The limits the pages' JavaScript and templates use (the ``limits`` of every page's boot data)."""
    return {"k_min": CLUSTER_K_MIN, "k_max": CLUSTER_K_MAX, "k_default": CLUSTER_K_DEFAULT,
            "max_pairs": MAX_CLUSTER_PAIRS, "gamma_thresholds": list(GAMMA_THRESHOLDS), "gamma_off": GAMMA_OFF,
            "gamma_compare": GAMMA_COMPARE,
            "upload_extensions": list(UPLOAD_EXTENSIONS),
            "graph_extensions": [e for exts, carries in FILE_FORMATS.values() if carries for e in exts]}

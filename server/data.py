"""What the explorer computes from the cache. No HTTP here (routes in api.py and pages.py only speak
HTTP over these functions) and no torch anywhere: only the cache, json and numpy.

Every name a client sends is validated with :mod:`precompute.names` and then looked up in the model
record before any file is touched, so nothing a client sends reaches a path unchecked. Errors are
:class:`ExplorerError` subclasses whose message names the bad value and what exists.

Cached results are served as the entry's payload bytes (never re-encoded), wrapped in
``{"meta": ..., "data": ...}``, kept in a small in-memory LRU keyed by (path, mtime, size) together
with a gzip of the body, and tagged with the payload sha256 from the entry header (the ETag).
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any, Callable, Optional

from precompute.cache import Cache, CorruptEntry, ResultKey, canonical_json, decode_entry
from precompute.names import InvalidName, check_analysis_name, check_layer_name, check_model_name
from precompute.settings import Settings

#: bodies at least this long are kept gzipped next to the plain bytes
GZIP_MIN = 1000
#: version of the computed (non-cached) JSON shapes; part of their ETags
API_VERSION = "1"
#: the layer types that have neurons (conv/linear: output units; batchnorm: channels)
NEURON_TYPES = ("conv", "linear", "batchnorm")
#: cluster-count bounds for /api/clusters (the article's figure 12 uses 4..19)
K_MIN, K_MAX = 4, 19


# ---- errors ---------------------------------------------------------------------------------------
class ExplorerError(Exception):
    """A client error. ``status`` is the HTTP status; ``extra`` goes into the JSON body."""

    status = 422

    def __init__(self, message: str, **extra: Any):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict:
        return {"detail": self.message, **self.extra}


class NotFound(ExplorerError):
    status = 404


class BadRequest(ExplorerError):
    status = 422


class Conflict(ExplorerError):
    status = 409


class CacheProblem(ExplorerError):
    """The cache holds something that does not verify: the server's problem, not the client's."""

    status = 503


def unknown(kind: str, name: str, known, where: str = "") -> str:
    """``unknown layer 'x' of m; did you mean a, b? Known layers: ...`` (names the bad value and what exists)."""
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}{' of ' + where if where else ''}{hint}. Known {kind}s: {_listing(known)}"


def _listing(items, limit: int = 40) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "") if items else "none"


# ---- bodies ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Blob:
    """A JSON response body ready to send: plain bytes, an optional gzip of them and the ETag."""

    body: bytes
    etag: str  # quoted strong ETag
    gz: Optional[bytes] = None

    @classmethod
    def make(cls, body: bytes, digest: Optional[str] = None) -> "Blob":
        digest = digest or hashlib.sha256(body).hexdigest()
        gz = gzip.compress(body, compresslevel=6, mtime=0) if len(body) >= GZIP_MIN else None
        return cls(body=body, etag=f'"{digest}"', gz=gz)

    @classmethod
    def of(cls, obj: Any) -> "Blob":
        body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
        return cls.make(body, hashlib.sha256(API_VERSION.encode() + body).hexdigest())

    @property
    def size(self) -> int:
        return len(self.body) + (len(self.gz) if self.gz else 0)

    @property
    def data(self) -> Any:
        return json.loads(self.body)


class LRU:
    """A thread-safe LRU bounded by entries and bytes (``sizeof(value)``)."""

    def __init__(self, max_items: int = 512, max_bytes: int = 256 << 20,
                 sizeof: Callable[[Any], int] = lambda v: 1):
        self.max_items, self.max_bytes, self.sizeof = max_items, max_bytes, sizeof
        self._d: "OrderedDict[Any, tuple[Any, int]]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            item = self._d.get(key)
            if item is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key, value) -> None:
        size = self.sizeof(value)
        with self._lock:
            old = self._d.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._d[key] = (value, size)
            self._bytes += size
            while self._d and (len(self._d) > self.max_items or self._bytes > self.max_bytes):
                _, (_, s) = self._d.popitem(last=False)
                self._bytes -= s

    def __len__(self) -> int:
        return len(self._d)


def _stamp(path) -> Optional[tuple[str, int, int]]:
    """(path, mtime_ns, size): what the in-memory caches are keyed by; None when the file is absent."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (path if isinstance(path, str) else str(path), st.st_mtime_ns, st.st_size)


# ---- the explorer ---------------------------------------------------------------------------------
class Explorer:
    """Read-side of the cache for the API and the pages. One per app (``app.state.explorer``)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache = Cache(settings.cache)
        self._blobs = LRU(1024, 256 << 20, sizeof=lambda b: b.size)
        self._parsed = LRU(256)
        self._computed = LRU(512, 128 << 20, sizeof=lambda b: b.size)
        self._records: dict[str, tuple[tuple, dict]] = {}
        self._paths: dict[tuple, tuple[dict, str]] = {}
        self._model_files: dict[str, str] = {}
        self._lock = threading.Lock()

    # ---- names and records ----------------------------------------------------------------------
    def model_names(self) -> list[str]:
        names = []
        for n in self.cache.list_models():
            try:
                names.append(check_model_name(n))
            except InvalidName:
                continue
        return names

    def record(self, model: str) -> dict:
        """The model record (cached per file stamp). 422 for a malformed name, 404 for an unknown one."""
        path = self._model_files.get(model)
        if path is None:
            try:
                check_model_name(model)
            except InvalidName as e:
                raise BadRequest(f"{e}. Known models: {_listing(self.model_names())}", known=self.model_names()) from None
            path = str(self.cache.model_path(model))
            with self._lock:
                if len(self._model_files) > 10000:
                    self._model_files.clear()
                self._model_files[model] = path
        stamp = _stamp(path)
        if stamp is None:
            known = self.model_names()
            raise NotFound(unknown("model", model, known) + f" (if {model} is in the zoo, precompute it with "
                           f"`convscope precompute {model}`)", known=known)
        with self._lock:
            hit = self._records.get(model)
        if hit and hit[0] == stamp:
            return hit[1]
        try:
            entry = self.cache.read(Path(path))
        except CorruptEntry as e:
            raise CacheProblem(f"the cached record of {model} does not verify ({e}); "
                               f"re-run `convscope precompute {model}`") from None
        if entry is None:
            raise NotFound(unknown("model", model, self.model_names()), known=self.model_names())
        rec = entry.data
        rec.setdefault("analyses", {})
        rec.setdefault("scalars", {})
        rec.setdefault("errors", {})
        rec["_stamp"] = stamp
        rec["_rows"] = {r["name"]: r for r in rec.get("inventory", [])}
        with self._lock:
            self._records[model] = (stamp, rec)
        return rec

    def row(self, model: str, layer: str) -> tuple[dict, dict]:
        """(record, inventory row) for a layer; 422 for a malformed name, 404 (with the layers) for an unknown one."""
        rec = self.record(model)
        layers = [r["name"] for r in rec.get("inventory", [])]
        try:
            check_layer_name(layer)
        except InvalidName as e:
            raise BadRequest(f"{e}. Layers of {model}: {_listing(layers)}", known=layers) from None
        row = rec["_rows"].get(layer)
        if row is None:
            raise NotFound(unknown("layer", layer, layers, model), known=layers)
        return rec, row

    # ---- models ---------------------------------------------------------------------------------
    def list_models(self) -> list[dict]:
        out = []
        for name in self.model_names():
            try:
                rec = self.record(name)
            except ExplorerError:
                continue
            out.append(model_summary(rec))
        return out

    def models_blob(self) -> Blob:
        names = self.model_names()
        stamps = tuple(_stamp(self.cache.model_path(n)) for n in names)
        key = ("models", stamps)
        blob = self._computed.get(key)
        if blob is None:
            blob = Blob.of({"models": self.list_models(), "count": len(names)})
            self._computed.put(key, blob)
        return blob

    def model_detail(self, model: str) -> dict:
        rec = self.record(model)
        return {
            "name": rec["name"], "spec": rec.get("spec", {}), "summary": model_summary(rec),
            "weights_sha256": rec.get("weights_sha256"), "file_sha256": rec.get("file_sha256"),
            "status": rec.get("status"), "created": rec.get("created"), "device": rec.get("device"),
            "seconds": rec.get("seconds"), "errors": public_errors(rec), "analyses": rec["analyses"],
            "inventory": rec.get("inventory", []), "scalars": rec["scalars"], "profiles": profiles(rec),
        }

    def model_blob(self, model: str) -> Blob:
        rec = self.record(model)
        key = ("model", rec["_stamp"])
        blob = self._computed.get(key)
        if blob is None:
            blob = Blob.of(self.model_detail(model))
            self._computed.put(key, blob)
        return blob

    # ---- layers ---------------------------------------------------------------------------------
    def layer_context(self, model: str, layer: str) -> dict:
        """The layer's row and what relates to it: analyses with a result, the BN that follows it, its
        feeder and consumers, neighbours in execution order and its neuron count."""
        rec, row = self.row(model, layer)
        inv = rec.get("inventory", [])
        available = sorted(a for a, info in rec["analyses"].items() if layer in info.get("layers", []))
        bn = next((r["name"] for r in inv if r.get("type") == "batchnorm" and r.get("follows") == layer), None)
        consumers = [r["name"] for r in inv if r.get("feeds_from") == layer]
        svd_consumers = [c for c in consumers if c in rec["analyses"].get("svd", {}).get("layers", [])]
        order = [r["name"] for r in sorted(inv, key=lambda r: r.get("index", 0))]
        pos = order.index(layer)
        return {
            "model": model, "layer": layer, "row": row, "analyses": available,
            "scalars": rec["scalars"].get(layer, {}), "bn": bn,
            "bn_analyses": sorted(a for a, info in rec["analyses"].items() if bn and bn in info.get("layers", [])),
            "follows": row.get("follows"), "feeds_from": row.get("feeds_from"), "consumers": consumers,
            "svd_consumers": svd_consumers,
            "prev": order[pos - 1] if pos > 0 else None, "next": order[pos + 1] if pos + 1 < len(order) else None,
            "neurons": neuron_count(row), "family": rec.get("spec", {}).get("family"),
        }

    def layer_context_blob(self, model: str, layer: str) -> Blob:
        rec, _ = self.row(model, layer)
        key = ("layer", rec["_stamp"], layer)
        blob = self._computed.get(key)
        if blob is None:
            blob = Blob.of(self.layer_context(model, layer))
            self._computed.put(key, blob)
        return blob

    def _result_path(self, model: str, layer: str, analysis: str) -> tuple[dict, str]:
        rec = self.record(model)
        hit = self._paths.get((rec["_stamp"], layer, analysis))
        if hit is not None:
            return hit
        out = self._result_path_uncached(model, layer, analysis)
        with self._lock:
            if len(self._paths) > 20000:
                self._paths.clear()
            self._paths[(rec["_stamp"], layer, analysis)] = out
        return out

    def _result_path_uncached(self, model: str, layer: str, analysis: str) -> tuple[dict, str]:
        rec, row = self.row(model, layer)
        known = sorted(rec["analyses"])
        try:
            check_analysis_name(analysis)
        except InvalidName as e:
            raise BadRequest(f"{e}. Analyses of {model}: {_listing(known)}", known=known) from None
        info = rec["analyses"].get(analysis)
        if info is None:
            raise NotFound(unknown("analysis", analysis, known, model).replace("analysiss", "analyses"), known=known)
        if layer not in info.get("layers", []):
            have = sorted(a for a, i in rec["analyses"].items() if layer in i.get("layers", []))
            raise NotFound(f"no {analysis} result for layer {layer!r} of {model} (a {row.get('type')} layer); "
                           f"analyses with a result for it: {_listing(have)}", known=have)
        key = ResultKey(rec["weights_sha256"], analysis, int(info.get("version", 1)), info.get("params", {}))
        return rec, str(self.cache.result_path(key, layer))

    def result_blob(self, model: str, layer: str, analysis: str) -> Blob:
        """The cached result as ``{"meta": ..., "data": ...}``: the payload bytes as stored, not re-encoded."""
        _, path = self._result_path(model, layer, analysis)
        stamp = _stamp(path)
        if stamp is None:
            raise NotFound(f"the {analysis} result of {model} / {layer} is listed in the model record but not in "
                           f"the cache; re-run `convscope precompute {model}`")
        blob = self._blobs.get(stamp)
        if blob is None:
            try:
                raw = Path(path).read_bytes()
                entry = decode_entry(raw, Path(path))
            except CorruptEntry as e:
                raise CacheProblem(f"the cached {analysis} result of {model} / {layer} does not verify ({e}); "
                                   f"re-run `convscope precompute {model} --force`") from None
            except FileNotFoundError:
                raise NotFound(f"the {analysis} result of {model} / {layer} vanished; re-run precompute") from None
            head = raw.partition(b"\n")[0]
            digest = json.loads(head)["sha256"]
            body = b'{"meta":' + canonical_json(entry.meta) + b',"data":' + entry.payload + b"}"
            blob = Blob.make(body, digest)
            self._blobs.put(stamp, blob)
        return blob

    def result_data(self, model: str, layer: str, analysis: str) -> Any:
        """The parsed ``data`` of a cached result (kept parsed in an LRU)."""
        _, path = self._result_path(model, layer, analysis)
        stamp = _stamp(path)
        hit = self._parsed.get(stamp) if stamp else None
        if hit is not None:
            return hit
        blob = self.result_blob(model, layer, analysis)
        data = json.loads(blob.body)["data"]
        self._parsed.put(_stamp(path), data)
        return data

    def _maybe(self, model: str, layer: Optional[str], analysis: str) -> Any:
        if not layer:
            return None
        rec = self.record(model)
        if layer not in rec["analyses"].get(analysis, {}).get("layers", []):
            return None
        try:
            return self.result_data(model, layer, analysis)
        except NotFound:
            return None

    # ---- neurons --------------------------------------------------------------------------------
    def neuron(self, model: str, layer: str, i: Any) -> dict:
        """Everything about neuron ``i`` of ``layer``: NMF image and error, position in the sorted order
        with neighbours, raw kernels of its strongest input channels, gamma/beta of the BN that follows the
        layer, and its SVD coordinates (as this layer's neuron, and as the feeder of the next layer)."""
        ctx = self.layer_context(model, layer)
        n = ctx["neurons"]
        i = self.neuron_index(model, layer, ctx["row"], i)
        out: dict[str, Any] = {"model": model, "layer": layer, "neuron": i, "neurons": n,
                               "row": ctx["row"], "analyses": ctx["analyses"]}
        nmf = self._maybe(model, layer, "nmf")
        if nmf:
            order = list(nmf["order"])
            pos = order.index(i) if i in order else None
            near = []
            if pos is not None:
                for p in range(max(0, pos - 6), min(len(order), pos + 7)):
                    j = order[p]
                    near.append({"neuron": j, "position": p, "image": nmf["images"][j]})
            out["nmf"] = {
                "image": nmf["images"][i], "error": _at(nmf.get("error"), i), "energy": _at(nmf.get("energy"), i),
                "kernel": nmf.get("kernel"), "rank": nmf.get("rank"), "position": pos,
                "prev": order[pos - 1] if pos is not None and pos > 0 else None,
                "next": order[pos + 1] if pos is not None and pos + 1 < len(order) else None,
                "neighbours": near, "banding_index": nmf.get("banding_index"),
            }
        else:
            out["nmf"] = None
        kern = self._maybe(model, layer, "kernels")
        out["kernels"] = None if not kern else {
            "top_channels": kern["top_channels"][i], "kernels": kern["kernels"][i], "norms": kern["norms"][i]}
        bn_layer = layer if ctx["row"].get("type") == "batchnorm" else ctx["bn"]
        bn = self._maybe(model, bn_layer, "batchnorm")
        out["batchnorm"] = None if not bn else {
            "layer": bn_layer, "gamma": bn["gamma"][i], "beta": bn["beta"][i],
            "gamma_rank": _rank(bn["gamma"], i, absolute=True), "channels": len(bn["gamma"]),
            "gammas": bn["gamma"], "betas": bn["beta"]}
        svd = self._maybe(model, layer, "svd")
        out["svd"] = None if not svd else {
            "as": "layer", "layer": layer, "feeder": svd.get("feeder"), "u": svd["u"][i],
            "pca_u": svd.get("pca", {}).get("u", [None] * (i + 1))[i],
            "singular_values": svd.get("singular_values")}
        out["svd_as_feeder"] = []
        for c in ctx["svd_consumers"]:
            s2 = self._maybe(model, c, "svd")
            if s2 and i < len(s2["v"]):
                prop = s2.get("feeder_property") or {}
                vals = prop.get("values") or []
                out["svd_as_feeder"].append({
                    "layer": c, "v": s2["v"][i], "pca_v": (s2.get("pca", {}).get("v") or [None] * (i + 1))[i],
                    "property": {"name": prop.get("name"), "value": vals[i] if i < len(vals) else None}})
        return out

    @staticmethod
    def neuron_index(model: str, layer: str, row: dict, i: Any) -> int:
        """``i`` as an index in 0..N-1 of the layer: 422 when not an integer, 404 when out of range."""
        n = neuron_count(row)
        if not n:
            raise NotFound(f"layer {layer!r} of {model} has no neurons to show", known=[])
        if not isinstance(i, int):
            text = str(i).strip()
            if not (text.isascii() and text.lstrip("-").isdigit() and len(text) < 12):
                raise BadRequest(f"neuron must be an integer index in 0..{n - 1} for layer {layer!r} of {model}; "
                                 f"got {i!r}", range=[0, n - 1])
            i = int(text)
        if i < 0 or i >= n:
            raise NotFound(f"neuron {i} is out of range for layer {layer!r} of {model}: it has {n} neurons "
                           f"(0..{n - 1})", range=[0, n - 1])
        return i

    def neuron_blob(self, model: str, layer: str, i: Any) -> Blob:
        rec, row = self.row(model, layer)
        i = self.neuron_index(model, layer, row, i)
        key = ("neuron", rec["_stamp"], layer, i)
        blob = self._computed.get(key)
        if blob is None:
            blob = Blob.of(self.neuron(model, layer, i))
            self._computed.put(key, blob)
        return blob

    # ---- clusters -------------------------------------------------------------------------------
    def parse_pairs(self, pairs: str) -> list[tuple[str, str]]:
        """``"model:layer,model:layer"`` -> validated pairs, each with an NMF result."""
        if not isinstance(pairs, str) or not pairs.strip():
            raise BadRequest("pairs is required: comma-separated model:layer, e.g. "
                             "pairs=resnet20-cifar10:layer1.0.conv1,resnet20-random:layer1.0.conv1")
        out: list[tuple[str, str]] = []
        for part in pairs.split(","):
            part = part.strip()
            model, sep, layer = part.partition(":")
            if not sep or not model or not layer:
                raise BadRequest(f"pair {part!r} is not model:layer (e.g. resnet20-cifar10:layer1.0.conv1)")
            rec, row = self.row(model, layer)
            nmf_layers = rec["analyses"].get("nmf", {}).get("layers", [])
            if layer not in nmf_layers:
                raise NotFound(f"layer {layer!r} of {model} has no NMF result (1x1, linear and BN layers have none); "
                               f"layers with one: {_listing(nmf_layers)}", known=list(nmf_layers))
            if (model, layer) in out:
                raise BadRequest(f"pair {model}:{layer} is given twice")
            out.append((model, layer))
        if len(out) > 16:
            raise BadRequest(f"at most 16 pairs; got {len(out)}")
        return out

    def clusters(self, pairs: str, k: Any = 8) -> dict:
        """k-means over the normalised NMF reduced forms of several (model, layer) pairs; per pair, the
        share of its neurons in each cluster (the weight-banding article's figure 12)."""
        parsed = self.parse_pairs(pairs)
        k = parse_int(k, "k", K_MIN, K_MAX)
        datas = [self.result_data(m, l, "nmf") for m, l in parsed]
        return compute_clusters(parsed, [d["images"] for d in datas], k)

    def clusters_blob(self, pairs: str, k: Any = 8) -> Blob:
        parsed = self.parse_pairs(pairs)
        k_int = parse_int(k, "k", K_MIN, K_MAX)
        stamps = tuple(self.record(m)["_stamp"] for m, _ in parsed)
        key = ("clusters", tuple(parsed), k_int, stamps)
        blob = self._computed.get(key)
        if blob is None:
            blob = Blob.of(self.clusters(pairs, k_int))
            self._computed.put(key, blob)
        return blob


# ---- pure helpers -----------------------------------------------------------------------------------
def _at(seq, i):
    return seq[i] if seq is not None and i < len(seq) else None


def _rank(values, i, absolute=False) -> Optional[float]:
    """Share of values (by |.| when absolute) below values[i], in [0, 1]."""
    if not values:
        return None
    key = (lambda v: abs(v)) if absolute else (lambda v: v)
    x = key(values[i])
    return sum(1 for v in values if key(v) < x) / len(values)


def parse_int(value: Any, name: str, lo: int, hi: int) -> int:
    try:
        v = int(str(value).strip())
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer in {lo}..{hi}; got {value!r}", range=[lo, hi]) from None
    if v < lo or v > hi:
        raise BadRequest(f"{name} must be in {lo}..{hi}; got {v}", range=[lo, hi])
    return v


def neuron_count(row: dict) -> Optional[int]:
    if row.get("type") in ("conv", "linear"):
        shape = row.get("weight_shape") or []
        return int(row.get("out_channels") or (shape[0] if shape else 0)) or None
    if row.get("type") == "batchnorm":
        shape = row.get("weight_shape") or []
        return int(shape[0]) if shape else None
    return None


def public_errors(rec: dict) -> dict:
    return {k: v for k, v in rec.get("errors", {}).items() if not k.endswith(":traceback")}


def model_summary(rec: dict) -> dict:
    spec = rec.get("spec", {}) or {}
    inv = rec.get("inventory", [])
    count = lambda t: sum(1 for r in inv if r.get("type") == t)  # noqa: E731
    source = spec.get("source") or {}
    prof = profiles(rec)
    return {
        "name": rec.get("name"), "arch": spec.get("arch"), "dataset": spec.get("dataset"),
        "family": spec.get("family", "real"), "source": source.get("kind") if isinstance(source, dict) else source,
        "source_detail": source, "accuracy": spec.get("accuracy"), "description": spec.get("description", ""),
        "origin": spec.get("origin", ""), "license": spec.get("license", ""), "input_size": spec.get("input_size"),
        "status": rec.get("status"), "created": rec.get("created"),
        "layers": {"conv": count("conv"), "linear": count("linear"), "batchnorm": count("batchnorm")},
        "params": sum(int(r.get("params") or 0) for r in inv if r.get("type") in ("conv", "linear")),
        "weights_sha256": rec.get("weights_sha256"), "errors": len(public_errors(rec)),
        "symmetry_profile": [round(p["value"], 4) for p in prof["symmetry"]],
        "mean_symmetry": (sum(p["value"] for p in prof["symmetry"]) / len(prof["symmetry"])) if prof["symmetry"] else None,
    }


def _finite(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def profiles(rec: dict) -> dict:
    """Depth profiles for the model page: symmetry (conv, with strided/uneven flags), banding index,
    share of small |gamma| (per BN layer) and weight sparsity (conv and linear), in execution order."""
    inv = sorted(rec.get("inventory", []), key=lambda r: r.get("index", 0))
    sc = rec.get("scalars", {})
    sym, band, gam, spars = [], [], [], []
    convs = [r for r in inv if r.get("type") == "conv"]
    depth = {r["name"]: (i / (len(convs) - 1) if len(convs) > 1 else 0.0) for i, r in enumerate(convs)}
    for r in inv:
        s = sc.get(r["name"], {})
        strided = any(int(x) > 1 for x in (r.get("stride") or [1]))
        base = {"layer": r["name"], "index": r.get("index"), "depth": depth.get(r["name"]),
                "label": r["name"] + ("*" if strided else "")}
        if r.get("type") == "conv":
            v = _finite(s.get("symmetry"))
            if v is not None:
                sym.append({**base, "value": v, "strided": strided, "uneven": bool(r.get("uneven_padding")),
                            "uneven_detail": r.get("uneven_detail"), "kernel": r.get("kernel"),
                            "depthwise": bool(r.get("depthwise"))})
            v = _finite(s.get("banding_index"))
            if v is not None:
                band.append({**base, "value": v, "nmf_error": _finite(s.get("nmf_error"))})
        if r.get("type") in ("conv", "linear"):
            v = _finite(s.get("sparsity"))
            if v is not None:
                spars.append({**base, "value": v, "kurtosis": _finite(s.get("kurtosis")), "type": r.get("type")})
        if r.get("type") == "batchnorm":
            vals = {t: _finite(s.get(f"gamma_below_{t}")) for t in ("0.01", "0.05", "0.1")}
            if any(v is not None for v in vals.values()):
                follows = r.get("follows")
                gam.append({**base, "follows": follows, "depth": depth.get(follows) if follows else None,
                            "values": vals})
    return {"symmetry": sym, "banding": band, "gamma": gam, "sparsity": spars}


_TINY = 1e-30


def _to_list(x, digits: int = 6):
    """Round to ``digits`` significant digits, as precompute.analyses.base.to_list (small JSON)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(x == 0, 0, np.floor(np.log10(np.abs(np.where(x == 0, 1, x)))))
    scale = 10.0 ** (digits - 1 - mag)
    return (np.round(x * scale) / scale).tolist()


def align_colours(W, rounds: int = 3):
    """Numpy port of ``precompute.analyses.nmf_core.align_colours(W, start="identity")`` (which needs
    torch): permute each neuron's r factors so that colour j means the same across the batch.
    W: (B, P, r). Returns perm (B, r) with out[:, :, j] = W[:, :, perm[:, j]]."""
    import numpy as np

    B, P, r = W.shape
    perms = np.array(list(permutations(range(r))))  # (p, r), the same order as itertools in nmf_core
    U = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), _TINY)
    perm = np.broadcast_to(np.arange(r), (B, r)).copy()
    if B == 0:
        return perm
    cols = np.arange(r)
    for _ in range(rounds):
        ref = np.take_along_axis(U, perm[:, None, :].repeat(P, 1), 2).mean(0)  # (P, r)
        ref = ref / np.maximum(np.linalg.norm(ref, axis=0, keepdims=True), _TINY)
        sim = np.einsum("bpi,pj->bij", U, ref)
        scores = sim[:, perms, cols].sum(-1)  # (B, p)
        new = perms[scores.argmax(axis=1)]
        if np.array_equal(new, perm):
            break
        perm = new
    return perm


def compute_clusters(pairs: list[tuple[str, str]], images: list, k: int, seed: int = 0) -> dict:
    """k-means (k clusters) over the NMF reduced forms of several (model, layer) pairs: the same
    computation as ``precompute.analyses.clusters.compute_clusters`` (the ``clusters`` analysis), in
    numpy + scikit-learn so that the server stays torch-free:

    1. each neuron's factors are re-aligned against the pooled mean of all pairs (colours are only
       consistent within a layer), 2. images flattened to unit L2 norm, 3. ``KMeans(k, random_state=seed,
       n_init=10)``, 4. clusters renumbered by decreasing size (ties: first member).

    images: per pair an array-like (N_p, kh, kw, r). Returns the FORMATS.md ``clusters`` shape plus
    ``labels`` [pairs][N] and ``sizes`` [k].
    """
    import numpy as np
    from sklearn.cluster import KMeans

    arrays = [np.asarray(im, dtype=np.float64) for im in images]
    for (m, l), a in zip(pairs, arrays):
        if a.ndim != 4:
            raise BadRequest(f"{m}:{l}: NMF images must be [N][kh][kw][rank]; got shape {list(a.shape)}")
    shapes = [a.shape[1:] for a in arrays]
    if len(set(shapes)) != 1:
        listing = ", ".join(f"{m}:{l} {s[0]}x{s[1]}" for (m, l), s in zip(pairs, shapes))
        raise BadRequest(f"the layers must have the same kernel size to be clustered together; got {listing}")
    kh, kw, r = shapes[0]
    counts = [int(a.shape[0]) for a in arrays]
    total = sum(counts)
    if k > total:
        raise BadRequest(f"k must be at most the number of neurons ({total}); got {k}", range=[K_MIN, total])
    W = np.concatenate(arrays, 0).reshape(total, kh * kw, r)
    perm = align_colours(W)
    aligned = np.take_along_axis(W, perm[:, None, :].repeat(kh * kw, 1), 2).reshape(total, kh, kw, r)
    feats = aligned.reshape(total, -1)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    feats = np.where(norms > 0, feats / np.where(norms > 0, norms, 1.0), 0.0)
    raw = KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(feats)
    sizes = np.bincount(raw, minlength=k)
    first = [int(np.flatnonzero(raw == c)[0]) if sizes[c] else total for c in range(k)]
    order = sorted(range(k), key=lambda c: (-sizes[c], first[c]))
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    labels = relabel[raw]
    centroids = np.zeros((k, kh, kw, r))
    for c in range(k):
        members = labels == c
        if members.any():
            centroids[c] = aligned[members].mean(0)
    proportions, per_pair, start = [], [], 0
    for n in counts:
        lab = labels[start:start + n]
        proportions.append(np.bincount(lab, minlength=k) / max(n, 1))
        per_pair.append([int(x) for x in lab])
        start += n
    return {
        "pairs": [[m, l] for m, l in pairs], "k": int(k), "proportions": _to_list(np.array(proportions)),
        "centroids": _to_list(centroids), "counts": counts, "labels": per_pair,
        "sizes": [int(sizes[c]) for c in order],
        "method": "as the clusters analysis: factors re-aligned per neuron to the pooled mean, unit-norm images, "
                  f"KMeans(k={k}, n_init=10, random_state={seed}), clusters by decreasing size",
    }

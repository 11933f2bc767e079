"""What the explorer computes from the cache. No HTTP here (routes in api.py and pages.py only speak
HTTP over these functions) and no torch anywhere: only the cache, json and numpy.

Every name a client sends is validated with :mod:`precompute.names` and then looked up in the model
record before any file is touched, so nothing a client sends reaches a path unchecked. Errors are
:class:`ExplorerError` subclasses whose message names the bad value and what exists.

Cached results are served as the entry's payload bytes (never re-encoded), wrapped in
``{"meta": ..., "data": ...}``, kept in a small in-memory LRU keyed by (path, mtime, size) together
with a gzip of the body, and tagged with the payload sha256 from the entry header (the ETag).

A cache entry that does not verify (:class:`~precompute.cache.CorruptEntry`: flipped bytes, a torn
file) is never served: it is discarded, a ``precompute`` job is queued for its model (the pipeline
recomputes only what is missing) and the request answers 503 naming the job (:class:`Recomputing`).
"""

from __future__ import annotations

import difflib
import functools
import gzip
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from precompute import clustering
from precompute.cache import Cache, CorruptEntry, ResultKey, canonical_json, decode_entry
from precompute.declarations.limits import CLUSTER_K_MAX, CLUSTER_K_MIN, GAMMA_THRESHOLDS, MAX_CLUSTER_PAIRS
from precompute.jobs import job_id, read_job, submit
from precompute.names import InvalidName, check_analysis_name, check_layer_name, check_model_name
from precompute.settings import Settings

from .findings import compute_findings, rgb_svd_layer
from .findings import finite as _finite  # one copy; the views call it _finite
from .layernames import human_names

log = logging.getLogger("convscope.server")

#: bodies at least this long are kept gzipped next to the plain bytes
GZIP_MIN = 1000
#: version of the computed (non-cached) JSON shapes; part of their ETags
API_VERSION = "1"
#: the layer types that have neurons (conv/linear: output units; batchnorm: channels)
NEURON_TYPES = ("conv", "linear", "batchnorm")
#: cluster-count bounds for /api/clusters (their home: precompute/declarations/limits.py)
K_MIN, K_MAX = CLUSTER_K_MIN, CLUSTER_K_MAX
#: a neuron index as a client sends it (the OpenAPI pattern of the neuron parameter)
NEURON_PATTERN = r"^-?[0-9]{1,11}$"
NEURON = re.compile(NEURON_PATTERN)
#: a model whose recompute job finished less than this many seconds ago is not queued again by a request
RECOMPUTE_EVERY = 30.0


# ---- errors ---------------------------------------------------------------------------------------
class ExplorerError(Exception):
    """A client error. ``status`` is the HTTP status; ``extra`` goes into the JSON body."""

    status = 422
    #: extra HTTP headers of the response (e.g. Retry-After)
    headers: Optional[dict] = None

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


class Recomputing(CacheProblem):
    """A cache entry was corrupt (discarded) or missing: a precompute job is restoring it."""

    headers = {"Retry-After": "5", "Cache-Control": "no-store"}


class Busy(ExplorerError):
    """A result that must be computed now while the server computes another one: retry shortly."""

    status = 503
    headers = {"Retry-After": "3", "Cache-Control": "no-store"}


#: the difflib searches of error messages are memoised per (name, known names): a search over a model's 129
#: layers costs about as much as 100 cached responses, and a client repeating a bad URL repeats it. At most
#: this many, of names up to CLOSE_MEMO_NAME characters (a longer one is searched each time, not kept)
CLOSE_MEMO, CLOSE_MEMO_NAME = 4096, 200


@functools.lru_cache(maxsize=CLOSE_MEMO)
def _close_memo(name: str, known: tuple, n: int, cutoff: float) -> tuple:
    return tuple(difflib.get_close_matches(name, known, n=n, cutoff=cutoff))


def _close(name: str, known: tuple, n: int, cutoff: float) -> tuple:
    if len(name) > CLOSE_MEMO_NAME:
        return tuple(difflib.get_close_matches(name, known, n=n, cutoff=cutoff))
    return _close_memo(name, known, n, cutoff)


def unknown(kind: str, name: str, known, where: str = "") -> str:
    """``unknown layer 'x' of m; did you mean a, b? Known layers: ...`` (names the bad value and what exists)."""
    known = list(known)
    close = _close(str(name), tuple(known), 3, 0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}{' of ' + where if where else ''}{hint}. Known {kind}s: {_listing(known)}"


def _listing(items, limit: int = 40) -> str:
    items = list(items)
    return ", ".join(items[:limit]) + (" ..." if len(items) > limit else "") if items else "none"


def nearest(name: str, known, n: int = 5) -> list[str]:
    """The known names a person most likely meant by ``name``: difflib's closest first, then names that
    contain it or that it contains (``vgg16`` -> ``vgg16-hed``); at most ``n``, each once."""
    known = [str(k) for k in known]
    low = {k.lower(): k for k in known}
    text = str(name).lower()
    out = [low[k] for k in _close(text, tuple(low), n, 0.5)]
    if len(text) >= 2:
        out += [k for k in known if text in k.lower() or (len(k) >= 2 and k.lower() in text)]
    seen: list[str] = []
    for k in out:
        if k not in seen:
            seen.append(k)
    return seen[:n]


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
        self._recovering: dict[str, tuple[float, str]] = {}  # model -> (time queued, job id)
        self._lock = threading.Lock()
        self._clustering = threading.Lock()  # one k-means at a time: a new (pairs, k) costs seconds of CPU

    # ---- names and records ----------------------------------------------------------------------
    def model_names(self) -> list[str]:
        names = []
        for n in self.cache.list_models():
            try:
                names.append(check_model_name(n))
            except InvalidName:
                continue
        return names

    def cache_state(self) -> tuple:
        """``(file name, mtime_ns, size)`` of every model record: the key of a view over the whole cache
        (home, findings, compare). A record is rewritten (atomically, a new mtime) whenever its model's results
        change, so this changes whenever anything a page shows does; one stat per model, no read."""
        out = []
        try:
            with os.scandir(self.cache.root / "models") as it:
                for e in it:
                    if e.name.endswith(".json") and not e.name.startswith("."):
                        try:
                            st = e.stat()
                        except FileNotFoundError:  # replaced or discarded meanwhile
                            continue
                        out.append((e.name, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            pass
        return tuple(sorted(out))

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
            self._still_recovering(model)
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
            self.recover(model, Path(path), f"the cached record of {model} does not verify ({e})")
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

    # ---- what a person is told when a link points at nothing --------------------------------------
    def gone(self, model: str, layer: Optional[str] = None, neuron: Any = None) -> Optional[dict]:
        """What is wrong with the page ``/models/model[/layers/layer[/neurons/neuron]]`` in words for
        people: ``{"message", "near": [{"label", "url"}], "back": {"label", "url"}}`` (the nearest
        matches, at most five, and one link back to the closest page that exists); None when it exists."""
        names = self.model_names()
        if model not in names:
            return {"message": f"There is no model named {model!r} here.",
                    "near": [{"label": m, "url": f"/models/{m}"} for m in nearest(model, names)],
                    "back": {"label": "all models", "url": "/"}}
        try:
            rec = self.record(model)
        except ExplorerError:
            return None
        if layer is None:
            return None
        mpage = f"/models/{model}"
        row = rec["_rows"].get(layer)
        if row is None:
            human = self.human_names(model)
            layers = [r["name"] for r in rec.get("inventory", [])]
            by_human = {v: k for k, v in human.items()}
            near = nearest(layer, layers) or [by_human[h] for h in nearest(layer, list(by_human))]
            return {"message": f"{model} has no layer {layer!r}.",
                    "near": [{"label": l + (f" ({human[l]})" if l in human else ""), "url": f"{mpage}/layers/{l}"}
                             for l in near],
                    "back": {"label": f"{model}: all {len(layers)} layers", "url": f"{mpage}#layers"}}
        if neuron is None:
            return None
        lpage = f"{mpage}/layers/{layer}"
        n = neuron_count(row)
        back = {"label": f"layer {layer} of {model}", "url": lpage}
        if not n:
            return {"message": f"Layer {layer} of {model} is a {row.get('type')} layer: it has no neurons to show.",
                    "near": [], "back": back}
        text = str(neuron)
        if not NEURON.fullmatch(text):
            return {"message": f"{text[:40]!r} is not a neuron number: the neurons of layer {layer} are numbered "
                               f"0 to {n - 1}.",
                    "near": [{"label": "neuron 0", "url": f"{lpage}/neurons/0"}], "back": back}
        i = int(text)
        if 0 <= i < n:
            return None
        j = min(max(i, 0), n - 1)
        return {"message": f"Layer {layer} of {model} has {n} neurons, numbered 0 to {n - 1}: there is no neuron {i}.",
                "near": [{"label": f"neuron {j}", "url": f"{lpage}/neurons/{j}"}], "back": back}

    def pair_problem(self, pair: str, analysis: str) -> Optional[str]:
        """Why ``model:layer`` cannot be shown with a result of ``analysis``, in a short sentence (never the
        list of everything that exists); None when it can."""
        model, sep, layer = str(pair).partition(":")
        if not sep or not model or not layer:
            return f"{str(pair)[:80]!r} is not model:layer"
        g = self.gone(model, layer)
        if g is not None:
            near = ", ".join(x["label"] for x in g["near"][:3])
            return g["message"] + (f" Nearest: {near}." if near else "")
        try:
            rec = self.record(model)
        except ExplorerError as e:
            return e.message.split(". Known")[0]
        if layer not in rec["analyses"].get(analysis, {}).get("layers", []):
            row = rec["_rows"][layer]
            why = {"nmf": "1×1, linear and BatchNorm layers have none", "histogram": "only conv and linear layers have one"}
            return (f"layer {layer} of {model} (a {row.get('type')} layer) has no {analysis} result"
                    + (f" ({why[analysis]})" if analysis in why else "") + ".")
        return None

    def check_pairs(self, pairs: Optional[str], analysis: str,
                    limit: int = MAX_CLUSTER_PAIRS) -> tuple[list[str], list[dict]]:
        """Split a comma-separated ``model:layer`` list from a URL into the pairs that can be shown (in
        order, each once, at most ``limit``) and the ones that cannot, each with its reason."""
        ok: list[str] = []
        bad: list[dict] = []
        for part in (pairs or "").split(","):
            part = part.strip()
            if not part:
                continue
            if part in ok:
                continue
            why = self.pair_problem(part, analysis)
            if why is None and len(ok) >= limit:
                why = f"at most {limit} pairs are shown at once"
            if why is None:
                ok.append(part)
            else:
                bad.append({"pair": part[:120], "reason": why})
        return ok, bad

    # ---- corrupt or missing entries ---------------------------------------------------------------
    def recover(self, model: str, corrupt: Optional[Path], why: str) -> None:
        """Discard a corrupt entry (``corrupt``), queue a ``precompute`` job for ``model`` that recomputes
        what is missing, log it, and raise :class:`Recomputing` (503) naming the job."""
        if corrupt is not None:
            self.cache.discard(corrupt)
        job = self._queue_recompute(model, fresh_damage=corrupt is not None)
        log.warning("%s; %s; recompute job %s is %s", why, "discarded it" if corrupt is not None else "missing",
                    job["id"], job["state"])
        what = "it was discarded, never served, and " if corrupt is not None else ""
        raise Recomputing(f"{why}; {what}{model} is being recomputed (job {job['id']}, {job['state']}); "
                          f"retry in a few seconds", job=job["id"], job_url=f"/api/jobs/{job['id']}")

    def _queue_recompute(self, model: str, fresh_damage: bool) -> dict:
        """The recompute job of ``model``: the queued or running one, else a new one. A request that only
        finds an entry still missing does not queue another job within RECOMPUTE_EVERY seconds of the last
        (no loop of jobs when a result cannot be restored); a newly discarded entry always does."""
        args = {"model": model, "force": False}  # as `convscope submit`, so the ids collapse
        jid = job_id("precompute", args)
        with self._lock:
            job = read_job(self.settings, jid)
            if job and job["state"] in ("queued", "running"):
                return job
            last = self._recovering.get(model)
            if not fresh_damage and job and last and time.time() - last[0] < RECOMPUTE_EVERY:
                return job  # just recomputed: do not let requests queue it in a loop
            job = submit("precompute", args, self.settings, again=True)
            self._recovering[model] = (time.time(), job["id"])
            if len(self._recovering) > 10000:
                self._recovering.clear()
            return job

    def _still_recovering(self, model: str) -> None:
        """A model whose record was discarded as corrupt answers 503 (not 404) while its job runs."""
        hit = self._recovering.get(model)
        if hit is None:
            return
        job = read_job(self.settings, hit[1])
        if job and job["state"] in ("queued", "running"):
            raise Recomputing(f"the record of {model} is being recomputed (job {job['id']}, {job['state']}); "
                              f"retry in a few seconds", job=job["id"], job_url=f"/api/jobs/{job['id']}")

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
        key = ("models", self.cache_state())
        blob = self._computed.get(key)
        if blob is None:
            blob = Blob.of({"models": self.list_models(), "count": len(self.model_names())})
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
            "human_names": self.human_names(model),
        }

    def human_names(self, model: str) -> dict[str, str]:
        """``{module path: human name}`` of the model's layers that have one (VGG16 ``28``: conv5_3)."""
        rec = self.record(model)
        hit = rec.get("_human")
        if hit is None:
            hit = rec["_human"] = human_names((rec.get("spec") or {}).get("arch"), rec.get("inventory", []))
        return hit

    def model_blob(self, model: str) -> Blob:
        rec = self.record(model)
        key = ("model", rec["_stamp"])
        blob = self._computed.get(key)
        if blob is None:
            blob = Blob.of(self.model_detail(model))
            self._computed.put(key, blob)
        return blob

    # ---- findings across the zoo ------------------------------------------------------------------
    def findings_blob(self, cached_only: bool = False) -> Optional[Blob]:
        """The findings rankings (:func:`server.findings.compute_findings`) over every model in the cache,
        computed once per set of record stamps (``cached_only``: None instead of computing them)."""
        key = ("findings", self.cache_state())
        blob = self._computed.get(key)
        if blob is None and cached_only:
            return None
        if blob is None:
            names = self.model_names()
            records, svds, human = {}, {}, {}
            for n in names:
                try:
                    rec = self.record(n)
                except ExplorerError:
                    continue
                records[n] = rec
                human[n] = self.human_names(n)
                layer = rgb_svd_layer(rec)
                if layer:
                    try:
                        svds[n] = (layer, self.result_data(n, layer, "svd"))
                    except ExplorerError:
                        pass
            blob = Blob.of(compute_findings(records, svds, human))
            self._computed.put(key, blob)
        return blob

    def findings(self) -> dict:
        return self.findings_blob().data

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
            "human": self.human_names(model).get(layer),
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
            self.recover(model, None, f"the {analysis} result of {model} / {layer} is listed in the model record "
                                      f"but not in the cache")
        blob = self._blobs.get(stamp)
        if blob is None:
            try:
                raw = Path(path).read_bytes()
                entry = decode_entry(raw, Path(path))
            except CorruptEntry as e:
                self.recover(model, Path(path), f"the cached {analysis} result of {model} / {layer} does not "
                                                f"verify ({e.__class__.__name__}: checksum or format)")
            except FileNotFoundError:
                self.recover(model, None, f"the {analysis} result of {model} / {layer} vanished")
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
        out["connections"] = self.connections(model, layer, i, ctx, kern)
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

    def connections(self, model: str, layer: str, i: int, ctx: dict, kern: Optional[dict], top: int = 8) -> dict:
        """The neuron's strongest connections, as Microscope shows them: ``incoming``, its input channels
        with the largest kernel norm ‖W[i, c]‖ (neurons of the feeder layer, linked when the feeder's
        outputs are this layer's inputs one to one); ``outgoing``, per consumer layer, the neurons j of
        that layer whose strongest input channels include this one, by ‖W_next[j, i]‖. From the
        ``kernels`` results (each keeps a neuron's ``top`` strongest input channels)."""
        rec = self.record(model)
        rows = rec["_rows"]
        feeder = ctx.get("feeds_from")
        frow = rows.get(feeder) if feeder else None
        linked = bool(frow) and neuron_count(frow) == ctx["row"].get("in_channels")
        incoming = []
        if kern:
            for c, nrm in zip(kern["top_channels"][i], kern["norms"][i]):
                incoming.append({"channel": c, "norm": nrm, "layer": feeder if linked else None,
                                 "url": f"/models/{model}/layers/{feeder}/neurons/{c}" if linked else None})
        outgoing = []
        for cons in ctx.get("consumers", []):
            ck = self._maybe(model, cons, "kernels")
            if not ck:
                continue
            hits = [(j, ck["norms"][j][t]) for j, chans in enumerate(ck["top_channels"]) for t, c in enumerate(chans) if c == i]
            hits.sort(key=lambda h: -h[1])
            outgoing.append({"layer": cons, "human": self.human_names(model).get(cons), "neurons": len(ck["top_channels"]),
                             "top": len(ck["top_channels"][0]) if ck["top_channels"] else 0,
                             "units": [{"neuron": j, "norm": nrm, "url": f"/models/{model}/layers/{cons}/neurons/{j}"}
                                       for j, nrm in hits[:top]], "count": len(hits)})
        return {"feeder": feeder, "feeder_human": self.human_names(model).get(feeder) if feeder else None,
                "linked": linked, "incoming": incoming, "outgoing": outgoing}

    @staticmethod
    def neuron_index(model: str, layer: str, row: dict, i: Any) -> int:
        """``i`` as an index in 0..N-1 of the layer: 422 when not an integer, 404 when out of range."""
        n = neuron_count(row)
        if not n:
            raise NotFound(f"layer {layer!r} of {model} has no neurons to show", known=[])
        if not isinstance(i, int):
            text = str(i)
            if not NEURON.fullmatch(text):
                raise BadRequest(f"neuron must be an integer index in 0..{n - 1} for layer {layer!r} of {model}; "
                                 f"got {text[:40]!r}", range=[0, n - 1])
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
        if len(out) > MAX_CLUSTER_PAIRS:
            raise BadRequest(f"at most {MAX_CLUSTER_PAIRS} pairs; got {len(out)}")
        return out

    def cluster_params(self, parsed: list[tuple[str, str]], k: int, seed: int = 0) -> dict:
        """What a clusters result depends on (its group cache key): the pairs, k, the seed, and each
        pair's NMF result identity (weights, version, parameters)."""
        nmf = []
        for m, _ in parsed:
            rec = self.record(m)
            info = rec["analyses"]["nmf"]
            nmf.append({"weights_sha256": rec["weights_sha256"], "version": int(info.get("version", 1)),
                        "params": info.get("params", {})})
        return {"pairs": [[m, l] for m, l in parsed], "k": int(k), "seed": int(seed), "nmf": nmf}

    def clusters(self, pairs: str, k: Any = 8) -> dict:
        """k-means over the normalised NMF reduced forms of several (model, layer) pairs; per pair, the
        share of its neurons in each cluster (the weight-banding article's figure 12). The same function
        as the ``clusters`` analysis (:func:`precompute.clustering.compute_clusters`)."""
        return self.clusters_blob(pairs, k).data

    def clusters_blob(self, pairs: str, k: Any = 8, seed: int = 0, cached_only: bool = False) -> Optional[Blob]:
        """The clusters JSON: from memory, else from the group cache (``Cache.get_group``), else computed
        and stored there (``Cache.put_group``), so a repeated request never runs k-means again.

        A new result is bounded: one k-means at a time per server (another request for a new result
        waits ``settings.cluster_wait_s``, then gets 503 :class:`Busy` with Retry-After), and the group cache keeps
        the newest ``settings.max_cluster_groups`` results. ``cached_only``: None unless it is in memory."""
        parsed = self.parse_pairs(pairs)
        k_int = parse_int(k, "k", K_MIN, K_MAX)
        stamps = tuple(self.record(m)["_stamp"] for m, _ in parsed)
        key = ("clusters", tuple(parsed), k_int, seed, stamps)
        blob = self._computed.get(key)
        if blob is not None or cached_only:
            return blob
        params = self.cluster_params(parsed, k_int, seed)
        blob = self._stored_clusters(params)
        if blob is None:
            if not self._clustering.acquire(timeout=self.settings.cluster_wait_s):
                raise Busy("the server is computing another clusters result (one at a time); retry in a few "
                           "seconds")
            try:
                blob = self._stored_clusters(params)  # computed by the request this one waited for?
                if blob is None:
                    blob = self._compute_clusters(parsed, k_int, seed, params)
            finally:
                self._clustering.release()
        self._computed.put(key, blob)
        return blob

    def _stored_clusters(self, params: dict) -> Optional[Blob]:
        try:
            entry = self.cache.get_group("clusters", clustering.VERSION, params)
        except CorruptEntry as e:
            log.warning("discarding a corrupt clusters entry (%s); recomputing it", e)
            self.cache.discard(self.cache.group_path("clusters", clustering.VERSION, params))
            return None
        return None if entry is None else Blob.make(entry.payload, hashlib.sha256(entry.payload).hexdigest())

    def _compute_clusters(self, parsed: list[tuple[str, str]], k: int, seed: int, params: dict) -> Blob:
        entries = [(m, l, {"images": self.result_data(m, l, "nmf")["images"]}) for m, l in parsed]
        try:
            data = clustering.compute_clusters(entries, k, seed=seed)
        except ValueError as e:
            raise BadRequest(str(e), range=[K_MIN, K_MAX]) from None
        try:
            self.cache.put_group("clusters", clustering.VERSION, params, data, meta={"models": [m for m, _ in parsed]},
                                 keep=self.settings.max_cluster_groups)
        except OSError as e:  # a read-only cache still answers
            log.warning("could not store the clusters result: %s", e)
        payload = canonical_json(data)
        return Blob.make(payload, hashlib.sha256(payload).hexdigest())


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
        **_training_summary(spec),
    }


def _training_summary(spec: dict) -> dict:
    """For a trained variant (family ``variant``): how it was trained and whether it reached its accuracy
    plateau (the run record's ``plateau``), so that every page that shows it can say so; {} for other models."""
    extra = spec.get("extra") if isinstance(spec.get("extra"), dict) else {}
    if spec.get("family") != "variant" or not extra:
        return {}
    plateau = extra.get("plateau") if isinstance(extra.get("plateau"), dict) else None
    snap = extra.get("snapshot") if isinstance(extra.get("snapshot"), dict) else None
    return {"training": {"experiment": extra.get("experiment"), "variant": extra.get("variant"),
                         "epochs": extra.get("epochs"), "seed": extra.get("seed"), "plateau": plateau,
                         "snapshot": snap,
                         "at_plateau": bool(plateau and plateau.get("reached") is True) or extra.get("epochs") == 0}}


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
            vals = {t: _finite(s.get(f"gamma_below_{t}")) for t in GAMMA_THRESHOLDS}
            if any(v is not None for v in vals.values()):
                follows = r.get("follows")
                gam.append({**base, "follows": follows, "depth": depth.get(follows) if follows else None,
                            "values": vals})
    return {"symmetry": sym, "banding": band, "gamma": gam, "sparsity": spars}

"""The read side of the result cache: model records, cached results as blobs, the stamps of both.

Every name a client sends is validated with :mod:`precompute.names` and then looked up in the model record
before any file is touched, so nothing a client sends reaches a path unchecked. Errors are
:mod:`server.errors` (the message names the bad value and what exists). No HTTP here and no torch: only the
cache, json and the in-memory caches.

Cached results are served as the entry's payload bytes (never re-encoded), wrapped in
``{"meta": ..., "data": ...}``, kept in an LRU keyed by (path, mtime, size) together with a gzip of the
body, and tagged with the payload sha256 from the entry header (the ETag).

A cache entry that does not verify (:class:`~precompute.cache.CorruptEntry`: flipped bytes, a torn file),
or that the record lists but the cache lacks, is never served: the reader hands it to
:class:`~server.recovery.Recovery` (discard, queue a recompute job, raise
:class:`~server.errors.Recomputing`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Optional

from precompute.cache import Cache, CorruptEntry, ResultKey, canonical_json, decode_entry
from precompute.names import InvalidName, check_analysis_name, check_layer_name, check_model_name
from precompute.settings import Settings

from .blobs import LRU, Blob, stamp
from .errors import BadRequest, NotFound, listing, unknown
from .layernames import human_names
from .recovery import Recovery

#: the model -> record file and (record stamp, layer, analysis) -> result file lookups, forgotten all at once
#: beyond these sizes (names a client invents are validated first, so they only fill with real names)
MODEL_FILES_MAX, RESULT_PATHS_MAX = 10000, 20000


class CacheReader:
    """Records and cached results of the cache at ``settings.cache``, validated and kept in memory by stamp."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.cache = Cache(settings.cache)
        self.recovery = Recovery(settings, self.cache)
        self._blobs = LRU(1024, 256 << 20, sizeof=lambda b: b.size)
        self._parsed = LRU(256)
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
        """The model record (cached per file stamp). BadRequest for a malformed name, NotFound for an unknown
        one, Recomputing for one that does not verify (or whose recompute job still runs)."""
        path = self._model_files.get(model)
        if path is None:
            try:
                check_model_name(model)
            except InvalidName as e:
                raise BadRequest(f"{e}. Known models: {listing(self.model_names())}", known=self.model_names()) from None
            path = str(self.cache.model_path(model))
            with self._lock:
                if len(self._model_files) > MODEL_FILES_MAX:
                    self._model_files.clear()
                self._model_files[model] = path
        st = stamp(path)
        if st is None:
            self.recovery.still_recovering(model)
            known = self.model_names()
            raise NotFound(unknown("model", model, known) + f" (if {model} is in the zoo, precompute it with "
                           f"`convscope precompute {model}`)", known=known)
        with self._lock:
            hit = self._records.get(model)
        if hit and hit[0] == st:
            return hit[1]
        try:
            entry = self.cache.read(Path(path))
        except CorruptEntry as e:
            self.recovery.recover(model, Path(path), f"the cached record of {model} does not verify ({e})")
        if entry is None:
            raise NotFound(unknown("model", model, self.model_names()), known=self.model_names())
        rec = entry.data
        rec.setdefault("analyses", {})
        rec.setdefault("scalars", {})
        rec.setdefault("errors", {})
        rec["_stamp"] = st
        rec["_rows"] = {r["name"]: r for r in rec.get("inventory", [])}
        with self._lock:
            self._records[model] = (st, rec)
        return rec

    def row(self, model: str, layer: str) -> tuple[dict, dict]:
        """(record, inventory row) for a layer; BadRequest for a malformed name, NotFound (with the layers) for
        an unknown one."""
        rec = self.record(model)
        layers = [r["name"] for r in rec.get("inventory", [])]
        try:
            check_layer_name(layer)
        except InvalidName as e:
            raise BadRequest(f"{e}. Layers of {model}: {listing(layers)}", known=layers) from None
        row = rec["_rows"].get(layer)
        if row is None:
            raise NotFound(unknown("layer", layer, layers, model), known=layers)
        return rec, row

    def human_names(self, model: str) -> dict[str, str]:
        """``{module path: human name}`` of the model's layers that have one (VGG16 ``28``: conv5_3)."""
        rec = self.record(model)
        hit = rec.get("_human")
        if hit is None:
            hit = rec["_human"] = human_names((rec.get("spec") or {}).get("arch"), rec.get("inventory", []))
        return hit

    # ---- cached results -------------------------------------------------------------------------
    def _result_path(self, model: str, layer: str, analysis: str) -> tuple[dict, str]:
        rec = self.record(model)
        hit = self._paths.get((rec["_stamp"], layer, analysis))
        if hit is not None:
            return hit
        out = self._result_path_uncached(model, layer, analysis)
        with self._lock:
            if len(self._paths) > RESULT_PATHS_MAX:
                self._paths.clear()
            self._paths[(rec["_stamp"], layer, analysis)] = out
        return out

    def _result_path_uncached(self, model: str, layer: str, analysis: str) -> tuple[dict, str]:
        rec, row = self.row(model, layer)
        known = sorted(rec["analyses"])
        try:
            check_analysis_name(analysis)
        except InvalidName as e:
            raise BadRequest(f"{e}. Analyses of {model}: {listing(known)}", known=known) from None
        info = rec["analyses"].get(analysis)
        if info is None:
            raise NotFound(unknown("analysis", analysis, known, model).replace("analysiss", "analyses"), known=known)
        if layer not in info.get("layers", []):
            have = sorted(a for a, i in rec["analyses"].items() if layer in i.get("layers", []))
            raise NotFound(f"no {analysis} result for layer {layer!r} of {model} (a {row.get('type')} layer); "
                           f"analyses with a result for it: {listing(have)}", known=have)
        key = ResultKey(rec["weights_sha256"], analysis, int(info.get("version", 1)), info.get("params", {}))
        return rec, str(self.cache.result_path(key, layer))

    def result_blob(self, model: str, layer: str, analysis: str) -> Blob:
        """The cached result as ``{"meta": ..., "data": ...}``: the payload bytes as stored, not re-encoded."""
        _, path = self._result_path(model, layer, analysis)
        st = stamp(path)
        if st is None:
            self.recovery.recover(model, None, f"the {analysis} result of {model} / {layer} is listed in the model "
                                               f"record but not in the cache")
        blob = self._blobs.get(st)
        if blob is None:
            try:
                raw = Path(path).read_bytes()
                entry = decode_entry(raw, Path(path))
            except CorruptEntry as e:
                self.recovery.recover(model, Path(path), f"the cached {analysis} result of {model} / {layer} does "
                                                         f"not verify ({e.__class__.__name__}: checksum or format)")
            except FileNotFoundError:
                self.recovery.recover(model, None, f"the {analysis} result of {model} / {layer} vanished")
            head = raw.partition(b"\n")[0]
            digest = json.loads(head)["sha256"]
            body = b'{"meta":' + canonical_json(entry.meta) + b',"data":' + entry.payload + b"}"
            blob = Blob.make(body, digest)
            self._blobs.put(st, blob)
        return blob

    def result_data(self, model: str, layer: str, analysis: str) -> Any:
        """The parsed ``data`` of a cached result (kept parsed in an LRU)."""
        _, path = self._result_path(model, layer, analysis)
        st = stamp(path)
        hit = self._parsed.get(st) if st else None
        if hit is not None:
            return hit
        blob = self.result_blob(model, layer, analysis)
        data = json.loads(blob.body)["data"]
        self._parsed.put(stamp(path), data)
        return data

    def maybe(self, model: str, layer: Optional[str], analysis: str) -> Any:
        """The parsed result of ``analysis`` for ``layer`` when the record lists one, else None."""
        if not layer:
            return None
        rec = self.record(model)
        if layer not in rec["analyses"].get(analysis, {}).get("layers", []):
            return None
        try:
            return self.result_data(model, layer, analysis)
        except NotFound:
            return None

"""The HTTP side of jobs: streaming an upload to disk under a size limit, validating every field, the
list of architectures, and the public view of a job. The jobs themselves (``upload``, ``precompute``,
``train``) go through the one queue, :mod:`precompute.jobs`, and are run by ``convscope worker``
processes (``convscope serve`` starts one beside the server); the server never imports torch.

An upload streams to ``<uploads>/.incoming/.partial-<token>`` (more than the limit: 413 while streaming,
and the partial file is deleted), is checked (file name, extension, model name, architecture,
dataset), moved to ``<uploads>/.incoming/<token>/<file name>`` and submitted as an ``upload`` job
with that path relative to ``<uploads>``; the worker reads it safely, registers the model, deletes the
incoming file and precomputes.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from typing import Optional

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from precompute.declarations import library
from precompute.declarations.architectures import known as known_arch
from precompute.declarations.architectures import upload_architectures
from precompute.declarations.limits import AUTO_ARCH, FILE_FORMATS, file_format
from precompute.declarations.limits import UPLOAD_EXTENSIONS as EXTENSIONS
from precompute.jobs import INCOMING, EmbeddedWorker, JobError, check_job_id, list_jobs, live_workers, read_job
from precompute.redact import redact
from precompute.settings import Settings

from .errors import BadRequest, ExplorerError, NotFound, TooLarge

#: a declared architecture ("resnet20") or a library's ("timm:resnet50", "torchvision:resnet50")
ARCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}(?::[A-Za-z0-9][A-Za-z0-9_.-]{0,119})?$")
#: a checkpoint's file name: one path component, printable, no separators, no NUL, no leading dot
FILENAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 _.,()\[\]+=@~-]{0,199}$")
DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
#: multipart overhead allowed beyond the file's own limit (boundaries, the small fields)
SLACK = 64 * 1024
#: most bytes in one non-file form field
FIELD_MAX = 4096
#: most parts in one upload form (it has four: file, arch, name, dataset)
PARTS_MAX = 16


# ---- architectures ---------------------------------------------------------------------------------
def architectures() -> dict:
    """The architectures an upload may name (declared torch-free; the worker checks again against the
    builders)."""
    sizes = upload_architectures()
    return {"architectures": sorted(sizes), "input_sizes": {a: list(s) for a, s in sorted(sizes.items())}}


def search_architectures(query: str, limit: int = 20) -> dict:
    """The declared architectures and the torchvision/timm models whose names contain every word of
    ``query`` (declared ones first), each with its native input size and, for a library model, its task
    and parameter count (from the catalogue: ``precompute/declarations/library.py``)."""
    words = library.query_words(query)
    declared = [{"name": a, "task": None, "params": None, "input_size": list(size)}
                for a, size in upload_architectures().items() if words and all(w in a.lower() for w in words)]
    found = declared + [m.public() for m in library.search(query, limit)]
    return {"query": query, "matches": found[:limit], "more": len(found) > limit,
            "libraries": library.versions()}


# ---- validation -------------------------------------------------------------------------------------
def check_filename(filename: str) -> str:
    """The uploaded file's name: one harmless path component with a checkpoint extension; 422 otherwise
    (``../x.pt``, ``a/b.pt``, ``C:\\x.pt``, NUL bytes, ``.hidden.pt``, over 200 characters)."""
    if not filename or not any(filename.lower().endswith(e) for e in EXTENSIONS):
        raise BadRequest(f"the checkpoint must be a {', '.join(EXTENSIONS)} file; got {filename!r}",
                         known=list(EXTENSIONS))
    if not FILENAME.match(filename) or ".." in filename:
        raise BadRequest(f"invalid file name {filename[:100]!r}: use one plain file name (letters, digits, "
                         f"spaces and ._-()+=@~, at most 200 characters), no folders", known=list(EXTENSIONS))
    return filename


def check_arch(arch: str, filename: str = "") -> str:
    """A declared architecture with a native input size, or a name of the torchvision/timm catalogue; or, for a
    file analysed without one (precompute/graphs/), the format: ``onnx`` / ``keras`` / ``none`` as sent, or
    empty for a ``.onnx`` / ``.h5`` / ``.keras`` file when ``filename`` is given (the format is returned)."""
    if filename or arch in FILE_FORMATS:
        try:
            fmt = file_format(arch, filename) if filename else arch
        except ValueError as e:
            raise BadRequest(str(e), known=sorted(FILE_FORMATS)) from None
        if fmt is not None:
            return fmt
    if arch == AUTO_ARCH:  # the worker finds it from the state dict's keys and shapes
        return arch
    declared = architectures()["architectures"]
    ok = bool(arch) and ARCH_NAME.match(arch) is not None and (
        arch in declared if not library.is_library_name(arch) else known_arch(arch))
    if not ok:
        raise BadRequest(f"unknown architecture {arch[:100]!r}; known: {', '.join(declared)}, or any "
                         f"torchvision:NAME or timm:NAME (search them: /api/architectures/search?q=resnet), or "
                         f"{AUTO_ARCH!r} to find it from the checkpoint's keys and shapes",
                         known=declared)
    return arch


def check_dataset(dataset: str) -> str:
    dataset = dataset or "unknown"
    if not DATASET.match(dataset):
        raise BadRequest(f"invalid dataset {dataset[:100]!r}: 1-40 letters, digits, '-', '_' or '.'")
    return dataset


# ---- where uploads go --------------------------------------------------------------------------------
def incoming_dir(settings: Settings) -> Path:
    return settings.uploads / INCOMING


def new_token() -> str:
    return secrets.token_hex(16)


def upload_path(settings: Settings, token: str, filename: str) -> Path:
    """``<uploads>/.incoming/<token>/<file name made safe>``, keeping the checkpoint's extension."""
    ext = next(e for e in EXTENSIONS if filename.lower().endswith(e))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", filename[: -len(ext)]).strip("._") or "checkpoint"
    return incoming_dir(settings) / token / f"{stem[:80]}{ext}"


#: one ``; key=value`` parameter of a header: a quoted string (with backslash escapes) or a plain token
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def disposition(raw: bytes) -> dict[str, str]:
    """The parameters of a part's ``Content-Disposition`` header, exactly as sent: python-multipart's own
    parser cuts a Windows path (``C:\\dir\\x.pt``) to its last component, which would let such a name
    pass silently; this one keeps it, so :func:`check_filename` refuses it like any other folder. The
    RFC 5987 forms (``filename*=``) are ignored, as RFC 7578 asks."""
    out: dict[str, str] = {}
    for m in _PARAM.finditer(raw.decode("utf-8", errors="replace")):
        key, value = m.group(1).lower(), m.group(2).strip()
        if "*" in key:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace("\\\\", "\\").replace('\\"', '"')
        out[key] = value
    return out


class _Form:
    """The parts of one multipart body as python-multipart reports them (its callbacks are the methods):
    the file part written to ``path`` as it arrives, every other field kept (at most ``PARTS_MAX`` parts,
    headers and fields of at most ``FIELD_MAX`` bytes each). No limit on the whole: the stream's reader
    counts the bytes (:func:`receive_multipart`)."""

    def __init__(self, path: Path):
        self.path = path
        self.fields: dict[str, str] = {}
        self.file: Optional[dict] = None  # {"filename" as sent, "path", "size"}
        self._parts = 0
        self._headers: dict[bytes, bytes] = {}
        self._hname = self._hval = self._field = b""
        self._name: Optional[str] = None
        self._fh = None

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self):
        self._headers, self._field, self._name = {}, b"", None
        self._parts += 1
        if self._parts > PARTS_MAX:
            raise BadRequest(f"too many form fields: more than {PARTS_MAX}; an upload has four (file, arch, name, "
                             f"dataset)", known=["file", "arch", "name", "dataset"])

    def _header_field(self, data, start, end):
        self._hname += data[start:end]

    def _header_value(self, data, start, end):
        self._hval += data[start:end]
        if len(self._hval) > FIELD_MAX:
            raise BadRequest("a multipart header is longer than 4 KB")

    def _header_end(self):
        self._headers[self._hname.lower()] = self._hval
        self._hname, self._hval = b"", b""

    def _headers_finished(self):
        disp = disposition(self._headers.get(b"content-disposition", b""))
        self._name = disp.get("name", "")
        filename = disp.get("filename")
        if filename is not None and self._name == "file":
            if self.file is not None:
                raise BadRequest("send one file per upload")
            self._fh = open(self.path, "wb")
            # the name as sent: check_filename refuses folders, NUL bytes and the like (no silent basename)
            self.file = {"filename": filename, "path": str(self.path), "size": 0}

    def _part_data(self, data, start, end):
        if self._fh is not None:
            self._fh.write(data[start:end])
            self.file["size"] += end - start
        else:
            self._field += data[start:end]
            if len(self._field) > FIELD_MAX:
                raise BadRequest(f"form field {self._name[:40]!r} is longer than 4 KB")

    def _part_end(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        elif self._name:
            self.fields[self._name] = self._field.decode(errors="replace")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        """Close and delete what was written of the file."""
        self.close()
        if self.file is not None:
            Path(self.file["path"]).unlink(missing_ok=True)


def _boundary(request: Request) -> bytes:
    """The multipart boundary of the request's Content-Type; BadRequest for any other body."""
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    boundary = opts.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise BadRequest("send multipart/form-data with fields file (the checkpoint), arch and name; "
                         f"got content-type {request.headers.get('content-type', '')[:100]!r}")
    return boundary


async def _feed(request: Request, parser: MultipartParser, limit: int) -> None:
    """The request body into ``parser`` as it streams in; TooLarge as soon as it passes ``limit`` + SLACK."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit + SLACK:
            raise TooLarge(f"upload is larger than the limit of {limit} bytes (CONVSCOPE_MAX_UPLOAD_BYTES); "
                           f"stopped after {total} bytes", limit=limit)
        if chunk:
            parser.write(chunk)
    parser.finalize()


async def receive_multipart(request: Request, limit: int, folder: Path, token: str) -> dict:
    """Stream a multipart/form-data body: the file part goes straight to ``folder/.partial-<token>``,
    other fields (at most ``PARTS_MAX`` parts, 4 KB each) are kept; more than ``limit`` bytes raises TooLarge
    while streaming and deletes what was written. Returns ``{"fields": {...}, "file": {"filename", "path",
    "size"} | None}``."""
    boundary = _boundary(request)
    folder.mkdir(parents=True, exist_ok=True)
    form = _Form(folder / f".partial-{token}")
    try:
        await _feed(request, MultipartParser(boundary, form.callbacks()), limit)
        if form.file is not None and form.file["size"] > limit:
            raise TooLarge(f"the checkpoint has {form.file['size']} bytes, more than the limit of {limit} bytes",
                           limit=limit)
    except BaseException as e:
        form.discard()
        if isinstance(e, ExplorerError):
            raise
        if isinstance(e, Exception) and type(e).__module__.startswith("python_multipart"):
            raise BadRequest(f"malformed multipart body: {str(e)[:200]}") from None
        raise
    form.close()
    return {"fields": form.fields, "file": form.file}


def place_upload(settings: Settings, token: str, upload: dict) -> Path:
    """Move the streamed file to its final incoming path; returns it."""
    final = upload_path(settings, token, upload["filename"])
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(upload["path"], final)
    return final


# ---- jobs as the API shows them -------------------------------------------------------------------------
def get_job(settings: Settings, jid: str) -> dict:
    """The job's state file; 422 for a malformed id, 404 (with recent ids) for an unknown one."""
    try:
        check_job_id(jid)
    except JobError as e:
        raise BadRequest(str(e)) from None
    job = read_job(settings, jid)
    if job is None:
        recent = [j["id"] for j in recent_jobs(settings, 10)]
        raise NotFound(f"unknown job {jid!r}; recent jobs: {', '.join(recent) or 'none'}", known=recent)
    return job


def recent_jobs(settings: Settings, limit: int = 50, kind: Optional[str] = None) -> list[dict]:
    jobs = [j for j in list_jobs(settings) if kind is None or j.get("kind") == kind]
    return list(reversed(jobs))[:limit]


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if isinstance(t, (int, float)) else "?"


def public_job(job: dict) -> dict:
    """What a client sees of a job: no server paths, no worker host names, no tracebacks."""
    args = job.get("args") or {}
    jid = job["id"]
    model = args.get("model") or args.get("name")
    log = []
    for ev in job.get("history", [])[-40:]:
        line = f"{_when(ev.get('t'))}  {ev.get('event')}"
        if ev.get("attempt"):
            line += f" (attempt {ev['attempt']})"
        if ev.get("error"):
            line += f": {redact(ev['error'])}"
        log.append(line)
    out = {
        "id": jid, "kind": job.get("kind"), "state": job.get("state"), "progress": float(job.get("progress") or 0),
        # workers write these without server paths; an older state file may still have some: cut to file names
        "message": redact(job.get("message")), "error": redact(job.get("error")),
        "attempts": int(job.get("attempts") or 0),
        "created": job.get("created"), "started": job.get("started"), "finished": job.get("finished"),
        "created_at": _when(job.get("created")),
        "model": model, "arch": args.get("arch"), "filename": args.get("filename"), "size": args.get("size"),
        "dataset": args.get("dataset"), "analyses": args.get("analyses"), "result": job.get("result"),
        "log": log, "url": f"/api/jobs/{jid}", "page": f"/jobs/{jid}",
    }
    if job.get("state") == "done" and model:
        out["model_url"] = f"/models/{model}"
    return out


# ---- workers as the API shows them --------------------------------------------------------------------------
def worker_status(settings: Settings, embedded: Optional[EmbeddedWorker] = None) -> dict:
    """Whether jobs will run: how many workers renewed their presence lately (on any machine sharing the
    cache) and, for ``convscope serve``'s embedded worker, its supervisor's state. ``ok`` is False when
    the embedded worker is down (restarting) or, without one, when no worker is alive. No host names,
    no pids."""
    alive = len(live_workers(settings))
    out: dict = {"alive": alive, "embedded": None}
    if embedded is not None:
        st = embedded.status()
        out["embedded"] = {"state": st["state"], "restarts": st["restarts"], "last_exit": st["last_exit"]}
        out["ok"] = st["state"] == "running"
        if out["ok"]:
            out["message"] = "the embedded worker is running" + (
                f" (restarted {st['restarts']} times; last stop: {st['last_exit']})" if st["restarts"] else "")
        else:
            out["message"] = (f"the embedded worker is {st['state']} (last stop: {st['last_exit'] or 'none'}); "
                              f"queued jobs wait until it is back")
    else:
        out["ok"] = alive > 0
        out["message"] = (f"{alive} worker{'s' if alive != 1 else ''} running" if alive else
                          "no worker is running: queued jobs wait until one starts (`convscope worker`)")
    return out

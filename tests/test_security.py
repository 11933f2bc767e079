"""Hostile input against a real server: uvicorn in a subprocess (under an audit hook that logs every
file it touches) and a real ``convscope worker``, over a copy of the precomputed cache.

- checkpoints that would run code when unpickled are refused and never run (the marker file they
  would create never appears); truncated, wrong-format and wrong-architecture checkpoints fail their
  job with a clear error and leave nothing behind (no registration, no record, no file);
- the upload size limit holds while streaming (413 before the body is sent; the partial file is removed);
- every route (enumerated from the app, so a new endpoint is covered automatically) answers 404/422 to
  path-traversal attempts sent as raw bytes over a socket, and the server never touches a file outside
  its data dir (the audit log);
- a corrupted cache entry is detected, discarded, recomputed by the worker and then served right;
- user-controlled strings (model metadata, layer names, job errors, the compare URL) never become markup.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import socket
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

pytest_plugins = ["server_fixtures"]
pytest.register_assert_rewrite("server_fixtures")

from server_fixtures import (REPO, first_with, make_settings, start_uvicorn, start_worker,  # noqa: E402
                             stop_process, wait_job)

from precompute.cache import Cache, ResultKey  # noqa: E402
from precompute.settings import Settings  # noqa: E402

CANARY = "CONVSCOPE-CANARY-SECRET"


# ---- the server under test ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sec(srv_settings, srv_records, tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    data = base / "data"
    shutil.copytree(srv_settings.cache, data / "cache", ignore=shutil.ignore_patterns("jobs", "queue.sqlite3*", "groups"))
    (base / "secret.txt").write_text(CANARY)  # outside the data dir: must never be opened
    settings = make_settings(data)
    settings.max_upload_bytes = 2_000_000
    audit = base / "audit.log"
    server, url = start_uvicorn(settings, base / "uvicorn.log", audit_log=audit)
    worker = start_worker(settings, base / "worker.log")
    model, layer = first_with(srv_records, "nmf", lambda r: r["kernel"] == [3, 3])
    from precompute.jobs import submit

    job = submit("precompute", {"model": model, "force": False, "analyses": ["symmetry"]}, settings)
    try:
        yield SimpleNamespace(base=base, settings=settings, url=url, audit=audit, model=model, layer=layer,
                              job=job["id"], records=srv_records)
    finally:
        stop_process(worker)
        server.terminate()
        try:
            server.wait(10)
        except Exception:  # noqa: BLE001
            server.kill()


def raw_request(base: str, method: str, raw_path: bytes, body: bytes = b"", headers: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request with the path bytes exactly as given (no client normalisation)."""
    u = urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(method.encode() + b" " + raw_path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers
                  + (b"Content-Length: %d\r\n" % len(body) if body or method == "POST" else b"") + b"\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def api_job(sec, jid: str) -> dict:
    import httpx

    return httpx.get(f"{sec.url}/api/jobs/{jid}", timeout=30).json()


# ---- torch stays out of the server, the architecture list stays right -----------------------------------
def test_job_queue_and_server_modules_are_torch_free():
    import subprocess

    code = ("import sys, precompute.jobs, precompute.clustering, server.app, server.jobs\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip() == "[]"


# ---- hostile and broken checkpoints, through the HTTP API, run by the worker ----------------------------
class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _resnet20_bytes(seed: int = 0) -> bytes:
    import torch

    from precompute.architectures import build

    torch.manual_seed(seed)
    buf = io.BytesIO()
    torch.save(build("resnet20").state_dict(), buf)
    return buf.getvalue()


def _evil(kind: str, marker: Path) -> tuple[str, bytes]:
    import torch

    if kind == "pickle-os-system":
        return "evil.pt", pickle.dumps({"conv1.weight": _System(f"touch {marker}")}, protocol=2)
    if kind == "pickle-path-touch":
        return "evil.pth", pickle.dumps(_Touch(str(marker)), protocol=4)
    if kind == "torch-save-zip":  # the same payload inside a real torch.save zip archive
        buf = io.BytesIO()
        torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _System(f"touch {marker}")}, buf)
        return "evil.th", buf.getvalue()
    raise AssertionError(kind)


def upload(sec, filename: str, content: bytes, arch: str, name: str, dataset: str = ""):
    import httpx

    data = {"arch": arch, "name": name}
    if dataset:
        data["dataset"] = dataset
    return httpx.post(f"{sec.url}/api/uploads", files={"file": (filename, content)}, data=data, timeout=60)


def assert_nothing_left(sec, name: str) -> None:
    s = sec.settings
    assert not Cache(s.cache).model_path(name).exists(), "a model record was left behind"
    users = Path(s.user_models_file)
    assert not users.exists() or name not in [e["name"] for e in json.loads(users.read_text() or "[]")]
    assert not (Path(s.uploads) / name).exists(), "the registered copy was left behind"
    incoming = Path(s.uploads) / ".incoming"
    assert not [p for p in incoming.rglob("*") if p.is_file()], "the streamed upload was left behind"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pickle-os-system", "pickle-path-touch", "torch-save-zip"])
def test_pickled_code_in_an_upload_never_runs(sec, kind):
    marker = sec.base / f"pwned-{kind}"
    filename, content = _evil(kind, marker)
    name = f"evil-{kind}"
    r = upload(sec, filename, content, "resnet20", name)
    assert r.status_code == 202, r.text
    job = wait_job(lambda j: api_job(sec, j), r.json()["id"], 120)
    assert job["state"] == "failed" and job["attempts"] == 1, job
    assert "refused to load" in job["error"] and filename in job["error"], job["error"]
    assert "weights-only" in job["error"] or "weights_only" in job["error"] or "safetensors" in job["error"]
    assert str(sec.settings.data_dir) not in job["error"]  # no server paths in messages
    time.sleep(0.5)
    assert not marker.exists(), "the pickle's payload ran"
    assert_nothing_left(sec, name)
    import httpx

    assert name not in [m["name"] for m in httpx.get(f"{sec.url}/api/models", timeout=30).json()["models"]]


def _zip_bomb(unpacked: int) -> bytes:
    """A torch.save-style archive whose one tensor is ``unpacked`` bytes of zeros, deflated: about
    1/1000 of that on disk (torch's reader inflates deflated members)."""
    import collections

    import torch

    numel = unpacked // 4
    storage = object()

    class Tensor:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (storage, 0, (numel,), (1,), False, collections.OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is storage else None

    pkl = io.BytesIO()
    Pickler(pkl, protocol=2).dump({"conv1.weight": Tensor()})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl.getvalue())
        z.writestr("archive/byteorder", "little")
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            for _ in range(unpacked >> 20):
                f.write(bytes(1 << 20))
        z.writestr("archive/version", "3\n")
    return out.getvalue()


def _h5_bomb(unpacked: int) -> bytes:
    """An HDF5 file (a Keras-style checkpoint) with one chunked, never written dataset of ``unpacked``
    bytes: reading it materialises the fill value; the file is a few KB."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("conv1/kernel", shape=(unpacked // 4,), dtype="f4", chunks=(1 << 20,), compression="gzip")
    return buf.getvalue()


def _safetensors_bomb(copies: int) -> bytes:
    """A safetensors header naming the same 1 MiB byte range ``copies`` times."""
    data = bytes(1 << 20)
    header = json.dumps({f"w{i}": {"dtype": "F32", "shape": [len(data) // 4], "data_offsets": [0, len(data)]}
                         for i in range(copies)}).encode()
    return len(header).to_bytes(8, "little") + header + data


BOMB = ["bomb.pt", "decompression bomb", "CONVSCOPE_MAX_CHECKPOINT_EXPANSION"]

BROKEN = {
    # kind: (file name, content builder, arch, words expected in the error)
    "truncated-torch-zip": ("half.pt", lambda: _resnet20_bytes()[:300_000], "resnet20", ["truncated or corrupt", "half.pt"]),
    "random-bytes": ("noise.pt", lambda: os.urandom(5000), "resnet20", ["not in a format", "noise.pt"]),
    "text-as-safetensors": ("notes.safetensors", lambda: b"hello, this is not a tensor file\n" * 10, "resnet20",
                            ["safetensors", "notes.safetensors"]),
    "bad-safetensors-header": ("bad.safetensors", lambda: (200).to_bytes(8, "little") + b'{"w": {"dtype": "F32", '
                               b'"shape": [4], "data_offsets": [0, 999999]}}' + b" " * 130, "resnet20",
                               ["safetensors", "bad.safetensors"]),
    "truncated-legacy-pickle": ("old.pt", lambda: pickle.dumps({"a": list(range(1000))}, protocol=2)[:200], "resnet20",
                                ["old.pt"]),
    "empty": ("empty.pt", lambda: b"", "resnet20", ["empty", "0 bytes", "empty.pt"]),
    # decompression bombs: refused from their declared sizes, before anything is unpacked (issue 14, item 1)
    "zip-bomb": ("bomb.pt", lambda: _zip_bomb(256 << 20), "resnet20", BOMB),
    "hdf5-bomb": ("bomb.pt", lambda: _h5_bomb(256 << 20), "resnet20", BOMB),
    "safetensors-bomb": ("bomb.safetensors", lambda: _safetensors_bomb(300), "resnet20",
                         ["bomb.safetensors", "decompression bomb", "CONVSCOPE_MAX_CHECKPOINT_EXPANSION"]),
    "wrong-architecture": ("r20.pt", lambda: _resnet20_bytes(), "resnet32", ["resnet32", "missing"]),
    "wrong-architecture-family": ("r20b.pt", lambda: _resnet20_bytes(), "cifar10-cnn", ["cifar10-cnn"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_checkpoints_fail_their_job_clearly_and_leave_nothing(sec, kind):
    filename, build, arch, words = BROKEN[kind]
    name = f"broken-{kind}"
    r = upload(sec, filename, build(), arch, name)
    assert r.status_code == 202, r.text
    job = wait_job(lambda j: api_job(sec, j), r.json()["id"], 180)
    assert job["state"] == "failed" and job["attempts"] == 1, job  # an input error is not retried
    for w in words:
        assert w.lower() in job["error"].lower(), (w, job["error"])
    assert "Traceback" not in job["error"] and str(sec.settings.data_dir) not in job["error"]
    assert_nothing_left(sec, name)


BOMB_CHECK = """
import sys
from pathlib import Path
from precompute.sources import read_checkpoint
from precompute.zoo import ModelError

def peak():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) * 1024

import h5py, safetensors.torch, torch  # every reader imported before the baseline
before = peak()
try:
    read_checkpoint(Path(sys.argv[1]))
    print("loaded")
except ModelError as e:
    print("refused:", e)
print(peak() - before)
"""


@pytest.mark.parametrize("kind", ["zip", "hdf5"])
def test_a_decompression_bomb_is_refused_before_anything_is_unpacked(tmp_path, kind):
    """A 1 MB file that unpacks to 1 GiB (deflated zip members; an HDF5 dataset never written) is refused
    from the sizes it declares: the reading process's peak memory does not grow by the bomb's size."""
    import subprocess

    path = tmp_path / "bomb.pt"
    path.write_bytes(_zip_bomb(1 << 30) if kind == "zip" else _h5_bomb(1 << 30))
    assert path.stat().st_size < 2 << 20
    p = subprocess.run([sys.executable, "-c", BOMB_CHECK, str(path)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    outcome, grown = p.stdout.strip().rsplit("\n", 1)
    assert outcome.startswith("refused:") and "decompression bomb" in outcome, outcome
    assert "CONVSCOPE_MAX_CHECKPOINT_EXPANSION" in outcome, outcome
    assert int(re.search(r"declares? (\d+) bytes unpacked", outcome).group(1)) >= 1 << 30, outcome
    assert int(grown) < 100 << 20, f"peak memory grew by {int(grown) >> 20} MiB while refusing the bomb"


@pytest.mark.parametrize("filename", ["../../x.pt", "..\\..\\x.pt", "/etc/x.pt", "C:\\evil\\x.pt", "C:\\..\\x.pt",
                                      "\\\\host\\share\\x.pt", "a/b.pt",
                                      "a\x00b.pt", ".hidden.pt", "x" * 300 + ".pt", "<img src=x onerror=alert(1)>.pt",
                                      "..pt", "x.pt\r\nX-Injected: 1", "%2e%2e%2fx.pt"])
def test_hostile_upload_file_names_are_refused(sec, filename):
    import httpx

    boundary = "hostilebound"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="arch"\r\n\r\nresnet20\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nhostile-file\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="').encode()
    body = head + filename.encode("latin-1") + b'"\r\n\r\n' + b"x" * 100 + f"\r\n--{boundary}--\r\n".encode()
    r = httpx.post(f"{sec.url}/api/uploads", content=body, timeout=30,
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    # a Windows path ("C:\\dir\\x.pt", which python-multipart's own parser would cut to "x.pt") is refused too
    assert r.status_code == 422, (filename, r.status_code, r.text)
    assert r.json()["detail"]
    assert_nothing_left(sec, "hostile-file")
    assert not list(sec.base.rglob("x.pt")) and not (Path("/etc") / "x.pt").exists()


@pytest.mark.parametrize("field,value", [("name", "../evil"), ("name", "%2e%2e"), ("name", "a/b"), ("name", "x" * 100),
                                         ("arch", "../../etc/passwd"), ("arch", "resnet20\x00"),
                                         ("dataset", "../../etc"), ("dataset", "<script>")])
def test_hostile_upload_fields_are_refused(sec, field, value):
    fields = {"arch": "resnet20", "name": "hostile-field", "dataset": "cifar10"}
    fields[field] = value
    r = upload(sec, "ok.pt", b"x" * 100, fields["arch"], fields["name"], fields["dataset"])
    assert r.status_code == 422, (field, value, r.text)
    assert_nothing_left(sec, fields["name"] if field != "name" else "hostile-field")


def test_the_number_of_upload_form_fields_is_capped(sec):
    """A valid upload with thousands of extra small fields (each under the 4 KB field limit) is refused
    as soon as the form passes the cap, and nothing is stored or queued."""
    import httpx

    from server.jobs import PARTS_MAX

    boundary = "manyfields"
    parts = [("arch", "resnet20"), ("name", "many-fields")] + [(f"x{i}", "y" * 8) for i in range(5000)]
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                    for k, v in parts)
    body += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="ok.pt"\r\n\r\n').encode()
    body += _resnet20_bytes() + f"\r\n--{boundary}--\r\n".encode()
    assert len(body) < sec.settings.max_upload_bytes
    r = httpx.post(f"{sec.url}/api/uploads", content=body, timeout=60,
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 422, r.text
    assert "too many form fields" in r.json()["detail"] and str(PARTS_MAX) in r.json()["detail"]
    assert not [j for j in httpx.get(f"{sec.url}/api/jobs", timeout=30).json()["jobs"] if j["model"] == "many-fields"]
    assert_nothing_left(sec, "many-fields")


def test_upload_size_limit_is_enforced_while_streaming(sec):
    """A chunked body (no Content-Length) far over the limit gets 413 before it is all sent, and the
    partial file is deleted."""
    limit = sec.settings.max_upload_bytes
    u = urlsplit(sec.url)
    boundary = b"streambound"
    import select

    sent, answered = 0, b""
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(b"POST /api/uploads HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n\r\n")
        first = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig-one\r\n--' + boundary
                 + b'\r\nContent-Disposition: form-data; name="file"; filename="big.pt"\r\n\r\n')
        s.sendall(b"%x\r\n%s\r\n" % (len(first), first))
        chunk = b"\0" * 65536
        try:
            while sent < 20 * limit:
                if select.select([s], [], [], 0)[0]:  # the server answered (before the body ended)
                    break
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        try:
            while not answered.rstrip().endswith(b"}") and (got := s.recv(65536)):  # the JSON body
                answered += got
        except (TimeoutError, ConnectionResetError):
            pass
    assert answered.startswith(b"HTTP/1.1 413"), answered[:300]
    assert sent < 20 * limit, "the server read the whole body before refusing it"
    assert b"limit" in answered
    time.sleep(0.3)
    assert not [p for p in (Path(sec.settings.uploads) / ".incoming").rglob("*") if p.is_file()], \
        "the partial upload was not deleted"


# ---- path traversal on every route, over a real socket, with a file-access audit -----------------------
def _route_cases() -> list[tuple[str, str, str, str]]:
    """(method, path template, parameter, where) for every parameter of every route of the app, from
    ``app.routes`` (path parameters; the static mount as ``{path}``) and the OpenAPI schema (query)."""
    from starlette.routing import Mount, compile_path

    from server.app import create_app

    def walk(routes, prefix=""):
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI >= 0.16x keeps included routers as one route
                yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif isinstance(route, Mount):
                yield prefix + route.path + "/{path}", ["GET"]
            elif hasattr(route, "path"):
                yield prefix + route.path, sorted(getattr(route, "methods", None) or ["GET"])

    app = create_app(Settings(data_dir=Path("/nonexistent-convscope-data")))
    cases = []
    for path, methods in walk(app.routes):
        for method in methods:
            if method == "HEAD":
                continue
            for param in compile_path(path)[2]:
                cases.append((method, path, param, "path"))
    for path, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                if p["in"] == "query":
                    cases.append((method.upper(), path, p["name"], "query"))
    return cases


ROUTE_CASES = _route_cases()

#: sent exactly as written (percent-escapes included)
PAYLOADS = [
    "..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "..%2f..%2f..%2fsecret.txt", "%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "..%5c..%5c..%5csecret.txt", "%5c%5cserver%5cshare", "%2fetc%2fpasswd", "%2f..%2f..%2fsecret.txt", "%00",
    "a%00b", "..%00", "%252e%252e%252fsecret.txt", "%c0%ae%c0%ae%c0%afsecret.txt", "....%2f%2f", "..;x", ".%00.",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", "a" * 300, "b" * 5000,
    "~", "%7e%2f", "%20..", "..%20", "%e2%80%ae", "%ff%fe",
]


def _fill(sec, template: str, target: str, payload: str) -> str:
    values = {"model": sec.model, "layer": sec.layer, "analysis": "nmf", "neuron": "0", "job_id": sec.job,
              "path": "css/app.css"}

    def sub(m):
        name = m.group(1)
        return payload if name == target else values.get(name, "x")

    return re.sub(r"\{([a-zA-Z_]+)(?::[a-z]+)?\}", sub, template)


def _query(sec, path: str, target: str, payload: str) -> str:
    defaults = {"pairs": f"{sec.model}:{sec.layer}", "k": "4", "kind": "upload", "limit": "5", "analyses": "symmetry",
                "force": "false"}
    url = _fill(sec, path, "", "")
    ops = json.loads((sec.base / "openapi.json").read_text())["paths"][path]
    names = [p["name"] for op in ops.values() for p in op.get("parameters", []) if p["in"] == "query"]
    parts = [f"{n}={payload if n == target else defaults.get(n, 'x')}" for n in names]
    return url + "?" + "&".join(parts)


def _allowed_roots(sec) -> list[str]:
    import sysconfig

    roots = {str(Path(sec.settings.data_dir).resolve()), str(REPO / "frontend"), str(REPO / "server"),
             str(REPO / "precompute"), sys.prefix, sys.base_prefix, sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["stdlib"], "/dev/null"}
    return sorted(os.path.realpath(r) for r in roots)


def _touched_outside(sec, since: int) -> list[str]:
    roots = _allowed_roots(sec)
    bad = []
    with open(sec.audit, encoding="utf-8", errors="replace") as f:
        f.seek(since)
        for line in f:
            event, _, path = line.rstrip("\n").partition("\t")
            real = os.path.realpath(path) if path and not path.startswith("<") else path
            if "secret.txt" in path or "passwd" in path or not any(real == r or real.startswith(r + os.sep) for r in roots):
                bad.append(f"{event} {path}")
    return bad


@pytest.mark.parametrize("method,template,param,where", ROUTE_CASES,
                         ids=[f"{m} {t} [{p}]" for m, t, p, _ in ROUTE_CASES])
def test_traversal_attempts_on_every_route(sec, method, template, param, where):
    if not (sec.base / "openapi.json").exists():
        import httpx

        (sec.base / "openapi.json").write_text(httpx.get(f"{sec.url}/openapi.json", timeout=30).text)
    since = sec.audit.stat().st_size
    for payload in PAYLOADS + ["..\\..\\..\\secret.txt", "/etc/passwd", "..//..//secret.txt"]:
        url = _fill(sec, template, param, payload) if where == "path" else _query(sec, template, param, payload)
        status, body = raw_request(sec.url, method, url.encode("latin-1"))
        allowed = (400, 404, 405, 422) if where == "path" and any(c in payload for c in "\\/") else (404, 422)
        assert status in allowed, (method, url[:200], status, body[:300])
        assert CANARY.encode() not in body and b"root:" not in body, url
        if url.startswith("/api/") and status != 405:
            assert json.loads(body)["detail"], url
    time.sleep(0.05)
    assert _touched_outside(sec, since) == [], f"{method} {template}: files outside the data dir were touched"


def test_the_audit_sees_the_server_reading_its_cache(sec):
    """The audit hook works: a real request shows up as a read under the data dir."""
    since = sec.audit.stat().st_size
    status, _ = raw_request(sec.url, "GET", f"/api/models/{sec.model}/layers/{sec.layer}/kernels".encode())
    assert status == 200
    time.sleep(0.05)
    with open(sec.audit, encoding="utf-8", errors="replace") as f:
        f.seek(since)
        events = [line.rstrip("\n").partition("\t")[::2] for line in f]
    cache = os.path.realpath(sec.settings.cache)
    opened = [path for event, path in events if event == "open" and os.path.realpath(path).startswith(cache + os.sep)]
    assert any("kernels" in Path(p).parts for p in opened), \
        f"no open of the kernels entry under {cache} in the audit log; it saw: {events[:20]}"


def test_every_route_is_covered():
    """The traversal cases come from the app itself: every parameterised route and every query parameter."""
    templates = {t for _, t, _, _ in ROUTE_CASES}
    for t in ["/api/models/{model}", "/api/models/{model}/layers/{layer}/{analysis}", "/api/jobs/{job_id}",
              "/api/models/{model}/precompute", "/models/{model}/layers/{layer}/neurons/{neuron}", "/jobs/{job_id}",
              "/static/{path}", "/api/clusters"]:
        assert t in templates, t


# ---- a corrupted cache entry: detected, not served, recomputed by the worker -----------------------------
@pytest.mark.slow
def test_corrupt_entry_is_recomputed_end_to_end(sec):
    import httpx

    model, layer = sec.model, sec.layer
    rec = sec.records[model]
    info = rec["analyses"]["nmf"]
    cache = Cache(sec.settings.cache)
    path = cache.result_path(ResultKey(rec["weights_sha256"], "nmf", info["version"], info["params"]), layer)
    url = f"{sec.url}/api/models/{model}/layers/{layer}/nmf"
    good = httpx.get(url, timeout=30)
    assert good.status_code == 200
    raw = bytearray(path.read_bytes())
    raw[len(raw) - len(raw) // 3] ^= 0x04  # one flipped bit in the payload
    path.write_bytes(bytes(raw))
    r = httpx.get(url, timeout=30)
    assert r.status_code == 503, r.text
    body = r.json()
    assert "does not verify" in body["detail"] and "being recomputed" in body["detail"] and body["job"]
    assert int(r.headers["retry-after"]) > 0
    job = wait_job(lambda j: api_job(sec, j), body["job"], 300)
    assert job["state"] == "done", job
    again = httpx.get(url, timeout=30)
    assert again.status_code == 200
    # the same numbers (colour_rule is descriptive text, which may have been reworded since the copy was made)
    strip = lambda d: {k: v for k, v in d.items() if k != "colour_rule"}  # noqa: E731
    assert strip(again.json()["data"]) == strip(good.json()["data"])
    assert cache.verify_all() == []


@pytest.mark.slow
def test_corrupt_model_record_is_recomputed_end_to_end(sec):
    import httpx

    model = sec.model
    url = f"{sec.url}/api/models/{model}"
    good = httpx.get(url, timeout=30).json()
    path = Cache(sec.settings.cache).model_path(model)
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0x01
    path.write_bytes(bytes(raw))
    r = httpx.get(url, timeout=30)
    assert r.status_code == 503 and "does not verify" in r.json()["detail"], r.text
    second = httpx.get(url, timeout=30)  # discarded, but while its job runs the answer stays 503, not 404
    assert second.status_code in (503, 200), second.text
    job = wait_job(lambda j: api_job(sec, j), r.json()["job"], 300)
    assert job["state"] == "done", job
    after = httpx.get(url, timeout=30)
    assert after.status_code == 200
    d = after.json()
    assert d["inventory"] == good["inventory"] and d["weights_sha256"] == good["weights_sha256"]
    assert set(d["analyses"]) >= set(good["analyses"]) - {"clusters"}


# ---- XSS: user-controlled strings on pages ---------------------------------------------------------------
HOSTILE = '<img src=x onerror="window.__xss=1">"><script>window.__xss=2</script>'

CHROMIUM = os.environ.get("CONVSCOPE_CHROMIUM", "/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing")
def test_no_markup_injection_from_user_controlled_strings(sec):
    """A model record whose every free-text field is hostile markup (as a crafted upload or a tampered
    record could make it), a layer name and checkpoint keys in a job error: every page shows them as
    text; no element or script is injected."""
    from playwright.sync_api import sync_playwright

    from precompute.jobs import _write

    cache = Cache(sec.settings.cache)
    rec = json.loads(json.dumps(sec.records[sec.model]))
    rec["name"] = "xss-model"
    rec["spec"].update(name="xss-model", description=HOSTILE, origin=HOSTILE, license=HOSTILE, dataset=HOSTILE,
                       arch=HOSTILE, source={"kind": HOSTILE, "detail": HOSTILE})
    rec["errors"] = {"nmf-extra": HOSTILE}
    rec["inventory"].append({**rec["inventory"][-1], "name": HOSTILE, "index": 10_000})
    cache.put_model("xss-model", rec)
    jid = "upload-xss-model-" + "a" * 16
    _write(sec.settings, {"id": jid, "kind": "upload", "state": "failed", "progress": 0.3, "message": HOSTILE,
                          "error": f"unexpected keys in the state dict: {HOSTILE}", "attempts": 1,
                          "args": {"name": "xss-model", "arch": "resnet20", "filename": HOSTILE, "path": "x"},
                          "created": time.time(), "history": [{"t": time.time(), "event": "failed", "error": HOSTILE}]})
    conv = next(r["name"] for r in rec["inventory"] if r.get("type") == "conv")
    from urllib.parse import quote

    pages = ["/", "/models/xss-model", f"/models/xss-model/layers/{conv}", f"/models/xss-model/layers/{conv}/neurons/0",
             f"/compare?pairs=xss-model:{conv},{quote(HOSTILE)}:x", f"/jobs/{jid}", "/upload",
             f"/models/{quote(HOSTILE, safe='')}"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = b.new_page(base_url=sec.url)
            dialogs = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for url in pages:
                resp = page.goto(url)
                assert resp.status == 200 or (url.startswith("/models/%3C") and resp.status in (404, 422)), \
                    (url, resp.status)
                page.wait_for_load_state("networkidle")
                assert page.evaluate("window.__xss") is None, url
                assert page.locator("img[src='x']").count() == 0, url
                assert not dialogs, (url, dialogs)
            page.goto(f"/jobs/{jid}")
            page.wait_for_load_state("networkidle")
            assert "<img src=x" in page.inner_text("#job-error")  # shown as text
            page.goto("/models/xss-model")
            page.wait_for_load_state("networkidle")
            assert "<img src=x" in page.inner_text("body")
            # a model with failed analyses offers to recompute: POST /api/models/{model}/precompute, job page
            page.click("#recompute")
            page.wait_for_url(re.compile(r"/jobs/precompute-xss-model-[0-9a-f]{16}$"))
            assert page.inner_text("#job-id").startswith("precompute-xss-model-")
        finally:
            b.close()
    cache.discard(cache.model_path("xss-model"))

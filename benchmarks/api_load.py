"""Load test of the explorer API: requests/s, latency, failures and the server's memory at 32 concurrent clients.

Starts uvicorn (factory mode, one worker) on a free localhost port in a subprocess against an existing
cache, warms it up, fires N GET requests from C concurrent keep-alive clients, and prints req/s, p50,
p90, p99, failures and the server's RSS, sampled every 50 ms during the run: after the warm-up, the
maximum during the run, at the end, and the growth (max - after warm-up).

    .venv/bin/python benchmarks/api_load.py --data-dir ~/.convscope            # first model's largest NMF layer
    .venv/bin/python benchmarks/api_load.py --data-dir DIR --mix -n 10000      # several endpoints and pages (below)
    .venv/bin/python benchmarks/api_load.py --data-dir DIR --path /api/models/resnet20-cifar10/layers/layer3.2.conv2/nmf
    .venv/bin/python benchmarks/api_load.py --data-dir DIR --client httpx      # httpx.AsyncClient instead of raw sockets

``--mix`` spreads the requests round-robin over the paths a person and a client of the API use, for
every model in the cache (``mixed_paths``): the model JSON and page; for two layers (the largest NMF
layer and the first layer with a result) the layer context, every analysis result the layer has and
the layer page; the batchnorm result of the first BatchNorm layer; 2 neurons' JSON and a neuron page;
then the models list, the home, findings and compare pages, /api/findings, and /api/clusters over
single layers and over a layer beside its random twin's; plus 10 % invalid requests (unknown and
malformed models, layers, analyses and neurons, an out-of-range k, an unknown endpoint and pages),
each with the status it must get (404 or 422). A request "fails" when its status is not the one
expected for its path (200 for the valid ones).

Clients: ``raw`` (default) is a minimal HTTP/1.1 keep-alive client on asyncio streams, so that on a small
machine the load generator takes little of the CPU the server needs; ``httpx`` uses httpx.AsyncClient.
Both send ``Accept-Encoding: gzip`` like a browser (``--no-gzip`` to turn that off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def start_server(env: dict, port: int, workers: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "uvicorn", "server.app:create_app", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise SystemExit(f"uvicorn exited with {proc.returncode}")
    proc.kill()
    raise SystemExit("uvicorn did not start within 60 s")


def _nmf_models(base: str):
    """(model, its largest NMF layer, neuron count) of every model that has an NMF result."""
    with urllib.request.urlopen(base + "/api/models") as r:
        models = json.load(r)["models"]
    if not models:
        raise SystemExit("the cache has no models; precompute one first (convscope precompute resnet20-cifar10)")
    for m in models:
        with urllib.request.urlopen(f"{base}/api/models/{m['name']}") as r:
            detail = json.load(r)
        layers = (detail["analyses"].get("nmf") or {}).get("layers") or []
        if layers:
            rows = {row["name"]: row for row in detail["inventory"]}
            best = max(layers, key=lambda name: rows[name]["weight_shape"][0])
            yield m["name"], best, rows[best]["weight_shape"][0]


def pick_path(base: str) -> str:
    """The NMF result of the layer with the most neurons of the first model that has one."""
    for m, layer, _ in _nmf_models(base):
        return f"/api/models/{m}/layers/{layer}/nmf"
    raise SystemExit("no model in the cache has an NMF result")


def _get_json(url: str):
    with urllib.request.urlopen(url) as r:
        return json.load(r)


#: share of invalid requests in the mix
INVALID_SHARE = 0.10


def mixed_paths(base: str) -> list[tuple[str, int]]:
    """(path, expected status) of the mix (see --mix): the valid paths of every model, then about
    INVALID_SHARE of invalid ones."""
    models = _get_json(base + "/api/models")["models"]
    if not models:
        raise SystemExit("the cache has no models; precompute one first (convscope precompute resnet20-cifar10)")
    valid = ["/api/models", "/", "/findings", "/api/findings"]
    invalid_seeds = []  # (model, a layer with neurons, its neuron count)
    nmf_big = {}  # model -> its largest NMF layer (for clusters)
    for m in models:
        name = m["name"]
        detail = _get_json(f"{base}/api/models/{name}")
        rows = {row["name"]: row for row in detail["inventory"]}
        by_layer: dict[str, list[str]] = {}
        for analysis, info in sorted(detail["analyses"].items()):
            for layer in info.get("layers", []):
                by_layer.setdefault(layer, []).append(analysis)
        valid += [f"/api/models/{name}", f"/models/{name}"]
        nmf = (detail["analyses"].get("nmf") or {}).get("layers") or []
        big = max(nmf, key=lambda l: rows[l]["weight_shape"][0]) if nmf else None
        first = next((r["name"] for r in sorted(detail["inventory"], key=lambda r: r.get("index", 0))
                      if r["name"] in by_layer and r.get("type") != "batchnorm"), None)
        for layer in dict.fromkeys(x for x in (big, first) if x):
            valid += [f"/api/models/{name}/layers/{layer}", f"/models/{name}/layers/{layer}"]
            valid += [f"/api/models/{name}/layers/{layer}/{a}" for a in by_layer[layer]]
        bn = next((l for l, a in by_layer.items() if rows[l].get("type") == "batchnorm"), None)
        if bn:
            valid.append(f"/api/models/{name}/layers/{bn}/batchnorm")
        unit = big or first
        n = (rows[unit].get("weight_shape") or [0])[0] if unit else 0
        if n:
            valid += [f"/api/models/{name}/layers/{unit}/neurons/{i * n // 2}" for i in range(2)]
            valid.append(f"/models/{name}/layers/{unit}/neurons/{n // 2}")
            invalid_seeds.append((name, unit, n))
        if big:
            nmf_big[name] = big
    # clusters: single layers, and a trained layer beside the same layer of its random twin
    names = sorted(nmf_big)
    for name in names[:6]:
        valid.append(f"/api/clusters?pairs={name}:{nmf_big[name]}&k=8")
    twins = [(a, b) for a in names for b in names if b.endswith("-random") and a != b
             and b == a.rsplit("-", 1)[0] + "-random" and nmf_big[a] == nmf_big[b]]
    for a, b in twins[:4]:
        valid.append(f"/api/clusters?pairs={a}:{nmf_big[a]},{b}:{nmf_big[b]}&k=6")
        valid.append(f"/compare?pairs={a}:{nmf_big[a]},{b}:{nmf_big[b]}")
    if not invalid_seeds:
        raise SystemExit("no model in the cache has a layer with neurons")
    kinds = [
        lambda i, m, l, n: (f"/api/models/no-such-model-{i}", 404),
        lambda i, m, l, n: (f"/api/models/{m}/layers/no.such.layer{i}", 404),
        lambda i, m, l, n: (f"/api/models/{m}/layers/{l}/neurons/{n + i}", 404),
        lambda i, m, l, n: (f"/api/models/{m}/layers/{l}/neurons/x{i}", 422),
        lambda i, m, l, n: (f"/api/models/{m}/layers/{l}/nosuch{i}", 404),
        lambda i, m, l, n: (f"/api/models/Bad_Name{i}", 422),
        lambda i, m, l, n: (f"/models/no-such-model-{i}", 404),
        lambda i, m, l, n: (f"/models/{m}/layers/{l}/neurons/{n + i}", 404),
        lambda i, m, l, n: (f"/api/clusters?pairs={m}:{l}&k={40 + i}", 422),
        lambda i, m, l, n: (f"/api/no-such-endpoint-{i}", 404),
    ]
    count = round(len(valid) * INVALID_SHARE / (1 - INVALID_SHARE))
    invalid = [kinds[i % len(kinds)](i, *invalid_seeds[i % len(invalid_seeds)]) for i in range(count)]
    # shuffled (always the same way): each client walks a window of the list, so that a window is a sample
    # of the whole mix (pages, API, invalid) rather than the first models' paths only
    out = [(p, 200) for p in valid] + invalid
    random.Random(0).shuffle(out)
    return out


def probe(base: str, paths: list[tuple[str, int]]) -> int:
    """GET every path once (this also computes what is computed on first use: clusters, findings); exits
    naming the paths whose status is not the expected one. Returns the mean body size."""
    size, wrong = 0, []
    for path, expected in paths:
        try:
            with urllib.request.urlopen(base + path) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        size += len(body)
        if status != expected:
            wrong.append(f"{path}: {status}, expected {expected}")
    if wrong:
        raise SystemExit(f"{len(wrong)} paths of the mix answer another status than expected: " + "; ".join(wrong[:10]))
    return size // len(paths)


class RSSSampler:
    """Samples a process' resident set size every ``every`` seconds in a thread."""

    def __init__(self, pid: int, every: float = 0.05):
        import threading

        self.pid, self.every, self.samples = pid, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            self.samples.append(rss_mb(self.pid))

    def __enter__(self):
        self.samples.append(rss_mb(self.pid))
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_mb(self.pid))


# ---- clients ----------------------------------------------------------------------------------------
def _entries(paths) -> list[tuple[str, int]]:
    """``paths``: one path, a list of paths (200 expected) or of (path, expected status)."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    return [p if isinstance(p, tuple) else (p, 200) for p in paths]


async def raw_worker(port: int, paths, n: int, gzip: bool, lat: list, fails: list, start: int = 0) -> None:
    entries = _entries(paths)
    reqs = [(f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json, text/html\r\n"
             + ("Accept-Encoding: gzip\r\n" if gzip else "") + "\r\n").encode() for p, _ in entries]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for j in range(n):
        t0 = time.perf_counter()
        try:
            writer.write(reqs[(start + j) % len(reqs)])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length, chunked = 0, False
            for line in head.split(b"\r\n"):
                low = line.lower()
                if low.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
                elif low.startswith(b"transfer-encoding:") and b"chunked" in low:
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                await reader.readexactly(length)
            path, expected = entries[(start + j) % len(reqs)]
            if status != expected:
                fails.append((status, path))
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            fails.append(repr(e))
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lat.append(time.perf_counter() - t0)
    writer.close()


async def httpx_worker(client, url: str, n: int, gzip: bool, lat: list, fails: list, expected: int = 200) -> None:
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            r = await client.get(url, headers=headers)
            if r.status_code != expected:
                fails.append((r.status_code, url))
        except Exception as e:  # noqa: BLE001
            fails.append(repr(e))
        lat.append(time.perf_counter() - t0)


async def run_load(port: int, path, total: int, conc: int, client: str, gzip: bool) -> tuple[list, list, float]:
    """``path``: one path, or a list that every client walks round-robin (each from its own offset)."""
    lat: list[float] = []
    fails: list = []
    per = [total // conc + (1 if i < total % conc else 0) for i in range(conc)]
    paths = _entries(path)
    t0 = time.perf_counter()
    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with httpx.AsyncClient(limits=limits, timeout=30) as c:
            await asyncio.gather(*(httpx_worker(c, f"http://127.0.0.1:{port}{paths[i % len(paths)][0]}", k, gzip, lat,
                                                fails, paths[i % len(paths)][1]) for i, k in enumerate(per)))
    else:
        # each client from its own offset, spread over the list: together they cover it even in a short run
        await asyncio.gather(*(raw_worker(port, paths, k, gzip, lat, fails, start=i * len(paths) // conc)
                               for i, k in enumerate(per)))
    return lat, fails, time.perf_counter() - t0


def _fast_http() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("httptools", "uvloop"))


def _run(coro):
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def run_benchmark(env: dict, path=None, mix: bool = False, requests: int = 20000, concurrency: int = 32,
                  client: str = "raw", gzip: bool = True, workers: int = 1) -> dict:
    """Start a server with ``env``, warm it, load it, sample its RSS; returns the figures (see main)."""
    load_before = round(os.getloadavg()[0], 2)
    port = free_port()
    proc = start_server(env, port, workers)
    try:
        base = f"http://127.0.0.1:{port}"
        paths = mixed_paths(base) if mix else [(path or pick_path(base), 200)]
        size = probe(base, paths)
        # warm-up: every path a few times (in-memory LRUs, templates, lazy imports)
        _run(run_load(port, paths, max(min(2000, requests), 4 * len(paths)), concurrency, client, gzip))
        with RSSSampler(proc.pid) as rss:
            lat, fails, wall = _run(run_load(port, paths, requests, concurrency, client, gzip))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    samples = [x for x in rss.samples if x == x]  # drop NaN (process gone)
    return {"paths": [p for p, _ in paths] if mix else paths[0][0], "distinct_paths": len(paths),
            "invalid_paths": sum(1 for _, e in paths if e != 200), "body_bytes": size,
            "requests": len(lat), "concurrency": concurrency, "client": client, "gzip": gzip, "workers": workers,
            "req_per_s": round(len(lat) / wall, 1), "p50_ms": round(q(0.50), 2), "p90_ms": round(q(0.90), 2),
            "p99_ms": round(q(0.99), 2), "mean_ms": round(statistics.fmean(lat) * 1000, 2), "failures": len(fails),
            "first_failures": [str(f) for f in fails[:5]],
            "rss_start_mb": round(samples[0], 1), "rss_max_mb": round(max(samples), 1),
            "rss_end_mb": round(samples[-1], 1), "rss_growth_mb": round(max(samples) - samples[0], 1),
            "rss_samples": len(samples), "server_rss_mb": round(samples[-1], 1), "cpus": os.cpu_count(),
            "load_before": load_before, "uvloop_httptools": _fast_http()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, help="CONVSCOPE_DATA_DIR of an existing cache (default: the environment's)")
    ap.add_argument("--cache-dir", type=Path, help="CONVSCOPE_CACHE_DIR, if not under the data dir")
    ap.add_argument("--path", help="URL path to load (default: the first model's largest NMF layer)")
    ap.add_argument("--mix", action="store_true", help="several endpoints and pages instead of one path (see above)")
    ap.add_argument("-n", "--requests", type=int, default=20000)
    ap.add_argument("-c", "--concurrency", type=int, default=32)
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw")
    ap.add_argument("--no-gzip", action="store_true")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = ap.parse_args(argv)

    env = dict(os.environ)
    if args.data_dir:
        env["CONVSCOPE_DATA_DIR"] = str(args.data_dir)
    if args.cache_dir:
        env["CONVSCOPE_CACHE_DIR"] = str(args.cache_dir)
    out = run_benchmark(env, path=args.path, mix=args.mix, requests=args.requests, concurrency=args.concurrency,
                        client=args.client, gzip=not args.no_gzip, workers=args.workers)
    if args.json:
        print(json.dumps(out))
    else:
        what = (f"{out['distinct_paths']} paths, {out['invalid_paths']} of them invalid (--mix: model, layer, "
                f"analysis and neuron JSON, pages, findings, clusters)" if args.mix
                else f"GET {out['paths']} ({out['body_bytes']:,} bytes uncompressed)")
        print(f"{what}, {out['requests']} requests, {args.concurrency} concurrent clients ({args.client}, gzip "
              f"{'on' if out['gzip'] else 'off'}), {args.workers} worker(s), {out['cpus']} CPUs")
        print(f"  {out['req_per_s']:,.0f} req/s   p50 {out['p50_ms']:.1f} ms   p90 {out['p90_ms']:.1f} ms   "
              f"p99 {out['p99_ms']:.1f} ms   unexpected statuses {out['failures']}")
        print(f"  server RSS: {out['rss_start_mb']:.0f} MB after warm-up, max {out['rss_max_mb']:.0f} MB during the run, "
              f"{out['rss_end_mb']:.0f} MB at the end (growth {out['rss_growth_mb']:+.1f} MB; {out['rss_samples']} samples)")
        print(f"  (1-min load average before the run: {out['load_before']}; uvicorn with httptools+uvloop: "
              f"{'yes' if out['uvloop_httptools'] else 'no (h11 + asyncio)'})")
        if out["failures"]:
            print("  first failures:", out["first_failures"])
    return 1 if out["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

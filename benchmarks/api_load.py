"""Load test of the explorer API: requests/s and latency for a layer's JSON at 32 concurrent clients.

Starts uvicorn (factory mode, one worker) on a free localhost port in a subprocess against an existing
cache, warms it up, fires N GET requests from C concurrent keep-alive clients, and prints req/s, p50,
p90, p99, failures and the server's RSS.

    .venv/bin/python benchmarks/api_load.py --data-dir ~/.convscope            # first model's largest NMF layer
    .venv/bin/python benchmarks/api_load.py --data-dir DIR --path /api/models/resnet20-cifar10/layers/layer3.2.conv2/nmf
    .venv/bin/python benchmarks/api_load.py --data-dir DIR --client httpx      # httpx.AsyncClient instead of raw sockets

Clients: ``raw`` (default) is a minimal HTTP/1.1 keep-alive client on asyncio streams, so that on a small
machine the load generator takes little of the CPU the server needs; ``httpx`` uses httpx.AsyncClient.
Both send ``Accept-Encoding: gzip`` like a browser (``--no-gzip`` to turn that off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
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


def pick_path(base: str) -> str:
    """The NMF result of the layer with the most neurons of the first model that has one."""
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
            return f"/api/models/{m['name']}/layers/{best}/nmf"
    raise SystemExit("no model in the cache has an NMF result")


# ---- clients ----------------------------------------------------------------------------------------
async def raw_worker(port: int, path: str, n: int, gzip: bool, lat: list, fails: list) -> None:
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
           + ("Accept-Encoding: gzip\r\n" if gzip else "") + "\r\n").encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if status != 200:
                fails.append(status)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            fails.append(repr(e))
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        lat.append(time.perf_counter() - t0)
    writer.close()


async def httpx_worker(client, url: str, n: int, gzip: bool, lat: list, fails: list) -> None:
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            r = await client.get(url, headers=headers)
            if r.status_code != 200:
                fails.append(r.status_code)
        except Exception as e:  # noqa: BLE001
            fails.append(repr(e))
        lat.append(time.perf_counter() - t0)


async def run_load(port: int, path: str, total: int, conc: int, client: str, gzip: bool) -> tuple[list, list, float]:
    lat: list[float] = []
    fails: list = []
    per = [total // conc + (1 if i < total % conc else 0) for i in range(conc)]
    t0 = time.perf_counter()
    if client == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
        async with httpx.AsyncClient(limits=limits, timeout=30) as c:
            await asyncio.gather(*(httpx_worker(c, f"http://127.0.0.1:{port}{path}", k, gzip, lat, fails) for k in per))
    else:
        await asyncio.gather(*(raw_worker(port, path, k, gzip, lat, fails) for k in per))
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, help="CONVSCOPE_DATA_DIR of an existing cache (default: the environment's)")
    ap.add_argument("--cache-dir", type=Path, help="CONVSCOPE_CACHE_DIR, if not under the data dir")
    ap.add_argument("--path", help="URL path to load (default: the first model's largest NMF layer)")
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
    load_before = round(os.getloadavg()[0], 2)
    port = free_port()
    proc = start_server(env, port, args.workers)
    try:
        base = f"http://127.0.0.1:{port}"
        path = args.path or pick_path(base)
        with urllib.request.urlopen(base + path) as r:
            size = len(r.read())
        _run(run_load(port, path, min(2000, args.requests), args.concurrency, args.client, not args.no_gzip))
        lat, fails, wall = _run(run_load(port, path, args.requests, args.concurrency, args.client,
                                                not args.no_gzip))
        rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
    out = {"path": path, "body_bytes": size, "requests": len(lat), "concurrency": args.concurrency,
           "client": args.client, "gzip": not args.no_gzip, "workers": args.workers,
           "req_per_s": round(len(lat) / wall, 1), "p50_ms": round(q(0.50), 2), "p90_ms": round(q(0.90), 2),
           "p99_ms": round(q(0.99), 2), "mean_ms": round(statistics.fmean(lat) * 1000, 2), "failures": len(fails),
           "server_rss_mb": round(rss, 1), "cpus": os.cpu_count(), "load_before": load_before,
           "uvloop_httptools": _fast_http()}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"GET {path} ({size:,} bytes uncompressed), {out['requests']} requests, {args.concurrency} concurrent "
              f"clients ({args.client}, gzip {'on' if out['gzip'] else 'off'}), {args.workers} worker(s), {out['cpus']} CPUs")
        print(f"  {out['req_per_s']:,.0f} req/s   p50 {out['p50_ms']:.1f} ms   p90 {out['p90_ms']:.1f} ms   "
              f"p99 {out['p99_ms']:.1f} ms   failures {out['failures']}   server RSS {out['server_rss_mb']:.0f} MB")
        print(f"  (1-min load average before the run: {load_before}; uvicorn with httptools+uvloop: "
              f"{'yes' if out['uvloop_httptools'] else 'no (h11 + asyncio)'})")
        if fails:
            print("  first failures:", fails[:5])
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Load benchmark: 200 concurrent status clients and 10 submitters against a rendering server
for 60 s (loopback only). Prints requests/s, p50 and p99 latency, and errors, for the status
requests and the submissions. Target: no errors, p99 <= 100 ms.

A status client polls one job's state every --interval seconds (default 0.5 s, as
`distren submit --wait` does), starting at a random offset; a submitter posts the sample package
(8 frames) and waits --interval before the next. Latency is measured per request; a request
that takes longer than the interval delays that client's next one (no request is skipped).

The server is a real `distren serve` process (2 render slots, rendering the bundled sample
while the load runs); the load comes from this process (asyncio + httpx), so on a 2-core
machine the clients, the server and the renders share the CPU.

Run: .venv/bin/python benchmarks/load.py [--seconds 60] [--status-clients 200] [--submitters 10] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import free_port, pct, wait_until_up

import distren

SAMPLE = Path(distren.__file__).parent / "samples" / "orbit" / "orbit.ini"




class RawConnection:
    """A minimal keep-alive HTTP/1.1 GET client on one connection. httpx spends several ms of
    CPU per request with hundreds of connections in one process, which would measure the load
    generator rather than the server."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def get(self, path: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def status_client(host: str, port: int, ids: list[int], stop: float, lat: list, errors: list,
                        interval: float) -> None:
    import random

    conn = RawConnection(host, port)
    await asyncio.sleep(random.uniform(0, interval))
    i = 0
    while time.monotonic() < stop:
        started = time.monotonic()
        job = ids[i % len(ids)]
        i += 1
        t0 = time.perf_counter()
        try:
            status = await conn.get(f"/api/v1/jobs/{job}")
            if status != 200:
                errors.append(f"status {status}")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors.append(type(exc).__name__)
            conn.close()
        lat.append(time.perf_counter() - t0)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    conn.close()


async def submitter(http: httpx.AsyncClient, package: bytes, stop: float, lat: list, errors: list, ids: list,
                    interval: float) -> None:
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        try:
            r = await http.post("/api/v1/jobs", content=package)
            if r.status_code != 201:
                errors.append(f"submit {r.status_code}")
            else:
                ids.append(r.json()["id"])
        except httpx.HTTPError as exc:
            errors.append(type(exc).__name__)
        lat.append(time.perf_counter() - t0)
        await asyncio.sleep(interval)


async def run_load(url: str, package: bytes, seconds: float, n_status: int, n_submit: int, interval: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        first = await http.post("/api/v1/jobs", content=package)
        first.raise_for_status()
        ids = [first.json()["id"]]
        stop = time.monotonic() + seconds
        s_lat, s_err, p_lat, p_err = [], [], [], []
        t0 = time.monotonic()
        await asyncio.gather(
            *(status_client(host, int(port), ids, stop, s_lat, s_err, interval) for _ in range(n_status)),
            *(submitter(http, package, stop, p_lat, p_err, ids, interval) for _ in range(n_submit)),
        )
        wall = time.monotonic() - t0
    return {"wall": wall, "status": (s_lat, s_err), "submit": (p_lat, p_err), "jobs": len(ids)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--status-clients", type=int, default=200)
    parser.add_argument("--submitters", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between one client's requests")
    args = parser.parse_args()
    distren_cmd = [sys.executable, "-m", "distren.cli"]
    with tempfile.TemporaryDirectory(prefix="distren-load-") as tmp:
        pkg = Path(tmp) / "job.tar.gz"
        subprocess.run(distren_cmd + ["pack", str(SAMPLE), "--frames", "1-8", "-o", str(pkg)], check=True,
                       stdout=subprocess.DEVNULL)
        port = free_port()
        server = subprocess.Popen(distren_cmd + ["serve", "--name", "load", "--listen", f"127.0.0.1:{port}",
                                                 "--data", str(Path(tmp) / "data"), "--slots", "2"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_until_up(url, server, "load", lambda: "(its output is not kept)")
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 1
            result = asyncio.run(run_load(url, pkg.read_bytes(), args.seconds, args.status_clients, args.submitters,
                                       args.interval))
            frames_done = sum(j["frames"]["done"] for j in httpx.get(url + "/api/v1/jobs", timeout=30).json())
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    wall = result["wall"]
    print(f"{args.status_clients} status clients + {args.submitters} submitters for {wall:.0f} s against a server "
          f"rendering on 2 slots ({os.cpu_count()} cores); {result['jobs']} jobs submitted, {frames_done} frames rendered")
    for label, (lat, err) in (("status", result["status"]), ("submit", result["submit"])):
        ms = [x * 1000 for x in lat]
        print(f"{label:>7}: {len(lat) / wall:8.1f} req/s  p50 {pct(ms, 50):7.1f} ms  p99 {pct(ms, 99):7.1f} ms"
              f"  max {max(ms) if ms else float('nan'):7.1f} ms  errors {len(err)}"
              + (f" ({', '.join(sorted(set(err))[:5])})" if err else ""))
    cpu = os.times()
    print(f"load generator CPU: {cpu.user + cpu.system:.1f} s over {wall:.0f} s")
    all_ms = [x * 1000 for x in result["status"][0] + result["submit"][0]]
    errors = len(result["status"][1]) + len(result["submit"][1])
    print(f"overall: p99 {pct(all_ms, 99):.1f} ms (target <= 100 ms), errors {errors} (target 0), "
          f"mean {statistics.fmean(all_ms):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

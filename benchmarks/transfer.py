#!/usr/bin/env python3
"""Transfer benchmark (issue 9, item 4 "Transfers"): how fast a large seed goes from the client
to the home server, from the home to a peer that renders it, and is unpacked there; how fast a
large output comes back home; how much memory the peer needs for it; and that the seed is sent
once per peer however many of its frames the peer renders.

Two real `distren serve` on loopback ports, federated (a shared secret, each the other's
--peer, --claim-backoff-max 0.5): the home with --slots 0 (it renders nothing) and one peer
with --peer-slots (default 2). One job: a plain tarball of `distrenjob.xml` and `data.bin`, --size-mb of
incompressible (pseudo-random) bytes (default 1024), --frames frames (default 4) rendered by a
plug-in backend "xfer" that the benchmark writes and registers through the `distren.backends`
entry point (on scale.py's null backend, written beside it): a render costs no renderer time; it
checks the size of the seed's data.bin in its scene folder, copies --output-mb of it
(default 512; frame 0 only, the other frames 1 KiB) into its output folder with
copy_file_range, and appends the wall-clock times of its start and end to a side file.

Printed, each with its MB/s (MB = 10^6 bytes) and, against its target, pass or MISS:

  submit          upload start until the 201: the body streamed to the home, the intake
                  (strict extraction and checks in the intake worker, the scene installed);
                  split at the moment the home's upload file holds the whole body
  seed to peer    the first lease (the frame's `started` at the home) until the seed is in
                  the peer's blob store (polled every 2 ms): download, verification, publish
  unpack on peer  from then until the first render starts (the plug-in's time stamp): the
                  scene extracted on the peer, the frame's folders made
  whole chain     upload start until the first render on the peer starts
  output home     the big frame's render end (plug-in time stamp) until the home records it
                  done: the output tarball written into the peer's blob store, uploaded,
                  verified and stored at home, the result recorded; split where the
                  home's upload file of it appears (over 1 MiB) and where it is whole
  peer RSS growth the peer's VmHWM (/proc/PID/status) after the job minus before the submit
  seed sent       the bytes the home read from files (/proc/PID/io rchar; socket traffic is
                  not counted there) from its 201 until the job is done, in seeds: 1.0 is the
                  seed read once to send it to the peer (the outputs it receives are written,
                  not read)
  event loops     GET /api/v1/server of both servers every 100 ms during the run: the
                  server's own last loop lag (`loop_lag_ms.last`) and the answer's time

and baselines measured in the same run on the same disk: `cp` of the package, a Python
streamed copy (1 MiB reads and writes), Python's hashlib.sha256 over it (1 MiB reads) and
`tar -xf` of it; each figure is also given as its time over the baselines' times.

Targets: seed to peer >= 300 MB/s, whole chain >= 150 MB/s, output home >= 300 MB/s (the
same rate as the seed), peer RSS growth <= 64 MB, seed sent at most once per peer (<= 1.1
seeds read, counting the database's reads). The last line is machine-readable:
`seed_to_peer_mbps=N chain_mbps=N output_mbps=N peer_rss_growth_mb=N`.

Data lives in a temporary folder under --dir (default: the system's temporary folder), which
needs about 6 x the seed + 3 x the output free (checked first) and is removed at the end
(--keep keeps it); servers are stopped by process group, also on errors, Ctrl-C and SIGTERM.
The machine's other load shows in the figures: run it two or three times.

Run: .venv/bin/python benchmarks/transfer.py [--size-mb 1024] [--output-mb 512] [--frames 4]
                                             [--peer-slots 2] [--dir DIR] [--timeout 600] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _common import Server, mark, sigterm, status_kb, write_plugin
from scale import write_plugin as write_null_plugin

from distren.client import Client

MB = 1e6
TARGET_SEED_MBPS = 300.0
TARGET_CHAIN_MBPS = 150.0
TARGET_OUTPUT_MBPS = 300.0
TARGET_RSS_MB = 64.0
TARGET_SEED_SENDS = 1.1
SECRET = "a federation secret for the transfer benchmark, long enough\n"
WATCH = 0.002

PLUGIN = '''"""A backend that copies part of its seed into its output: written by distren's
benchmarks/transfer.py (on scale.py's null backend)."""

import asyncio
import os
import time

from distren.backends.base import RenderResult
from distren_nullbackend import NullBackend


class TransferBackend(NullBackend):
    name = "xfer"

    def chunkable(self, settings):
        return False

    async def render(self, task):
        return await asyncio.to_thread(self._render, task)

    def _render(self, task):
        s = task.settings
        start = time.time()
        seed = task.scene / "data.bin"
        size = seed.stat().st_size
        if size != int(s["seed_bytes"]):
            return RenderResult(False, "", "data.bin is %d bytes, not %s" % (size, s["seed_bytes"]), [])
        out = task.out / "frame.bin"
        left = int(s["output_bytes"]) if task.frame == int(s["big_frame"]) else 1024
        with open(seed, "rb") as src, open(out, "wb") as dst:
            while left > 0:
                n = os.copy_file_range(src.fileno(), dst.fileno(), left)
                if n == 0:
                    src.seek(0)
                left -= n
        end = time.time()
        with open(s["log"], "a") as f:
            f.write("%d %d %.6f %.6f\\n" % (task.job, task.frame, start, end))
        return RenderResult(True, "", None, [out])
'''


# -- the package --------------------------------------------------------------------------------
class RandomData(io.RawIOBase):
    """`size` pseudo-random (incompressible) bytes, read in pieces."""

    def __init__(self, size: int, seed: int = 9):
        self.left = size
        self.rng = random.Random(seed)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def write_package(path: Path, seed_bytes: int, output_bytes: int, frames: int, log: Path) -> None:
    xml = (f"<?xml version='1.0' encoding='UTF-8'?>\n<distrenjob version=\"1\">\n<name>transfer</name>\n"
           f'<backend name="xfer"><seed_bytes>{seed_bytes}</seed_bytes><output_bytes>{output_bytes}</output_bytes>'
           f"<big_frame>0</big_frame><log>{log}</log></backend>\n"
           f'<frames>\n<range first="0" last="{frames - 1}"/>\n</frames>\n</distrenjob>\n').encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, copybufsize=1 << 20) as tar:
        info = tarfile.TarInfo("distrenjob.xml")
        info.size, info.mode = len(xml), 0o644
        tar.addfile(info, io.BytesIO(xml))
        info = tarfile.TarInfo("data.bin")
        info.size, info.mode = seed_bytes, 0o644
        tar.addfile(info, RandomData(seed_bytes))


# -- baselines ----------------------------------------------------------------------------------
def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def baselines(pkg: Path, scratch: Path) -> dict:
    """cp, a Python streamed copy, sha256 and tar -xf of the package, on the same disk."""
    copy = scratch / "copy"

    def pycopy() -> None:
        with open(pkg, "rb") as src, open(copy, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)

    def sha() -> None:
        h = hashlib.sha256()
        with open(pkg, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out["sha256"] = h.hexdigest()

    out: dict = {}
    out["cp"] = timed(lambda: subprocess.run(["cp", str(pkg), str(copy)], check=True))
    copy.unlink()
    out["pycopy"] = timed(pycopy)
    copy.unlink()
    out["sha"] = timed(sha)
    folder = scratch / "untar"
    folder.mkdir()
    out["untar"] = timed(lambda: subprocess.run(["tar", "-xf", str(pkg), "-C", str(folder)], check=True))
    shutil.rmtree(folder)
    return out


# -- watching the servers' folders --------------------------------------------------------------
class Watcher(threading.Thread):
    """Every 2 ms (wall-clock times): when the home's upload file holds the whole package, when
    the seed's blob is in the peer's store, and when an upload file of the big output appears
    at the home (over 1 MiB) and when it holds the whole output."""

    def __init__(self, home_tmp: Path, peer_blob: Path, body: int, output: int):
        super().__init__(daemon=True)
        self.home_tmp, self.peer_blob, self.body, self.output = home_tmp, peer_blob, body, output
        self.at: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set() and "output_whole" not in self.at:
            now = time.time()
            try:
                with os.scandir(self.home_tmp) as it:
                    sizes = [e.stat().st_size for e in it if e.name.startswith("blob-")]
            except OSError:
                sizes = []
            biggest = max(sizes, default=0)
            if "body" not in self.at:
                if biggest >= self.body:
                    self.at["body"] = now
            elif "seed" in self.at:
                if biggest > 1 << 20:
                    self.at.setdefault("output_seen", now)
                if biggest >= self.output:
                    self.at["output_whole"] = now
            if "seed" not in self.at and os.path.exists(self.peer_blob):
                self.at["seed"] = now
            self.halt.wait(WATCH)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)


def proc_io(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            key, value = line.split(":")
            out[key] = int(value)
    return out


class LagPoller(threading.Thread):
    """GET /api/v1/server of each server every 100 ms during the run: the answer's latency and
    the server's own last loop lag (how late its event loop woke a 0.1 s timer)."""

    def __init__(self, urls: dict[str, str]):
        super().__init__(daemon=True)
        self.urls = urls
        self.seen: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.halt.wait(0.1):
                for name, url in self.urls.items():
                    t0 = time.perf_counter()
                    try:
                        lag = float(http.get(url + "/api/v1/server").json()["loop_lag_ms"]["last"])
                    except (httpx.HTTPError, ValueError, KeyError, TypeError):
                        continue
                    self.seen[name].append(((time.perf_counter() - t0) * 1000, lag))

    def stop(self) -> dict[str, tuple[float, float]]:
        """Per server: (worst own lag, worst answer time) in ms."""
        self.halt.set()
        self.join(timeout=35)
        return {name: (max((lag for _, lag in v), default=float("nan")), max((t for t, _ in v), default=float("nan")))
                for name, v in self.seen.items()}


# -- the run ------------------------------------------------------------------------------------
def run(root: Path, args) -> dict:
    seed_bytes, output_bytes = args.size_mb * 1024 * 1024, args.output_mb * 1024 * 1024
    plugin = root / "plugin"
    write_null_plugin(plugin)
    write_plugin(plugin, "distren_xferbackend", PLUGIN, {"xfer": "TransferBackend"})
    renders_log = root / "renders.log"
    renders_log.touch()
    pkg = root / "seed.tar"
    t0 = time.perf_counter()
    write_package(pkg, seed_bytes, output_bytes, args.frames, renders_log)
    size = pkg.stat().st_size
    print(f"package: {size / MB:.0f} MB plain tarball (data.bin {seed_bytes / MB:.0f} MB of pseudo-random bytes), "
          f"written in {time.perf_counter() - t0:.1f} s", flush=True)
    base = baselines(pkg, root)
    res: dict = {"size": size, "base": base}

    secret = root / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    limit = str(max(2 * 1024**3, size + output_bytes + (1 << 20)))
    common = ["--federation-secret-file", str(secret), "--claim-backoff-max", "0.5",
              "--max-job-bytes", limit, "--max-unpacked-bytes", limit]
    home = Server(root, "home", 0, plugin, args.frames, backend="xfer", extra=common)
    peer = Server(root, "peer", args.peer_slots, plugin, args.frames, backend="xfer", extra=common)
    home.cmd += ["--peer", f"peer={peer.url}"]
    peer.cmd += ["--peer", f"home={home.url}"]
    sha = base["sha256"]
    watcher = Watcher(home.data / "blobs" / "tmp", peer.data / "blobs" / sha[:2] / sha, size, output_bytes)
    try:
        home.start()
        peer.start()
        rss0 = status_kb(peer.proc.pid, "VmHWM") / 1024
        watcher.start()
        lags = LagPoller({"home": home.url, "peer": peer.url})
        lags.start()
        with Client(home.url, timeout=args.timeout) as client:
            t_up = time.time()
            job = client.submit(pkg)
            t_201 = time.time()
            io0 = proc_io(home.proc.pid)
            deadline = time.monotonic() + args.timeout
            while True:
                info = client.job(job["url"])
                if info["state"] in ("done", "failed", "cancelled"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job not done after {args.timeout:.0f} s: {info['frames']}")
                time.sleep(0.05)
            io1 = proc_io(home.proc.pid)
            if info["state"] != "done":
                raise RuntimeError(f"job ended {info['state']}: {client.frame(job['url'] + '/0').get('error')}")
            frames = client.frames(job["url"])
        res["rss_growth"] = status_kb(peer.proc.pid, "VmHWM") / 1024 - rss0
        res["rss0"] = rss0
        res["lag"] = lags.stop()
    except BaseException:
        for s in (home, peer):
            if s.proc is not None and s.proc.poll() is not None:
                print(f"--- log of {s.name} ---\n{s.tail()}", file=sys.stderr)
        raise
    finally:
        watcher.stop()
        home.stop()
        peer.stop()
    renders = {}
    for line in renders_log.read_text().split("\n"):
        if line.strip():
            _, frame, start, end = line.split()
            renders[int(frame)] = (float(start), float(end))
    by_frame = {f["frame"]: f for f in frames}
    first = min(renders.values())[0]
    lease = min(f["started"] for f in frames)
    big = by_frame[0]
    at = watcher.at
    body_at, blob_at = at.get("body", t_201), at.get("seed", first)
    res.update(
        submit=t_201 - t_up, upload=body_at - t_up, intake=t_201 - body_at,
        seed=blob_at - lease, unpack=first - blob_at, chain=first - t_up, lease_wait=lease - t_201,
        output=big["finished"] - renders[0][1], output_size=big["output"]["size"],
        rendered_by={f["rendered_by"] for f in frames}, frames=len(frames),
        home_read=io1["rchar"] - io0["rchar"], home_written=io1["wchar"] - io0["wchar"],
        outputs=sum(f["output"]["size"] for f in frames), seen=at,
        problems=home.log_problems() + peer.log_problems(),
    )
    if "output_seen" in at and "output_whole" in at:
        res["output_parts"] = (at["output_seen"] - renders[0][1], at["output_whole"] - at["output_seen"],
                               big["finished"] - at["output_whole"])
    return res


def report(r: dict) -> None:
    size, base = r["size"], r["base"]

    def rate(seconds: float, nbytes: int | None = None) -> float:
        return (nbytes or size) / MB / seconds if seconds > 0 else float("inf")

    def versus(seconds: float) -> str:
        return (f"{seconds / base['cp']:5.1f}x cp, {seconds / base['pycopy']:4.1f}x copy, "
                f"{seconds / base['sha']:4.1f}x sha256, {seconds / base['untar']:4.1f}x tar -xf")

    print(f"baselines on this disk, {size / MB:.0f} MB: cp {base['cp']:.2f} s ({rate(base['cp']):.0f} MB/s), "
          f"Python copy {base['pycopy']:.2f} s ({rate(base['pycopy']):.0f} MB/s), "
          f"sha256 {base['sha']:.2f} s ({rate(base['sha']):.0f} MB/s), "
          f"tar -xf {base['untar']:.2f} s ({rate(base['untar']):.0f} MB/s)")
    rows = [
        ("submit", r["submit"], None, None),
        ("  body received", r["upload"], None, None),
        ("  intake", r["intake"], None, None),
        ("seed to peer", r["seed"], TARGET_SEED_MBPS, None),
        ("unpack on peer", r["unpack"], None, None),
        ("whole chain", r["chain"], TARGET_CHAIN_MBPS, None),
        ("output home", r["output"], TARGET_OUTPUT_MBPS, r["output_size"]),
    ]
    for label, seconds, target, nbytes in rows:
        mbps = rate(seconds, nbytes)
        verdict = f"target >= {target:g} MB/s: {mark(mbps >= target)}" if target else ""
        print(f"  {label:<16} {seconds:7.2f} s {mbps:7.0f} MB/s   ({versus(seconds)})   {verdict}")
    print(f"  (the peer leased its first frame {r['lease_wait']:.2f} s after the 201; part of the chain)")
    if "seed" not in r["seen"]:
        print("  note: the seed's blob was never seen in the peer's store (seed and unpack not split)")
    if "output_parts" in r:
        tar, upload, rest = r["output_parts"]
        print(f"  (output home: {tar:.2f} s until its upload began (the peer's tarball and blob), {upload:.2f} s "
              f"upload ({rate(upload, r['output_size']):.0f} MB/s), {rest:.2f} s until done at home)")
    print(f"  peer RSS growth  {r['rss_growth']:7.1f} MB (VmHWM {r['rss0']:.0f} MB before)   "
          f"target <= {TARGET_RSS_MB:g} MB: {mark(r['rss_growth'] <= TARGET_RSS_MB)}")
    sends = r["home_read"] / size
    print(f"  seed sent        {sends:7.2f} seeds: the home read {r['home_read'] / MB:.0f} MB from files and wrote "
          f"{r['home_written'] / MB:.0f} MB (outputs {r['outputs'] / MB:.0f} MB) while {', '.join(sorted(r['rendered_by']))} "
          f"rendered {r['frames']} frames   target <= {TARGET_SEED_SENDS:g} per peer: {mark(sends <= TARGET_SEED_SENDS)}")
    print("  event loops during the run (GET /server every 100 ms): " + ", ".join(
        f"{name} lag up to {lag:.0f} ms, answers within {took:.0f} ms" for name, (lag, took) in r["lag"].items()))
    if r["problems"]:
        print(f"  server logs: {len(r['problems'])} error lines, e.g. {r['problems'][0][:160]}")
    print(f"seed_to_peer_mbps={rate(r['seed']):.0f} chain_mbps={rate(r['chain']):.0f} "
          f"output_mbps={rate(r['output'], r['output_size']):.0f} peer_rss_growth_mb={r['rss_growth']:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="seed data in MiB (default 1024)")
    parser.add_argument("--output-mb", type=int, default=512, help="frame 0's output in MiB (default 512)")
    parser.add_argument("--frames", type=int, default=4, help="frames of the job, all rendered by the peer (default 4)")
    parser.add_argument("--peer-slots", type=int, default=2, help="render slots of the peer (default 2)")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to give the job (default 600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (data, logs, plug-in)")
    args = parser.parse_args()
    if args.size_mb < 1 or args.output_mb < 1 or args.frames < 1 or args.peer_slots < 1:
        parser.error("sizes, frames and slots must be >= 1")
    signal.signal(signal.SIGTERM, sigterm)
    root = Path(tempfile.mkdtemp(prefix="distren-bench-transfer-", dir=args.dir))
    need = (6 * args.size_mb + 3 * args.output_mb) * 1024 * 1024 + (256 << 20)
    free = shutil.disk_usage(root).free
    try:
        if free < need:
            print(f"{root}: {free / MB:.0f} MB free, the run needs about {need / MB:.0f} MB", file=sys.stderr)
            return 2
        print(f"transfer: {args.size_mb} MiB seed, {args.output_mb} MiB output, {args.frames} frames, peer with "
              f"{args.peer_slots} slots, {os.cpu_count()} cores; data in {root} ({free / MB:.0f} MB free)", flush=True)
        r = run(root, args)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())

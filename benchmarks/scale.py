#!/usr/bin/env python3
"""Scale benchmark (issue "every job ends at 100,000 frames"): jobs of 1,000, 10,000 and
100,000 frames, each plus one frame that depends on all the others (a fan-in frame, like a
video encode), rendered by a backend whose render costs nothing, so that only the server's
own work is timed: intake, scheduling, leases, results, readiness of the fan-in frame.

Per size, on a fresh `distren serve` (loopback port, temporary data folder, --slots as the
server's own default: one per usable core,
--max-frames N+1 so that the cap itself is not what is measured):

  submit s     POST /api/v1/jobs of the package until its 201
  frames/s     the N+1 frames / wall time from that 201 until the job's state is "done"
  rss MB       the server process's peak RSS (VmHWM in /proc/PID/status) at the end
  lag ms       event-loop lag seen from outside: a thread polls GET /api/v1/jobs/{id} every
               50 ms during the run; max_lag = the slowest answer minus the median one. The
               raw p99 and max of those answers are printed too. (During the submit the same
               thread polls GET /api/v1/server; that lag is printed apart.)

Then, on a fresh server that renders nothing (--slots 0) with two jobs of the largest size
(one to query and cancel, a second, never started, to delete): 200 sequential job status
requests (p50, p99), the first page of GET /api/v1/jobs/{id}/frames (the plain GET, however
long the page is), POST /jobs/{id}/cancel, DELETE /jobs/{id}.

Targets (at 100,000 frames): submit <= 10 s, >= 2,000 frames/s, RSS <= 300 MB, loop lag
<= 100 ms; per-frame cost growing linearly (per-frame time at the largest size / at the
smallest <= 2); idle server: status p99 <= 20 ms, frame list first page <= 0.2 s, cancel
<= 5 s, delete <= 10 s. Each figure is printed with "pass" or "MISS".

The no-cost backend is not part of distren: the benchmark writes a module
`distren_nullbackend.py` (backend "null": one `/bin/sh` process a render at nice 10, as distren
runs renderers, a chunk's frames in one run, writing one tiny file a frame with shell built-ins)
and its `.dist-info` with a `distren.backends` entry point into a temporary folder, and puts
that folder on the servers' PYTHONPATH, exactly as an installed plug-in would be found.

The package holds only `distrenjob.xml`: `<range first="0" last="N-1"/>` and frame N with
`<depends-all/>`; a server that refuses that element (400) gets one `<depends>` per frame
instead (printed: which form was used). A size that does not finish within --timeout seconds
(default 900) is given up, and said so; servers are stopped by process group, also on errors,
Ctrl-C and SIGTERM. The last line is machine-readable, for the largest size:
`frames_per_s=N submit_s=N rss_mb=N max_lag_ms=N`.

Run: .venv/bin/python benchmarks/scale.py [--sizes 1000,10000,100000] [--slots N] [--timeout 900] [--keep]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import signal
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx
from _common import Server, mark, pct, sigterm
from _common import write_plugin as _write_plugin

POLL = 0.05
STATUS_REQUESTS = 200

TARGET_SUBMIT_S = 10.0
TARGET_FPS = 2000.0
TARGET_RSS_MB = 300.0
TARGET_LAG_MS = 100.0
TARGET_LINEAR = 2.0
TARGET_STATUS_P99_MS = 20.0
TARGET_FRAMES_PAGE_S = 0.2
TARGET_CANCEL_S = 5.0
TARGET_DELETE_S = 10.0

PLUGIN = '''"""A backend whose render costs nothing: written by distren's benchmarks/scale.py."""

import asyncio

from distren.backends.base import Backend, RenderResult

# the renderer: one small process a render (a chunk's frames in one run, as a real renderer),
# writing one tiny file a frame with shell built-ins, at nice 10 as distren runs renderers
WRITE = 'for f in "$@"; do echo "$f" > "$f.txt"; done'


class NullBackend(Backend):
    name = "null"
    executable = ""

    def version(self):
        return "1"

    def check(self, settings, scene, frame_ids):
        return []

    def command(self, task):
        return []

    async def _write(self, task, frames):
        # at nice 10, as distren runs every renderer (backends/base.py)
        proc = await asyncio.create_subprocess_exec("nice", "-n", "10", "/bin/sh", "-c", WRITE, "null",
                                                    *map(str, frames), cwd=task.out)
        ok = await proc.wait() == 0
        return {f: RenderResult(ok, "", None if ok else "the writer failed", [task.out / ("%d.txt" % f)] if ok else [])
                for f in frames}

    async def render(self, task):
        return (await self._write(task, [task.frame]))[task.frame]

    def chunkable(self, settings):
        return True

    async def render_chunk(self, task):
        return await self._write(task, task.chunk)
'''


def write_plugin(folder: Path) -> None:
    _write_plugin(folder, "distren_nullbackend", PLUGIN, {"null": "NullBackend"})



# -- packages -----------------------------------------------------------------------------------
def job_xml(n: int, compact: bool) -> bytes:
    """N frames 0..N-1 and frame N depending on all of them."""
    if compact:
        fan_in = f'<frame id="{n}"><depends-all/></frame>'
    else:
        fan_in = f'<frame id="{n}">' + "".join(f"<depends>{i}</depends>" for i in range(n)) + "</frame>"
    return (f"<?xml version='1.0' encoding='UTF-8'?>\n<distrenjob version=\"1\">\n<name>scale-{n}</name>\n"
            f'<backend name="null"/>\n<frames>\n<range first="0" last="{n - 1}"/>\n{fan_in}\n</frames>\n'
            f"</distrenjob>\n").encode()


def package(n: int, compact: bool) -> bytes:
    """A gzip tarball holding only distrenjob.xml."""
    data = job_xml(n, compact)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("distrenjob.xml")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- the outside poller -------------------------------------------------------------------------
class Poller(threading.Thread):
    """GET `path` every 50 ms on one keep-alive connection (a slow answer delays the next one;
    none is skipped); latencies are kept per phase. On a job path it remembers the last
    answer and sets `finished` when the job's state is done, failed or cancelled."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=url, timeout=60)
        self.path = "/api/v1/server"
        self.phase = "submit"
        self.lat: dict[str, list[float]] = {"submit": [], "run": []}
        self.errors: list[str] = []
        self.last: dict | None = None
        self.began = 0.0            # monotonic time the run was followed from
        self.all_but: int | None = None
        self.all_but_at: float | None = None   # seconds until all frames but the fan-in were done
        self.worst = (0.0, 0.0)    # the slowest status answer during the run: (asked at s, took s)
        self.finished = threading.Event()
        self.halt = threading.Event()

    def follow(self, job: int, all_but: int) -> None:
        self.began, self.all_but = time.monotonic(), all_but
        self.path, self.phase = f"/api/v1/jobs/{job}", "run"

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            path, phase = self.path, self.phase
            t0 = time.perf_counter()
            try:
                r = self.http.get(path)
                took = time.perf_counter() - t0
                if r.status_code != 200:
                    self.errors.append(f"GET {path}: {r.status_code}")
                elif phase == "run":
                    self.last = r.json()
                    if self.all_but_at is None and self.last.get("frames", {}).get("done", 0) >= self.all_but:
                        self.all_but_at = time.monotonic() - self.began
                    if self.last.get("state") in ("done", "failed", "cancelled"):
                        self.finished.set()
            except (httpx.HTTPError, ValueError) as exc:
                took = time.perf_counter() - t0
                self.errors.append(f"GET {path}: {type(exc).__name__}")
            self.lat[phase].append(took)
            if phase == "run" and took > self.worst[1]:
                self.worst = (time.monotonic() - self.began - took, took)
            next_at = max(next_at + POLL, time.monotonic())
            self.halt.wait(max(0.0, next_at - time.monotonic()))
        self.http.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=70)


def lag_figures(lat: list[float]) -> dict:
    if not lat:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan"), "lag": float("nan")}
    ms = [x * 1000 for x in lat]
    med = statistics.median(ms)
    return {"n": len(ms), "p50": med, "p99": pct(ms, 99), "max": max(ms), "lag": max(ms) - med}


def own_lag(url: str) -> float | None:
    """The server's own loop-lag figure (max ms), when its GET /api/v1/server reports one."""
    try:
        lag = httpx.get(url + "/api/v1/server", timeout=30).json().get("loop_lag_ms")
        return float(lag["max"]) if isinstance(lag, dict) and "max" in lag else None
    except (httpx.HTTPError, ValueError, TypeError):
        return None


# -- one size -----------------------------------------------------------------------------------
def submit(http: httpx.Client, n: int, budget: float) -> dict:
    """POST the package; on a 400 for <depends-all/>, once more with one <depends> per frame."""
    out: dict = {"form": None, "refused": []}
    for compact in (True, False):
        body = package(n, compact)
        t0 = time.perf_counter()
        r = http.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/gzip"},
                      timeout=max(1.0, budget))
        took = time.perf_counter() - t0
        form = "<depends-all/>" if compact else f"{n} x <depends>"
        if r.status_code == 201:
            out.update(form=form, seconds=took, job=r.json()["id"], xml_bytes=len(job_xml(n, compact)))
            return out
        try:
            msg = r.json()["error"]["message"]
        except Exception:
            msg = r.text[:200]
        out["refused"].append(f"{form}: {r.status_code} {msg}")
        if r.status_code != 400:
            break
    return out


def run_size(root: Path, plugin: Path, n: int, slots: int, timeout: float) -> dict:
    """One fresh server, one job of n + 1 frames, timed from submit to done."""
    folder = root / f"size-{n}"
    folder.mkdir()
    server = Server(folder, f"scale{n}", slots, plugin, n + 1)
    res: dict = {"n": n, "total": n + 1, "ok": False}
    poller = None
    try:
        server.start()
        poller = Poller(server.url)
        poller.start()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=server.url) as http:
            sub = submit(http, n, deadline - time.monotonic())
            res.update(sub)
            if sub["form"] is None:
                res["why"] = "refused: " + "; ".join(sub["refused"])
                return res
            t_run = time.monotonic()
            cpu0 = server.cpu_seconds()
            poller.follow(sub["job"], n)
            last_note = t_run
            while not poller.finished.wait(1.0):
                now = time.monotonic()
                if now >= deadline:
                    break
                if now - last_note >= 60:
                    done = (poller.last or {}).get("frames", {}).get("done", 0)
                    print(f"  ... {n}: {done}/{n + 1} done after {now - t_run:.0f} s", file=sys.stderr, flush=True)
                    last_note = now
            wall = time.monotonic() - t_run
            poller.stop()
            last = poller.last or {}
            done = last.get("frames", {}).get("done", 0)
            cpu1 = server.cpu_seconds()
            res.update(wall=wall, done=done, state=last.get("state"), frames_at=poller.all_but_at,
                       cpu_user=cpu1[0] - cpu0[0], cpu_sys=cpu1[1] - cpu0[1])
            res["fps"] = (done if done else 0) / wall if wall > 0 else float("nan")
            if last.get("state") == "done":
                res["ok"] = True
                fan_in = http.get(f"/api/v1/jobs/{sub['job']}/frames/{n}", timeout=120).json()
                res["fan_in_deps"] = fan_in.get("depends_total", len(fan_in.get("depends", [])))
            elif poller.finished.is_set():
                res["why"] = f"job ended {last.get('state')}: {last.get('frames')}"
            else:
                res["why"] = f"gave up after {timeout:.0f} s: {done} of {n + 1} frames done"
        res["rss"] = server.peak_rss_mb()
        res["worker_rss"] = server.children_peak_rss_mb()
        res["own_lag"] = own_lag(server.url)
    except (httpx.HTTPError, RuntimeError) as exc:
        res["why"] = f"{type(exc).__name__}: {exc}"
    finally:
        if poller is not None:
            poller.stop()
            res["submit_lag"] = lag_figures(poller.lat["submit"])
            res["run_lag"] = lag_figures(poller.lat["run"])
            res["worst_at"] = poller.worst[0]
            res["poll_errors"] = poller.errors
        if "rss" not in res and server.proc is not None and server.proc.poll() is None:
            res["rss"] = server.peak_rss_mb()
        server.stop()
        res["log_problems"] = server.log_problems()
        res["log"] = server.log
    return res


# -- the idle server ----------------------------------------------------------------------------
def run_idle(root: Path, plugin: Path, n: int, timeout: float) -> dict:
    """A server with --slots 0: two jobs of n + 1 frames; status, frame list, cancel, delete."""
    folder = root / "idle"
    folder.mkdir()
    server = Server(folder, "idle", 0, plugin, n + 1)
    res: dict = {"n": n}
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=timeout) as http:
            first = submit(http, n, timeout)
            second = submit(http, n, timeout)
            if first["form"] is None or second["form"] is None:
                res["why"] = "refused: " + "; ".join(first["refused"] + second["refused"])
                return res
            res["submit_s"] = (first["seconds"], second["seconds"])
            job, other = first["job"], second["job"]
            lat, bad = [], 0
            for _ in range(STATUS_REQUESTS):
                t0 = time.perf_counter()
                r = http.get(f"/api/v1/jobs/{job}")
                lat.append((time.perf_counter() - t0) * 1000)
                bad += r.status_code != 200
            res.update(status_p50=pct(lat, 50), status_p99=pct(lat, 99), status_errors=bad)
            t0 = time.perf_counter()
            r = http.get(f"/api/v1/jobs/{job}/frames")
            res["frames_s"] = time.perf_counter() - t0
            res["frames_status"] = r.status_code
            res["frames_bytes"] = len(r.content)
            try:
                body = r.json()
                res["frames_items"] = len(body) if isinstance(body, list) else len(body.get("frames", []))
            except ValueError:
                res["frames_items"] = None
            t0 = time.perf_counter()
            r = http.post(f"/api/v1/jobs/{job}/cancel")
            res["cancel_s"], res["cancel_status"] = time.perf_counter() - t0, r.status_code
            res["cancel_state"] = r.json().get("state") if r.status_code == 200 else r.text[:200]
            t0 = time.perf_counter()
            r = http.delete(f"/api/v1/jobs/{other}")
            res["delete_s"], res["delete_status"] = time.perf_counter() - t0, r.status_code
            gone = http.get(f"/api/v1/jobs/{other}").status_code
            res["deleted_gone"] = gone == 404
        res["rss"] = server.peak_rss_mb()
    except (httpx.HTTPError, RuntimeError) as exc:
        res["why"] = f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()
        res["log_problems"] = server.log_problems()
        res["log"] = server.log
    return res


# -- report -------------------------------------------------------------------------------------
def describe(r: dict) -> list[str]:
    n = r["n"]
    lines = [f"{n:>7} frames + 1 fan-in:"]
    if r.get("form"):
        lines.append(f"  submit        {r['seconds']:8.2f} s   (form {r['form']}, distrenjob.xml {r['xml_bytes']} bytes)")
    for refusal in r.get("refused", []):
        lines.append(f"  refused       {refusal}")
    if "wall" in r:
        lines.append(f"  run           {r['wall']:8.2f} s   {r.get('done', 0)}/{r['total']} frames done, "
                     f"{r['fps']:.1f} frames/s" + (f", fan-in frame has {r['fan_in_deps']} dependencies"
                                                   if "fan_in_deps" in r else ""))
    if r.get("frames_at"):
        lines.append(f"  phases        the {n} frames done after {r['frames_at']:.2f} s ({n / r['frames_at']:.0f} frames/s), "
                     f"the fan-in frame (its {n} dependencies unpacked, then rendered) "
                     f"{r['wall'] - r['frames_at']:.2f} s more (seen by polling every {POLL * 1000:.0f} ms)")
    if "cpu_user" in r:
        lines.append(f"  server CPU    {r['cpu_user']:.1f} s user + {r['cpu_sys']:.1f} s system during the run "
                     f"({(r['cpu_user'] + r['cpu_sys']) / r['wall']:.2f} cores; its threads, not its child processes)")
    if "rss" in r:
        lines.append(f"  peak RSS      {r['rss']:8.1f} MB  (server process; intake worker {r.get('worker_rss', 0):.1f} MB)")
    for phase, label in (("run_lag", "status during run"), ("submit_lag", "/server during submit")):
        f = r.get(phase)
        if f and f["n"]:
            lines.append(f"  {label:<22} n={f['n']:<6} p50 {f['p50']:7.1f} ms  p99 {f['p99']:7.1f} ms  "
                         f"max {f['max']:8.1f} ms  lag (max - p50) {f['lag']:8.1f} ms")
    if r.get("run_lag", {}).get("n"):
        lines.append(f"  slowest status answer asked {r['worst_at']:.2f} s into the run")
    if r.get("own_lag") is not None:
        lines.append(f"  server's own loop_lag_ms max {r['own_lag']:.1f} ms (GET /server; not used for the targets)")
    if r.get("poll_errors"):
        errs = r["poll_errors"]
        lines.append(f"  poll errors   {len(errs)} ({', '.join(sorted(set(errs))[:3])})")
    if r.get("why"):
        lines.append(f"  NOT FINISHED: {r['why']}")
    if r.get("log_problems"):
        lines.append(f"  server log: {len(r['log_problems'])} error lines, e.g. {r['log_problems'][0][:160]}")
    return lines


def scheduler_only(n: int, seconds: float = 5.0) -> dict:
    """The scheduler alone, in this process, on a real SQLite file: claim + complete of the
    job's frames (the same job: n frames and one depending on all), for `seconds`. This is the
    ceiling that the server's per-frame path (work folders, output tarball, fsync) sits under."""
    from distren.job.spec import FrameSpec, JobSpec
    from distren.scheduler import Scheduler
    from distren.store import db
    from distren.store.blobs import Blob
    from distren.url import DistrenURL

    folder = Path(tempfile.mkdtemp(prefix="distren-bench-sched-"))
    try:
        s = Scheduler(db.connect(folder / "distren.sqlite3"), "bench")
        job = s.begin_job()
        frames = [FrameSpec(i) for i in range(n)] + [FrameSpec(n, [DistrenURL("bench", job, i) for i in range(n)])]
        t0 = time.perf_counter()
        s.activate_job(job, JobSpec("scale", "null", {}, frames), Blob("a" * 64, 1))
        create = time.perf_counter() - t0
        out, done = Blob("b" * 64, 1), 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            lease = s.claim("local:bench", ["null"], 60)
            if lease is None:
                break
            s.complete(job, lease.frame, lease.attempt, out, "bench", "")
            done += 1
        return {"create_s": create, "fps": done / (time.perf_counter() - t0)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="frames per job, comma-separated (plus one fan-in"
                                                                      " frame each)")
    parser.add_argument("--slots", type=int, default=len(os.sched_getaffinity(0)),
                        help="render slots of the rendering servers (default: one per usable core, as distren serve's)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to give one size (default 900)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (data, logs, plug-in)")
    args = parser.parse_args()
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error("--sizes: comma-separated integers")
    if not sizes or sizes[0] < 1:
        parser.error("--sizes: at least one size, each >= 1")
    signal.signal(signal.SIGTERM, sigterm)
    root = Path(tempfile.mkdtemp(prefix="distren-bench-scale-"))
    plugin = root / "plugin"
    write_plugin(plugin)
    results: list[dict] = []
    idle: dict | None = None
    try:
        print(f"scale: sizes {', '.join(map(str, sizes))} (+1 fan-in frame each), null backend, {args.slots} slots, "
              f"{os.cpu_count()} cores; one fresh server per size", flush=True)
        for n in sizes:
            r = run_size(root, plugin, n, args.slots, args.timeout)
            results.append(r)
            print("\n".join(describe(r)), flush=True)
            only = scheduler_only(n)
            r["sched_fps"] = only["fps"]
            print(f"  scheduler alone (in process, claim + complete): {only['fps']:.0f} frames/s; "
                  f"job created in {only['create_s']:.2f} s", flush=True)
        big = sizes[-1]
        print(f"idle server (--slots 0), two jobs of {big} + 1 frames:", flush=True)
        idle = run_idle(root, plugin, big, args.timeout)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    if idle.get("why"):
        print(f"  NOT MEASURED: {idle['why']}")
    if "status_p99" in idle:
        print(f"  submit        {idle['submit_s'][0]:8.2f} s, {idle['submit_s'][1]:.2f} s")
        print(f"  job status    p50 {idle['status_p50']:7.1f} ms  p99 {idle['status_p99']:7.1f} ms over "
              f"{STATUS_REQUESTS} requests ({idle['status_errors']} not 200)   "
              f"target p99 <= {TARGET_STATUS_P99_MS:g} ms: {mark(idle['status_p99'] <= TARGET_STATUS_P99_MS)}")
    if "frames_s" in idle:
        print(f"  frame list    {idle['frames_s']:8.3f} s   (HTTP {idle['frames_status']}, {idle['frames_items']} frames, "
              f"{idle['frames_bytes'] / 1e6:.1f} MB)   target <= {TARGET_FRAMES_PAGE_S:g} s: "
              f"{mark(idle['frames_status'] == 200 and idle['frames_s'] <= TARGET_FRAMES_PAGE_S)}")
    if "cancel_s" in idle:
        print(f"  cancel        {idle['cancel_s']:8.3f} s   (HTTP {idle['cancel_status']}, job {idle['cancel_state']})   "
              f"target <= {TARGET_CANCEL_S:g} s: {mark(idle['cancel_status'] == 200 and idle['cancel_s'] <= TARGET_CANCEL_S)}")
    if "delete_s" in idle:
        ok = idle["delete_status"] == 200 and idle["deleted_gone"] and idle["delete_s"] <= TARGET_DELETE_S
        print(f"  delete        {idle['delete_s']:8.3f} s   (HTTP {idle['delete_status']}, then "
              f"{'404' if idle['deleted_gone'] else 'still there'})   target <= {TARGET_DELETE_S:g} s: {mark(ok)}")
    if "rss" in idle:
        print(f"  peak RSS      {idle['rss']:8.1f} MB")
    if idle.get("log_problems"):
        print(f"  server log: {len(idle['log_problems'])} error lines, e.g. {idle['log_problems'][0][:160]}")

    top = results[-1]
    print(f"targets at {top['n']} frames:")
    if top.get("form"):
        print(f"  submit        {top['seconds']:8.2f} s      target <= {TARGET_SUBMIT_S:g} s: "
              f"{mark(top['seconds'] <= TARGET_SUBMIT_S)}")
    if "fps" in top:
        print(f"  throughput    {top['fps']:8.1f} frames/s target >= {TARGET_FPS:g}: "
              f"{mark(top['ok'] and top['fps'] >= TARGET_FPS)}" + ("" if top["ok"] else " (did not finish)"))
    if "sched_fps" in top:
        print(f"  scheduler alone {top['sched_fps']:6.0f} frames/s target >= {TARGET_FPS:g}: "
              f"{mark(top['sched_fps'] >= TARGET_FPS)}")
    if "rss" in top:
        print(f"  peak RSS      {top['rss']:8.1f} MB     target <= {TARGET_RSS_MB:g} MB: {mark(top['rss'] <= TARGET_RSS_MB)}")
    lag = top.get("run_lag", {}).get("lag", float("nan"))
    if lag == lag:
        print(f"  loop lag      {lag:8.1f} ms     target <= {TARGET_LAG_MS:g} ms: {mark(lag <= TARGET_LAG_MS)}")
    low = results[0]
    if len(results) > 1 and low.get("ok") and top.get("ok"):
        per_low, per_top = low["wall"] / low["total"], top["wall"] / top["total"]
        ratio = per_top / per_low
        print(f"  per-frame run time {per_top * 1e3:.3f} ms at {top['n']} vs {per_low * 1e3:.3f} ms at {low['n']}: "
              f"ratio {ratio:.2f}   target <= {TARGET_LINEAR:g} (linear): {mark(ratio <= TARGET_LINEAR)}")
        s_ratio = (top["seconds"] / top["total"]) / (low["seconds"] / low["total"])
        print(f"  per-frame submit time ratio {top['n']} vs {low['n']}: {s_ratio:.2f}   "
              f"target <= {TARGET_LINEAR:g}: {mark(s_ratio <= TARGET_LINEAR)}")
    elif len(results) > 1:
        unfinished = " and ".join(str(r["n"]) for r in (low, top) if not r.get("ok"))
        print(f"  linearity: not measured ({unfinished} did not finish)")
    if args.keep:
        print(f"kept {root} (server logs, data folders, the plug-in)")
    print(f"frames_per_s={top.get('fps', 0.0):.1f} submit_s={top.get('seconds', 0.0):.1f} "
          f"rss_mb={top.get('rss', 0.0):.1f} max_lag_ms={lag if lag == lag else 0.0:.1f}")
    return 0 if top.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the benchmarks (each benchmark is a script: `python benchmarks/x.py` puts
this folder on sys.path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of values; nan for none."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def stop_group(proc: subprocess.Popen | None, wait: float = 20) -> None:
    """SIGTERM to a server's whole process group (started with start_new_session: the group id
    is its pid), then SIGKILL to what is left."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def sigterm(signum, frame):
    """A SIGTERM handler: stop as Ctrl-C does (the benchmark's finally blocks stop its servers)."""
    raise KeyboardInterrupt


def wait_until_up(url: str, proc: subprocess.Popen, name: str, tail, timeout: float = 30) -> dict:
    """Wait until the server at `url` answers GET /api/v1/server (its answer returned); a
    RuntimeError naming `name`, with `tail()` (its log's end), when it exits or takes longer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {name} exited ({proc.returncode}):\n{tail()}")
        try:
            r = httpx.get(url + "/api/v1/server", timeout=1)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server {name} did not start:\n{tail()}")


def distren_cmd() -> list[str]:
    return [sys.executable, "-m", "distren.cli"]


def mark(ok: bool) -> str:
    return "pass" if ok else "MISS"


def write_plugin(folder: Path, module: str, source: str, backends: dict[str, str]) -> None:
    """A plug-in backend as an installed distribution would be found: `<module>.py` and its
    `.dist-info` with `distren.backends` entry points (backend name -> class name) in `folder`,
    which then goes on the servers' PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(source)
    dist = module.replace("_", "-")
    info = folder / f"{module}-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[distren.backends]\n" + "".join(f"{name} = {module}:{cls}\n" for name, cls in backends.items()))


def status_kb(pid: int, key: str) -> int:
    """A figure of /proc/PID/status in kB (VmHWM, VmRSS); 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """`distren serve` in its own process group on a free loopback port, a plug-in folder on its
    PYTHONPATH; `start` waits until it answers and offers `backend`. `extra`: more serve flags."""

    def __init__(self, root: Path, name: str, slots: int, plugin: Path, max_frames: int,
                 backend: str = "null", extra: list[str] = ()):
        self.name = name
        self.backend = backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / f"{name}.log"
        self.data = root / f"data-{name}"
        self.cmd = distren_cmd() + ["serve", "--name", name, "--listen", f"127.0.0.1:{self.port}",
                                    "--data", str(self.data), "--slots", str(slots),
                                    "--max-frames", str(max_frames), *extra]
        path = os.environ.get("PYTHONPATH")
        self.env = {**os.environ, "PYTHONPATH": str(plugin) + (os.pathsep + path if path else "")}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=self.env)
        info = wait_until_up(self.url, self.proc, self.name, self.tail, timeout)
        offered = info.get("backends", {}).get(self.backend)
        if not (offered and offered.get("available")):
            raise RuntimeError(f"server {self.name} does not offer the {self.backend} backend: {info}")

    def cpu_seconds(self) -> tuple[float, float]:
        """The server process's user and system CPU seconds so far (/proc/PID/stat)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        hz = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / hz, int(fields[12]) / hz

    def peak_rss_mb(self) -> float:
        return status_kb(self.proc.pid, "VmHWM") / 1024

    def children_peak_rss_mb(self) -> float:
        """The largest VmHWM among the server's child processes (the intake worker)."""
        best = 0
        try:
            for task in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{task}/children") as f:
                    for pid in f.read().split():
                        best = max(best, status_kb(int(pid), "VmHWM"))
        except OSError:
            pass
        return best / 1024

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        """Lines of the server's log that speak of errors (tracebacks, 5xx answers)."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [ln for ln in lines if "Traceback" in ln or "ERROR" in ln or '" 50' in ln]

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left."""
        stop_group(self.proc, 20)

"""Helpers shared by the benchmarks (each benchmark is a script: `python benchmarks/x.py` puts
this folder on sys.path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


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

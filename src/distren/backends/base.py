"""The backend interface.

A backend knows one renderer. `Backend.render` (the template method) owns the sandbox, the
timeout, the log and the collection of outputs; a backend supplies only `check` (are this
job's settings acceptable), `command` (the renderer's argv for one frame) and, when it wants,
`outputs` (which produced files are the frame's output).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import DistrenError
from .sandbox import DEPS_DIR, OUT_DIR, Sandbox

LOG_TAIL = 256 * 1024


@dataclass
class FrameTask:
    """Everything a backend needs to render one frame."""

    settings: dict[str, str]
    scene: Path          # the extracted job folder on the host (read-only in the sandbox)
    frame: int
    out: Path            # an empty folder on the host for the outputs
    deps: Path           # dependency outputs on the host
    timeout: float
    threads: int = 1
    limits: "RenderLimits | None" = None
    home: str = ""                    # the job's server
    job: int = 0
    depends: tuple[str, ...] = ()     # dependency frame URLs, in order

    def dep_dir(self, url: str) -> Path:
        """Where a dependency's output files are on the host (see sandbox_path)."""
        from ..url import parse_url

        u = parse_url(url)
        return self.deps / u.server / str(u.job) / str(u.frame)

    def sandbox_path(self, host: Path) -> str:
        """The path inside the sandbox of a host path under `out` or `deps`."""
        for root, inside in ((self.out, OUT_DIR), (self.deps, DEPS_DIR)):
            try:
                rel = host.relative_to(root)
            except ValueError:
                continue
            return inside if str(rel) == "." else f"{inside}/{rel.as_posix()}"
        raise ValueError(f"{host} is not visible in the sandbox")


@dataclass
class RenderResult:
    ok: bool
    log: str
    error: str | None
    outputs: list[Path]


class Backend:
    """Base class of every backend. Subclasses set `name` and `executable`."""

    name: str = ""
    executable: str = ""
    ro_paths: tuple[str, ...] = ()
    env: dict[str, str] = {}

    def version(self) -> str | None:
        """The renderer's version, or None when it is not installed."""
        return None

    def available(self) -> bool:
        return self.version() is not None

    def check(self, settings: dict[str, str], scene: Path, frame_ids: list[int]) -> list[str]:
        """Raise BadSettings when the job cannot be rendered as given; return warnings."""
        raise NotImplementedError

    def command(self, task: FrameTask) -> list[str]:
        """The argv (inside the sandbox) that renders `task.frame` into OUT_DIR."""
        raise NotImplementedError

    def prepare(self, task: FrameTask) -> None:
        """Host-side work before the render (e.g. checking that dependency files arrived).
        Raise DistrenError to fail the frame with that message. Default: nothing."""

    def outputs(self, out: Path) -> list[Path]:
        """The frame's output files: by default every regular file the renderer wrote."""
        return sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink())

    def verify(self, task: FrameTask, outputs: list[Path]) -> str | None:
        """A reason to refuse outputs that the renderer made without complaint, or None."""
        return None

    def _argv(self, task: FrameTask) -> list[str]:
        """prepare() and command(): file checks and scene parsing, so off the event loop."""
        self.prepare(task)
        scratch = task.out.parent / "tmp"
        scratch.mkdir(exist_ok=True)
        return Sandbox(task.scene, task.out, task.deps, self.ro_paths, dict(self.env), scratch).argv(self.command(task))

    async def render(self, task: FrameTask) -> RenderResult:
        """Render one frame in the sandbox, with the timeout; never raises for renderer faults."""
        try:
            argv = await asyncio.to_thread(self._argv, task)
        except DistrenError as exc:
            return RenderResult(False, "", exc.message, [])
        except Exception as exc:  # a settings problem found late is the frame's failure
            return RenderResult(False, "", f"cannot start the renderer: {exc}", [])
        rc, log, timed_out = await run_process(argv, task.timeout, task.limits)
        if timed_out:
            return RenderResult(False, log, f"timed out after {task.timeout:g} s", [])
        if rc != 0:
            return RenderResult(False, log, f"{self.name} failed ({exit_reason(rc)})", [])
        outputs = self.outputs(task.out)
        if not outputs:
            return RenderResult(False, log, f"{self.name} wrote no output file", [])
        total = sum(p.stat().st_size for p in outputs)
        if task.limits is not None and task.limits.output_bytes is not None and total > task.limits.output_bytes:
            return RenderResult(False, log, f"the outputs total {total} bytes; the limit is {task.limits.output_bytes}", [])
        problem = await asyncio.to_thread(self.verify, task, outputs)
        if problem:
            return RenderResult(False, log, problem, [])
        return RenderResult(True, log, None, outputs)


@dataclass(frozen=True)
class RenderLimits:
    """Resource limits of one render (setrlimit on the sandbox, inherited by the renderer).
    None: no limit. `processes` (RLIMIT_NPROC) is not enforced for a server running as root."""

    memory: int | None = None        # bytes of address space (RLIMIT_AS)
    file_size: int | None = None     # bytes, the largest file it may write (RLIMIT_FSIZE)
    cpu_seconds: int | None = None   # CPU time (RLIMIT_CPU)
    processes: int | None = None     # RLIMIT_NPROC
    output_bytes: int | None = None  # all output files of the frame together (checked after)
    # Renders run at a lower CPU priority, so that the server itself (API, scheduling,
    # transfers) stays responsive while every core renders.
    nice: int = 10

    def apply(self) -> None:
        """Runs in the child between fork and exec."""
        import resource

        if self.nice:
            os.nice(self.nice)

        for limit, value in ((resource.RLIMIT_AS, self.memory), (resource.RLIMIT_FSIZE, self.file_size),
                             (resource.RLIMIT_CPU, self.cpu_seconds), (resource.RLIMIT_NPROC, self.processes)):
            if value is not None:
                hard = resource.getrlimit(limit)[1]
                if hard != resource.RLIM_INFINITY:
                    value = min(value, hard)  # never above what the server itself may use
                resource.setrlimit(limit, (value, value))


async def run_process(argv: list[str], timeout: float, limits: RenderLimits | None = None) -> tuple[int, str, bool]:
    """Run argv in its own process group, under `limits`; on timeout or cancellation kill the
    whole group. Returns (exit code, the tail of stdout+stderr, timed out)."""
    # Started under a shield: a cancellation (job cancelled) that lands while the process is
    # being created must still find, and kill, the process.
    spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=limits.apply if limits else None,
    ))
    try:
        proc = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        proc = await spawn
        kill_group(proc.pid)
        await proc.wait()
        raise
    chunks: list[bytes] = []
    size = 0

    async def read_all() -> None:
        nonlocal size
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            chunks.append(chunk)
            size += len(chunk)
            while size > LOG_TAIL and len(chunks) > 1:
                size -= len(chunks.pop(0))

    timed_out = False
    try:
        await asyncio.wait_for(asyncio.gather(read_all(), proc.wait()), timeout)
    except asyncio.TimeoutError:
        timed_out = True
    finally:
        if proc.returncode is None:
            kill_group(proc.pid)
            await proc.wait()
    log = b"".join(chunks)[-LOG_TAIL:].decode("utf-8", "replace")
    return proc.returncode, log, timed_out


@functools.lru_cache(maxsize=None)
def probe_version(executable: str, flag: str, pattern: str) -> str | None:
    """A renderer's version: the first group of `pattern` in what `executable flag` prints
    (stdout and stderr), "unknown" when it does not match, None when it is not installed."""
    exe = shutil.which(executable)
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, flag], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, proc.stdout + proc.stderr, re.MULTILINE)
    return match.group(1) if match else "unknown"


def exit_reason(rc: int) -> str:
    """Words for an exit status; bwrap reports a signal that killed the renderer as 128+N."""
    def name(n: int) -> str:
        try:
            return f"signal {n} ({signal.Signals(n).name})"
        except ValueError:
            return f"signal {n}"

    if rc < 0:
        return f"killed by {name(-rc)}"
    if 128 < rc < 128 + 65:
        return f"exit code {rc}: killed by {name(rc - 128)}"
    return f"exit code {rc}"


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def find_backends() -> dict[str, Backend]:
    """Every backend registered in the entry-point group `distren.backends` (the built-ins
    register the same way), whether or not its renderer is installed."""
    from importlib.metadata import entry_points

    found: dict[str, Backend] = {}
    for ep in entry_points(group="distren.backends"):
        cls = ep.load()
        backend = cls()
        found[backend.name or ep.name] = backend
    return found


def names(backends: Iterable[Backend]) -> list[str]:
    return [b.name for b in backends]

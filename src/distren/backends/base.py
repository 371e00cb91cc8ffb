"""The backend interface.

A backend knows one renderer. `Backend.render` (the template method) owns the sandbox, the
timeout, the log and the collection of outputs; a backend supplies only `check` (are this
job's settings acceptable), `command` (the renderer's argv for one frame) and, when it wants,
`outputs` (which produced files are the frame's output).

Chunks: a backend whose renderer can render a range of frames in one process says so with
`chunkable`, makes `command` render `task.chunk` (consecutive frame ids) when it holds more than
one, and tells with `split_outputs` which of the outputs are each frame's; `render_chunk` (a
template method too) gives each frame its own verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import DistrenError, PackError
from .sandbox import DEPS_DIR, OUT_DIR, Sandbox

if TYPE_CHECKING:
    from ..pack import PackRequest, PackResult

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
    frames: tuple[int, ...] = ()      # a chunk: consecutive frame ids, `frame` first; () = (frame,)
    # how the server follows a chunk's renderer and stops it early (its tail given to another
    # renderer: docs/architecture.md, "Splitting a chunk")
    control: "ChunkControl | None" = field(default=None, compare=False, repr=False)

    @property
    def chunk(self) -> tuple[int, ...]:
        return self.frames or (self.frame,)

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


RECENT_OUTPUT = 16 * 1024


@dataclass
class ChunkControl:
    """A chunk's renderer as the server follows it: its latest output (`recent`, the last
    RECENT_OUTPUT bytes, for `Backend.frame_begun`), and `stop`, which kills it when set. When
    the server stops it knowing that every frame up to `whole_through` was written whole (the
    renderer had begun a later frame), those frames are judged on their outputs and the frames
    after them were given back (not failures).

    `recent` holds what a terminal would show: of the updates a renderer writes over one line
    with carriage returns (POV-Ray's "Rendered N of M pixels", some 50 KB a frame at 1280x960),
    only the last. Kept raw, they pushed the line that says which frame began out of the window
    long before the frame ended."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    whole_through: int | None = None
    recent: bytearray = field(default_factory=bytearray)

    def heard(self, data: bytes) -> None:
        if b"\r" in data:
            # the line being written (from the last newline before `data`) and those `data`
            # adds, each reduced to its last non-empty carriage-return segment
            start = self.recent.rfind(b"\n") + 1
            lines = (bytes(self.recent[start:]) + data).split(b"\n")
            del self.recent[start:]
            self.recent += b"\n".join(_shown(line) for line in lines)
        else:
            self.recent += data
        if len(self.recent) > RECENT_OUTPUT:
            del self.recent[:-RECENT_OUTPUT]


def _shown(line: bytes) -> bytes:
    """Of a line written over with carriage returns, the last non-empty part."""
    if b"\r" not in line:
        return line
    return next((part for part in reversed(line.split(b"\r")) if part), b"")


@dataclass
class RenderResult:
    ok: bool
    log: str
    error: str | None
    outputs: list[Path]
    counts: bool = True   # a failure that counts against the frame (False: it never really ran)
    alone: bool = False   # render this job's frames one by one from now on


def positive_int(text: str) -> int:
    """A command-line value: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class PackOption:
    """An option of `distren pack` and `distren render` that belongs to one backend (such as
    POV-Ray's `--antialias`). `type` turns the text into the value (raising
    argparse.ArgumentTypeError or ValueError for a bad one); None makes a switch. The value
    reaches `Backend.pack` as `request.options[dest]`; given with another backend's scene, the
    option is refused."""

    flag: str
    help: str
    type: Callable[[str], object] | None = str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


class Backend:
    """Base class of every backend. Subclasses set `name` and `executable`.

    A backend owns its renderer: settings checks (`check`), command lines for one frame
    (`command`) and for a chunk (`chunkable`, `split_outputs`, `render_chunk`), output rules
    (`outputs`, `verify`), and, on the client side, packing: the scene files it packs
    (`source_suffixes`), its own pack options (`pack_options`) and `pack`."""

    name: str = ""
    executable: str = ""
    ro_paths: tuple[str, ...] = ()
    env: dict[str, str] = {}
    # the suffixes (lower case, with the dot) of the scene files `distren pack` gives this backend
    source_suffixes: tuple[str, ...] = ()
    pack_options: tuple[PackOption, ...] = ()

    def pack(self, source: Path, out: Path | None, request: "PackRequest") -> "PackResult":
        """Write a job package for `source` (one of `source_suffixes`) to `out` (None: <stem>
        .distren.tar.gz in the current folder) and return it; `distren.pack.write_job` writes
        it. Raise PackError naming what is missing or would be refused."""
        raise PackError(f"the {self.name} backend does not pack scenes")

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
        """A reason to refuse outputs that the renderer made without complaint, or None. Runs in
        a thread; a program that reads the outputs runs through run_sandboxed, never on the host."""
        return None

    def chunkable(self, settings: dict[str, str]) -> bool:
        """Whether frames of a job with these settings may render several in one process."""
        return False

    def frame_begun(self, task: FrameTask, output: str) -> int | None:
        """The frame of the chunk `task.chunk` that the renderer has begun, read from the end
        of what it has printed so far (`output`), such that every frame before it is written
        whole; None when that cannot be told. It lets the server stop a split chunk's renderer
        as soon as it has finished the frames it keeps; without it the server waits for an
        output of a frame it gave back (docs/architecture.md, "Splitting a chunk")."""
        return None

    def split_outputs(self, task: FrameTask, outputs: list[Path]) -> dict[int, list[Path]]:
        """Which of a chunk's outputs are each frame's (only called when `chunkable`; runs in a
        thread). A file that belongs to no frame, or to several, makes the whole chunk's outputs
        untrustworthy: its frames then render one by one."""
        raise NotImplementedError

    def _sandbox(self, task: FrameTask) -> Sandbox:
        """The frame's sandbox (its /tmp: the scratch folder beside the output folder)."""
        scratch = task.out.parent / "tmp"
        scratch.mkdir(exist_ok=True)
        return Sandbox(task.scene, task.out, task.deps, self.ro_paths, dict(self.env), scratch)

    def _argv(self, task: FrameTask) -> list[str]:
        """prepare() and command(): file checks and scene parsing, so off the event loop."""
        self.prepare(task)
        return self._sandbox(task).argv(self.command(task))

    def run_sandboxed(self, task: FrameTask, command: list[str], timeout: float) -> tuple[int, str, bool]:
        """Run a helper program as the renderer runs: in the frame's sandbox, under the
        render's resource limits, in a process group killed at `timeout` seconds. For checks
        of the outputs in verify() (which runs in a thread: this blocks). Paths are the
        sandbox's (`task.sandbox_path`). Returns (exit code, output, timed out)."""
        return asyncio.run(run_process(self._sandbox(task).argv(command), timeout, task.limits))

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
            if stopped_from_outside(rc):
                return RenderResult(False, log, f"{self.name} was stopped from outside ({exit_reason(rc)});"
                                    " it renders again", [], counts=False)
            return RenderResult(False, log, f"{self.name} failed ({exit_reason(rc)})", [])
        outputs = self.outputs(task.out)
        if not outputs:
            return RenderResult(False, log, f"{self.name} wrote no output file", [])
        return await asyncio.to_thread(self._judge_now, task, log, outputs)


    async def render_chunk(self, task: FrameTask) -> dict[int, RenderResult]:
        """Render the frames `task.chunk` in one renderer process (timeout: `task.timeout` for
        the whole chunk), then judge each frame on its own outputs. When the process ended
        well, a frame with outputs is done and one without fails. When it failed or timed out,
        the frames before the last one that has outputs are done; that one may be half-written
        and renders again (not a failure of it); the next frame is where the renderer stopped:
        it fails with the process's error (a counted failure); the frames after it never ran
        (their failure does not count). Outputs that cannot be told apart by frame fail every
        frame uncounted, and the job's frames render alone from then on. Never raises for
        renderer faults."""
        frames = task.chunk
        try:
            argv = await asyncio.to_thread(self._argv, task)
        except DistrenError as exc:
            return self._all_failed(frames, "", exc.message)
        except Exception as exc:
            return self._all_failed(frames, "", f"cannot start the renderer: {exc}")
        rc, log, timed_out = await run_process(argv, task.timeout, task.limits, task.control)
        # finding and checking the outputs is file-system work and scene parsing: in a thread
        return await asyncio.to_thread(self._chunk_verdicts, task, log, rc, timed_out)

    def _chunk_verdicts(self, task: FrameTask, log: str, rc: int, timed_out: bool) -> dict[int, RenderResult]:
        frames = task.chunk
        control = task.control
        kept_through = control.whole_through if control is not None and control.stop.is_set() else None
        outputs = self.outputs(task.out)
        try:
            split = self.split_outputs(task, outputs)
            owned = [p for f in frames for p in split.get(f, [])]
            why = None if len(owned) == len(set(owned)) and set(owned) == set(outputs) else \
                f"{len(set(outputs) - set(owned))} file(s) belong to no frame, or some to several"
        except Exception as exc:
            split, why = {}, str(exc) or type(exc).__name__
        if why is not None:
            return {f: RenderResult(False, log, f"the chunk's outputs cannot be told apart by frame ({why}); "
                                    "its frames render one by one", [], counts=False, alone=True) for f in frames}
        if kept_through is not None:
            # stopped by the server once the renderer had begun a frame it gave back: the frames
            # it kept are whole, the others are another renderer's now
            # (a kept frame without output renders again: the stop was the server's doing)
            return {f: (self._judge_now(replace(task, frame=f, frames=()), log, split[f]) if split.get(f) else
                        RenderResult(False, log, f"{self.name} wrote no output for frame {f} before it was "
                                     "stopped (its chunk was split); it renders again", [], counts=False))
                    if f <= kept_through else
                    RenderResult(False, log, "given back to another renderer (its chunk was split)", [], counts=False)
                    for f in frames}
        error = None
        trusted = len(frames)
        if timed_out or rc != 0:
            error = f"timed out after {task.timeout:g} s" if timed_out else f"{self.name} failed ({exit_reason(rc)})"
            with_output = [i for i, f in enumerate(frames) if split.get(f)]
            trusted = with_output[-1] if with_output else 0
        results: dict[int, RenderResult] = {}
        stopped_at = None
        for i, f in enumerate(frames):
            files = split.get(f, [])
            if error is None or i < trusted:
                results[f] = self._judge_now(replace(task, frame=f, frames=()), log, files) if files else \
                    RenderResult(False, log, f"{self.name} wrote no output for frame {f}", [])
            elif i == trusted and files and i < len(frames) - 1:
                results[f] = RenderResult(False, log, f"{error} after this frame, whose output may be incomplete;"
                                          " it renders again", [], counts=False)
            elif stopped_at is None:
                stopped_at = f
                results[f] = RenderResult(False, log, f"{error} (in a chunk of frames {frames[0]}-{frames[-1]})", [],
                                          counts=timed_out or not stopped_from_outside(rc))
            else:
                results[f] = RenderResult(False, log, f"not rendered: its chunk stopped at frame {stopped_at}",
                                          [], counts=False)
        return results

    @staticmethod
    def _all_failed(frames: tuple[int, ...], log: str, error: str) -> dict[int, RenderResult]:
        """A chunk that never started: the first frame counts the failure, the others do not
        (they render again, alone or in another chunk, and get their own verdict)."""
        return {f: RenderResult(False, log, error, [], counts=i == 0) for i, f in enumerate(frames)}

    def _judge_now(self, task: FrameTask, log: str, outputs: list[Path]) -> RenderResult:
        """One frame's outputs: the output limit, then the backend's own check (in a thread)."""
        total = sum(p.stat().st_size for p in outputs)
        if task.limits is not None and task.limits.output_bytes is not None and total > task.limits.output_bytes:
            return RenderResult(False, log, f"the outputs total {total} bytes; the limit is {task.limits.output_bytes}", [])
        problem = self.verify(task, outputs)
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


async def run_process(argv: list[str], timeout: float, limits: RenderLimits | None = None,
                      control: ChunkControl | None = None) -> tuple[int, str, bool]:
    """Run argv in its own process group, under `limits`; on timeout, cancellation or
    `control.stop` kill the whole group (`control` also hears the output as it comes).
    Returns (exit code, the tail of stdout+stderr, timed out)."""
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
            if control is not None:
                control.heard(chunk)
            while size > LOG_TAIL and len(chunks) > 1:
                size -= len(chunks.pop(0))

    timed_out = False
    running = asyncio.ensure_future(asyncio.gather(read_all(), proc.wait()))
    stopping = asyncio.ensure_future(control.stop.wait()) if control is not None else None
    try:
        done, _ = await asyncio.wait({running} if stopping is None else {running, stopping}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        timed_out = not done
    finally:
        if stopping is not None:
            stopping.cancel()
        if proc.returncode is None:
            kill_group(proc.pid)
            await proc.wait()
        if not running.done():
            running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    log = b"".join(chunks)[-LOG_TAIL:].decode("utf-8", "replace")
    return proc.returncode, log, timed_out


# A path inside a job folder: at most this long; the `_distren` folder is distren's own
# (dependencies' outputs appear there at render time).
MAX_PATH_CHARS = 1024
RESERVED_FOLDER = "_distren"


def relative_file(text: str, root: Path) -> str:
    """Check that `text` names a regular file inside the job folder `root`, and return it as a
    canonical relative POSIX path. Raises ValueError(reason) for an empty, absolute or too long
    path, a '..' component, a backslash, a double quote or control character, the reserved
    `_distren` folder, a missing file, a non-file, or a symbolic link leading out of root."""
    if not text:
        raise ValueError("the path is empty")
    if len(text) > MAX_PATH_CHARS:
        raise ValueError(f"the path is longer than {MAX_PATH_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("the path contains a control character")
    if "\\" in text:
        raise ValueError("the path contains a backslash; use /")
    if '"' in text:
        raise ValueError("the path contains a double quote")
    if text.startswith("/") or re.match(r"[A-Za-z]:", text):
        raise ValueError("absolute paths are not allowed; give a path inside the job folder")
    raw_parts = text.split("/")
    if ".." in raw_parts:
        raise ValueError("'..' is not allowed in paths")
    parts = [p for p in raw_parts if p not in ("", ".")]
    if not parts:
        raise ValueError("the path names no file")
    if parts[0] == RESERVED_FOLDER:
        raise ValueError(f"the {RESERVED_FOLDER} folder is reserved for distren")
    rel = "/".join(parts)
    full = Path(root, *parts)
    try:
        resolved = full.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ValueError("no such file in the job folder") from None
    if not resolved.is_relative_to(Path(root).resolve()):
        raise ValueError("the path leads out of the job folder")
    if not resolved.is_file():
        raise ValueError("not a regular file")
    return rel


_probes: dict[tuple[str, str, str], concurrent.futures.Future] = {}
_probes_lock = threading.Lock()


def probe_version(executable: str, flag: str, pattern: str) -> str | None:
    """A renderer's version: the first group of `pattern` in what `executable flag` prints
    (stdout and stderr), "unknown" when it does not match, None when it is not installed.
    Asked once per process: a second caller, in any thread, waits for the first one's answer
    (`start_probes` asks every renderer at once, in threads, while the caller goes on)."""
    key = (executable, flag, pattern)
    with _probes_lock:
        answer = _probes.get(key)
        mine = answer is None
        if mine:
            answer = _probes[key] = concurrent.futures.Future()
    if mine:
        try:
            answer.set_result(_probe(executable, flag, pattern))
        except BaseException as exc:
            answer.set_exception(exc)
    return answer.result()


def _probe(executable: str, flag: str, pattern: str) -> str | None:
    exe = shutil.which(executable)
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, flag], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, proc.stdout + proc.stderr, re.MULTILINE)
    return match.group(1) if match else "unknown"


def start_probes(backends: Iterable["Backend"]) -> None:
    """Ask every backend for its renderer's version now, each in a thread of its own, and
    return at once. Starting a renderer just to print its version costs 0.3-0.9 s here
    (Blender the most); asked one after the other at a server's start they were 1.6 s of
    `distren render`'s start-up, asked together they overlap each other and the imports."""
    for backend in backends:
        threading.Thread(target=_quietly, args=(backend.version,), name=f"probe-{backend.name}",
                         daemon=True).start()


def _quietly(call) -> None:
    with contextlib.suppress(Exception):   # a backend's own error shows when it is asked again
        call()


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


def stopped_from_outside(rc: int) -> bool:
    """Whether a renderer ended by SIGTERM: distren kills renders with SIGKILL only, so a
    SIGTERM came from outside, to the whole process tree (a Slurm job cancelled or out of
    time, a service manager stopping the server), and is no fault of the frame."""
    return rc in (-signal.SIGTERM, 128 + signal.SIGTERM)


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

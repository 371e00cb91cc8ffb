"""How many frames one renderer process renders (a chunk), chosen by the renderer server.

A renderer that starts slowly (POV-Ray idles about 0.7 s before it renders, Blender about
0.8 s) spends more on starting than on small frames; a chunk of consecutive frames pays that
once (docs/architecture.md, "Chunks"). The size is chosen per claim from what this server has
measured of the job, so nobody has to guess it:

- a job that sets `<chunk>` gets that (capped by MAX_CHUNK), whatever was measured;
- a backend that cannot render ranges (ffmpeg), or a job whose outputs could not be told apart
  by frame, renders one frame per process;
- before anything of the job was measured: at most FIRST_CHUNK frames, so that the first
  frames show early and the time per frame gets measured;
- then: TARGET_SECONDS of frame work per process (one start-up more), from the measured
  seconds per frame;
- never more than this server's fair share: the job's ready frames plus what is left of the
  chunks of the job it is rendering now (the frames their renderers have not begun, and half
  the one each is on: `in_flight`), divided by the renders allowed now (rounded to the
  nearest; a chunk is at least one frame), and, in a farm, by the
  servers rendering the job (its home counts those that took or renewed a lease of it in the
  last RENDERERS_WINDOW seconds, and tells a peer with each lease; the others are taken to be
  alike), so that every render gets work, the chunks end at about the same time, and the last
  frames do not wait behind one long chunk on one server while the others have none.

What a chunk measures (`FrameTimes.add`): a renderer writes each frame's output when that
frame is done, so the outputs' modification times split a chunk's wall time into the
renderer's start-up (before the first frame) and the time per frame (between frames).
Measured as one average instead, a renderer whose start-up is long (Blender: 2.5 s of CPU
here, against 0.15 s a small frame) looked as slow per frame as its start-up made its first
small chunks, and the chunks grew only slowly, each paying the start-up again.
"""

from __future__ import annotations

import math
from collections import OrderedDict

TARGET_SECONDS = 10.0
FIRST_CHUNK = 2
MAX_CHUNK = 50
KEEP_JOBS = 1000   # jobs whose measurements are kept (least recently used are dropped)
RENDERERS_WINDOW = 30.0   # a server that took or renewed a lease this recently renders the job


def chunk_size(*, requested: int | None, chunkable: bool, seconds_per_frame: float | None,
               ready: int, slots: int, in_flight: float = 0, servers: int = 1) -> int:
    """The frames to lease together (>= 1). `ready`: the job's ready frames (this one
    included); `in_flight`: the frames of the job this server renders now that are still to
    do (a frame being rendered counts half); `slots`: the renders allowed now; `servers`: the
    servers rendering the job (this one included)."""
    if not chunkable:
        return 1
    if requested:
        return max(1, min(requested, MAX_CHUNK))
    servers = max(1, servers)
    fair = max(1, math.floor((ready + in_flight * servers) / (max(1, slots) * servers) + 0.5))
    fair = min(fair, max(1, ready))
    if seconds_per_frame is None:
        return min(FIRST_CHUNK, fair)
    wanted = max(1, round(TARGET_SECONDS / max(seconds_per_frame, 1e-3)))
    return max(1, min(wanted, fair, MAX_CHUNK))


def split_times(started: float, seconds: float, finished: list[float | None],
                startup: float | None) -> tuple[float, float | None]:
    """(seconds per frame, renderer start-up or None) of one render of len(finished) frames
    that began at `started` (wall clock) and took `seconds`; `finished[i]` is when frame i's
    output was last written (None: not known). From two frames on, the frames' own times give
    the time per frame, and the first one's the start-up; otherwise the start-up measured
    before (`startup`) is taken off the wall time (pure logic)."""
    n = len(finished)
    known = [t for t in finished if t is not None]
    if n >= 2 and len(known) == n and all(b >= a for a, b in zip(known, known[1:])) and known[-1] > known[0]:
        per = (known[-1] - known[0]) / (n - 1)
        return per, max(0.0, min(seconds, known[0] - started) - per)
    rest = seconds - (startup or 0.0)
    return max(rest if rest > 0 else seconds, 1e-3) / max(1, n), None


class FrameTimes:
    """Measured seconds per frame of the jobs this server rendered (an exponential moving
    average per job, bounded), and each backend's renderer start-up (the same, per backend)."""

    def __init__(self, weight: float = 0.3):
        self.weight = weight
        self._mean: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._startup: dict[str, float] = {}
        self.alone: set[tuple[str, int]] = set()   # jobs whose frames render one by one

    def get(self, key: tuple[str, int]) -> float | None:
        return self._mean.get(key)

    def startup(self, backend: str) -> float | None:
        return self._startup.get(backend)

    def add(self, key: tuple[str, int], seconds: float, frames: int, *, backend: str = "",
            started: float | None = None, finished: list[float | None] | None = None) -> None:
        """One render of `frames` frames that took `seconds`; with `started` and `finished`
        (see split_times), its start-up is told apart from its frames."""
        if started is None or finished is None or len(finished) != frames:
            finished, started = [None] * max(1, frames), 0.0
        per, startup = split_times(started, seconds, finished, self._startup.get(backend))
        old = self._mean.pop(key, None)
        self._mean[key] = per if old is None else old + self.weight * (per - old)
        while len(self._mean) > KEEP_JOBS:
            self._mean.popitem(last=False)
        if startup is not None and backend:
            before = self._startup.get(backend)
            self._startup[backend] = startup if before is None else before + self.weight * (startup - before)

    def render_alone(self, key: tuple[str, int]) -> None:
        self.alone.add(key)
        if len(self.alone) > KEEP_JOBS:
            self.alone.pop()


class JobRenderers:
    """Who renders each job, as its home sees it: the lease owners (local slots, peers,
    workers) that took or renewed a lease of the job in the last `window` seconds. A hint for
    chunk sizes; kept in memory, at most `keep_jobs` jobs, each pruned as it is counted."""

    def __init__(self, window: float = RENDERERS_WINDOW, keep_jobs: int = KEEP_JOBS):
        self.window, self.keep_jobs = window, keep_jobs
        self._seen: OrderedDict[int, dict[str, float]] = OrderedDict()

    def seen(self, job: int, owner: str, now: float) -> None:
        owners = self._seen.pop(job, None) or {}
        owners[owner] = now
        self._seen[job] = owners
        while len(self._seen) > self.keep_jobs:
            self._seen.popitem(last=False)

    def count(self, job: int, now: float) -> int:
        """The owners seen within the window (at least 1: the one asking)."""
        owners = self._seen.get(job)
        if not owners:
            return 1
        for owner in [o for o, t in owners.items() if t < now - self.window]:
            del owners[owner]
        return max(1, len(owners))


def tail_to_release(held: list[int], started: set[int], seconds_per_frame: float | None = None,
                    startup: float | None = None) -> list[int]:
    """Which frames of a running chunk to give back for another renderer (pure logic; see
    docs/architecture.md, "Splitting a chunk"). `held`: the chunk's frames still held, in the
    order the renderer renders them; `started`: those it has written output for. The frame
    after the last started one is taken to be rendering now, half done; the frames after it
    are shared so that both renderers end at about the same time: this one finishes the frame
    it is on and keeps the first of the rest, the other pays a renderer's start-up and takes
    the last ones. With the time per frame and the start-up measured (`seconds_per_frame`,
    `startup`) the start-up is weighed in; without, the last half (rounded down) goes."""
    last = max((i for i, f in enumerate(held) if f in started), default=-1)
    unstarted = held[last + 2:]
    if seconds_per_frame is not None and startup is not None and seconds_per_frame > 0:
        count = round((len(unstarted) + 0.5 - startup / seconds_per_frame) / 2)
    else:
        count = len(unstarted) // 2
    count = max(0, min(len(unstarted), count))
    return unstarted[len(unstarted) - count:] if count else []

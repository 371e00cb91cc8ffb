"""Server-sent events: what changes on a server, live, for the dashboard and any client
(`GET /api/v1/events`, docs/api.md "Events").

Event types:
- `frame`: a frame of one of this server's jobs changed state (`job`, `frame`, `state`,
  `attempts`, `rendered_by`), as it happens: leased, done, failed, ready again. Frames that a
  cancel, retry or delete change in bulk send no `frame` events: their job's next `job` event
  carries `"bulk": true`, and a client refetches what it shows.
- `job`: a job's summary changed (its `GET /jobs/{id}` body without `waiting_for`), at most
  every JOB_PERIOD seconds per job: its frame counts, state, priority.
- `job_removed`: a job was deleted (`id`, `url`).
- `reset`: the client asked to resume from an id older than the events kept: refetch
  everything, then go on.

Each event has an id (increasing); a client that reconnects with `Last-Event-ID` gets every
event after that id that is still kept (the last KEEP), else `reset`. Publishing is cheap and
never blocks: the scheduler calls `frame` from its transactions on the event loop, and a
coalescing task turns job changes into `job` events.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from typing import AsyncIterator, Callable

KEEP = 10_000
JOB_PERIOD = 0.25
KEEPALIVE = 15.0
EVENT_TYPES = ("frame", "job", "job_removed", "reset")


class EventBus:
    """`signatures()` gives every job's row as a tuple (cheap; a change in it is a change of the
    job), `job_summary(id)` a job's body for its event."""

    def __init__(self, signatures: Callable[[], dict[int, tuple]], job_summary: Callable[[int], dict]):
        self.signatures = signatures
        self.job_summary = job_summary
        self._events: deque[tuple[int, str, int | None, str]] = deque(maxlen=KEEP)  # id, type, job, data
        self._next = 1
        self._lock = threading.Lock()
        self._frame_events: dict[int, int] = {}   # per job, since the last look at the jobs
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self.closed = False

    # -- publishing ------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._watch_jobs(), name="events")

    def close(self) -> None:
        """End every stream (the server is stopping: open streams would hold it up)."""
        self.closed = True
        if self._changed is not None:
            self._changed.set()

    async def stop(self) -> None:
        self.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def frame(self, job: int, frame: int, state: str, attempts: int, rendered_by: str | None = None) -> None:
        self._publish("frame", job, {"job": job, "frame": frame, "state": state, "attempts": attempts,
                                     "rendered_by": rendered_by})
        self._frame_events[job] = self._frame_events.get(job, 0) + 1

    def _publish(self, kind: str, job: int | None, data: dict) -> int:
        text = json.dumps(data, separators=(",", ":"))
        with self._lock:
            event_id = self._next
            self._next += 1
            self._events.append((event_id, kind, job, text))
        if self._loop is not None and self._changed is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:
                self._changed.set()
            else:
                self._loop.call_soon_threadsafe(self._changed.set)
        return event_id

    async def _watch_jobs(self) -> None:
        """Every JOB_PERIOD: the jobs whose row changed get a `job` event (whatever changed them:
        frames, a cancel, a peer's frame they wait for), deleted ones a `job_removed`. `bulk`
        when more frames changed than `frame` events told."""
        before = self.signatures()
        while True:
            await asyncio.sleep(JOB_PERIOD)
            try:
                now = self.signatures()
            except Exception:   # a database hiccup: look again next time
                continue
            told, self._frame_events = self._frame_events, {}
            for job, row in now.items():
                old = before.get(job)
                if old == row:
                    continue
                body = self.job_summary(job)
                moved = sum(abs(body["frames"][s] - _counts(old).get(s, 0)) for s in body["frames"]) if old else 0
                self._publish("job", job, {**body, "bulk": old is None or moved > 2 * told.get(job, 0)})
            for job in before.keys() - now.keys():
                self._publish("job_removed", job, {"id": job})
            before = now

    # -- subscribing -----------------------------------------------------------------------
    @property
    def last_id(self) -> int:
        return self._next - 1

    def since(self, after: int, job: int | None) -> tuple[list[tuple[int, str, str]], bool]:
        """Events after id `after`: job events of every job, frame events of job `job` only
        (none when `job` is None); and whether some were lost (older than those kept)."""
        events, lost, _ = self._since(after, job)
        return events, lost

    def _since(self, after: int, job: int | None) -> tuple[list[tuple[int, str, str]], bool, int]:
        """`since`, plus the newest id looked at. Reads the kept events from the newest back to
        `after`: the cost is the new events, not the KEEP kept."""
        out: list[tuple[int, str, str]] = []
        with self._lock:
            newest = self._next - 1
            if not self._events or newest <= after:
                return out, False, newest
            lost = after < self._events[0][0] - 1
            for event_id, kind, j, text in reversed(self._events):
                if event_id <= after:
                    break
                if kind != "frame" or (job is not None and j == job):
                    out.append((event_id, kind, text))
        out.reverse()
        return out, lost, newest

    async def stream(self, after: int | None, job: int | None) -> AsyncIterator[str]:
        """The text/event-stream of this bus from `after` (None: from now): `job` events of
        every job, and `frame` events of job `job` only (they are many: the dashboard's job
        page asks for one job's)."""
        assert self._changed is not None, "the bus is not started"
        last = self.last_id if after is None or after > self.last_id else after
        yield "retry: 2000\n\n"
        if after is not None and after > self.last_id:   # an id of an earlier run of this server
            yield _format(self.last_id, "reset", json.dumps({"last_id": self.last_id}))
        while not self.closed:
            events, lost, newest = self._since(last, job)
            last = newest
            if lost:
                yield _format(newest, "reset", json.dumps({"last_id": newest}))
                continue
            for event_id, kind, text in events:
                yield _format(event_id, kind, text)
            self._changed.clear()
            if self.last_id > last:   # published while this stream was writing
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), KEEPALIVE)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"


def _counts(row: tuple) -> dict[str, int]:
    """A signature's frame counts: its first six fields (Scheduler.job_signatures)."""
    return dict(zip(("waiting", "ready", "running", "done", "failed", "cancelled"), row[:6])) if row else {}


def _format(event_id: int, kind: str, data: str) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n"

"""How many renders run at once, adjusted to what the CPU does (`--slots auto`).

A fixed number is wrong one way or the other: POV-Ray idles about 0.7 s before each render, so
small frames want many renderers at once (8 per core keep the cores busy), while Blender and
large frames are CPU-bound, and many renderers at once only share the cores and pay each
start-up. The policy:

- start with as many renders as usable cores (`low`);
- every PERIOD seconds, look at the share of CPU time the machine spent idle since the last
  look (/proc/stat): more than IDLE_ABOVE idle while every allowed render runs (and renders
  ran already at the last look: the idle before the first renders began is not theirs) means
  renderers are waiting (start-up, I/O): allow twice as many, or as many times more as the
  busy share would need to reach 1 - BUSY_BELOW when that is more (at most 4 times: 2 renders
  with the CPU 92 % idle become 8 at once), up to `high`; less than
  BUSY_BELOW idle means the cores are saturated: allow one fewer, down to `low`;
- a render already running is never stopped: a lower limit only holds back new ones.

Slots beyond the limit wait before they claim work, so a server never takes frames it would
not start. The chunk policy (chunks.py) shares a job's ready frames among the renders allowed
now, not among all slots.
"""

from __future__ import annotations

import asyncio
import math

PERIOD = 0.25
IDLE_ABOVE = 0.30
BUSY_BELOW = 0.05


def cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot (idle includes I/O wait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields[:8])


def next_limit(limit: int, running: int, idle_share: float, low: int, high: int) -> int:
    """The limit after one look at the CPU (pure logic)."""
    if idle_share > IDLE_ABOVE and running >= limit:
        factor = min(4.0, (1 - BUSY_BELOW) / max(1e-3, 1 - idle_share))
        return min(high, max(limit * 2, math.ceil(limit * factor)))
    if idle_share < BUSY_BELOW:
        return max(low, limit - 1)
    return limit


class Concurrency:
    """A limit on concurrent renders that follows the CPU (see the module's docstring); fixed
    when `low == high`."""

    def __init__(self, low: int, high: int):
        self.low, self.high = max(1, min(low, high)), max(1, high)
        self.limit = self.low
        self.running = 0      # slots holding a place: claiming or rendering
        self.rendering = 0    # of those, the ones whose renderer runs (what the CPU is judged by)
        self._changed = asyncio.Condition()
        self._task: asyncio.Task | None = None

    @property
    def adaptive(self) -> bool:
        return self.high > self.low

    def start(self) -> None:
        if self.adaptive:
            self._task = asyncio.create_task(self._watch(), name="concurrency")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.running < self.limit)
            self.running += 1

    async def release(self) -> None:
        async with self._changed:
            self.running -= 1
            self._changed.notify_all()

    async def _watch(self) -> None:
        before = cpu_times()
        rendered = False   # renders ran at the last look
        while True:
            await asyncio.sleep(PERIOD)
            now = cpu_times()
            total = now[1] - before[1]
            if total > 0:
                share = (now[0] - before[0]) / total
                # (a window in which the first renders began: its idle says nothing of them)
                limit = next_limit(self.limit, self.rendering if rendered else 0, share, self.low, self.high)
                if limit != self.limit:
                    async with self._changed:
                        self.limit = limit
                        self._changed.notify_all()
            before = now
            rendered = self.rendering >= self.low

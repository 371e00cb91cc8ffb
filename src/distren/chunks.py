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
- then: TARGET_SECONDS of work per process, from the mean measured seconds per frame;
- never more than the job's ready frames divided by this server's slots (rounded up), so that
  every slot gets work and the last frames do not wait behind one long chunk.
"""

from __future__ import annotations

import math
from collections import OrderedDict

TARGET_SECONDS = 10.0
FIRST_CHUNK = 2
MAX_CHUNK = 50
KEEP_JOBS = 1000   # jobs whose measurements are kept (least recently used are dropped)


def chunk_size(*, requested: int | None, chunkable: bool, seconds_per_frame: float | None,
               ready: int, slots: int) -> int:
    """The frames to lease together (>= 1)."""
    if not chunkable:
        return 1
    if requested:
        return max(1, min(requested, MAX_CHUNK))
    fair = max(1, math.ceil(ready / max(1, slots)))
    if seconds_per_frame is None:
        return min(FIRST_CHUNK, fair)
    wanted = max(1, round(TARGET_SECONDS / max(seconds_per_frame, 1e-3)))
    return max(1, min(wanted, fair, MAX_CHUNK))


class FrameTimes:
    """Measured wall seconds per frame of the jobs this server rendered (a render of a chunk of
    n frames counts its time / n for each): an exponential moving average per job, bounded."""

    def __init__(self, weight: float = 0.3):
        self.weight = weight
        self._mean: OrderedDict[tuple[str, int], float] = OrderedDict()
        self.alone: set[tuple[str, int]] = set()   # jobs whose frames render one by one

    def get(self, key: tuple[str, int]) -> float | None:
        return self._mean.get(key)

    def add(self, key: tuple[str, int], seconds: float, frames: int) -> None:
        per = seconds / max(1, frames)
        old = self._mean.pop(key, None)
        self._mean[key] = per if old is None else old + self.weight * (per - old)
        while len(self._mean) > KEEP_JOBS:
            self._mean.popitem(last=False)

    def render_alone(self, key: tuple[str, int]) -> None:
        self.alone.add(key)
        if len(self.alone) > KEEP_JOBS:
            self.alone.pop()

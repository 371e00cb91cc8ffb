"""Named crash points for the fault tests (tests/faults/).

When the environment variable DISTREN_FAILPOINT names a point, the server kills itself with
SIGKILL the first time it gets there: a deterministic `kill -9` at that exact moment. Unset (as
always outside the fault tests), `hit` is a dictionary look-up and nothing else.

Points: `intake` (package checked and stored, job not yet recorded), `output` (a frame's output
blob stored, result not yet recorded), `bundle` (half-way through writing a bundle), `done` (the
job's last frame just recorded), `operation` (a cancel, retry or delete after its first
transaction), `reclaim` (unreferenced blobs moved to the trash, their rows not yet deleted).
"""

from __future__ import annotations

import os
import signal

_ARMED = os.environ.get("DISTREN_FAILPOINT")


def armed(name: str) -> bool:
    return _ARMED == name


def hit(name: str) -> None:
    if _ARMED == name:
        os.kill(os.getpid(), signal.SIGKILL)

"""Liveness: every job ends, and a frame that waits says what for.

The rule (docs/architecture.md, "Liveness"): every job reaches done, failed or cancelled without
a person acting, as long as some server that can render its frames is reachable. This module
sits beside the scheduler's transitions (as Flamenco's timeout checker does) and decides the
cases the transitions alone cannot:

- **Paused jobs wait for a person.** A paused job's frames are not judged by the rule below
  (nobody takes them while the pause lasts, by choice); its `waiting_for` says it is paused.
  Dependencies still end as below: a paused job's frame fails when its dependency fails.
- **No renderer left.** A ready frame of backend B can be rendered by this server's slots (when
  it has slots and B) and by every peer that has B (or whose backends are not known yet). When
  every such renderer is blocklisted for the job, nobody will ever take the frame: it fails,
  naming why. When such renderers exist but none is reachable, or none has B, the frame waits
  and says so (`waiting_for`).
- **Dependencies on peers that are gone.** A dependency on a frame of a server that is no longer
  a peer can never be fetched: its dependents fail. A dependency whose server has been
  unreachable for longer than `remote_dep_timeout` fails its dependents too (a retry asks
  again); until then the waiting frames name the server and since when it is down.

Leases (local slots' too) expire when not renewed (Scheduler.expire_leases), so no frame stays
running for a renderer that is gone. A frame that fails wherever it runs fails alone: failures
strike a peer only for frames that another renderer then rendered (Scheduler._strike).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterator

from .scheduler import Scheduler, drain


@dataclass(frozen=True)
class RendererView:
    """One renderer as this server knows it: its own slots (`local:NAME`) or a peer."""

    name: str
    backends: frozenset[str] | None   # None: not known yet (the peer never said)
    up: bool = True
    down_since: float | None = None
    why: str | None = None            # why it is not up, when not for being unreachable ("draining")


@dataclass(frozen=True)
class FarmView:
    """What the server knows of the farm when the check runs."""

    renderers: tuple[RendererView, ...] = ()
    peers: frozenset[str] = frozenset()
    now: float = field(default_factory=time.time)

    def renderer(self, name: str) -> RendererView | None:
        for r in self.renderers:
            if r.name == name:
                return r
        return None


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "an unknown time"


def _renderers_for(sched: Scheduler, job: int, backend: str) -> tuple[list[RendererView], list[RendererView], set[str]]:
    farm: FarmView = sched.farm
    capable = [r for r in farm.renderers if r.backends is None or backend in r.backends]
    blocked = {r[0] for r in sched.conn.execute("SELECT renderer FROM blocklist WHERE job_id=?", (job,))}
    return capable, [r for r in capable if r.name not in blocked], blocked


def all_blocklisted(sched: Scheduler, job: int, backend: str) -> list[str] | None:
    """The renderers of `backend`, when every one of them is blocklisted for the job; else None."""
    if sched.farm is None:
        return None
    capable, candidates, _ = _renderers_for(sched, job, backend)
    if capable and not candidates:
        return sorted(r.name for r in capable)
    return None


def renderer_problem(sched: Scheduler, job: int, backend: str) -> str | None:
    """Why ready frames of `backend` in `job` are not being rendered, or None when some
    renderer that may take them is up."""
    if sched.farm is None:
        return None
    capable, candidates, _ = _renderers_for(sched, job, backend)
    if not capable:
        return f"no server of the farm has the renderer {backend!r}"
    if not candidates:
        return (f"every server that renders {backend!r} is blocklisted for this job: "
                + ", ".join(sorted(r.name for r in capable)))
    if not any(r.up for r in candidates):
        return (f"no server that renders {backend!r} is {'available' if any(r.why for r in candidates) else 'reachable'}: "
                + ", ".join(f"{r.name} {r.why or 'down since ' + _when(r.down_since)}" for r in candidates))
    return None


def dependency_problem(sched: Scheduler, server: str) -> str | None:
    """Why a dependency on a frame of `server` is not moving, if the farm knows."""
    farm: FarmView | None = sched.farm
    if farm is None:
        return None
    if server not in farm.peers:
        return f"server {server} is not a peer of this server"
    r = farm.renderer(server)
    if r is not None and not r.up:
        return f"{server} unreachable since {_when(r.down_since)}"
    return None


class Liveness:
    """The periodic check. `check_steps(farm)` runs in bounded transactions."""

    def __init__(self, sched: Scheduler, remote_dep_timeout: float = 3600.0):
        self.sched = sched
        self.remote_dep_timeout = remote_dep_timeout

    def check(self, farm: FarmView) -> int:
        return drain(self.check_steps(farm))  # type: ignore[return-value]

    def check_steps(self, farm: FarmView) -> Iterator[None]:
        """Fail what can no longer run, with the reason. Returns how many frames and
        dependencies it ended."""
        sched = self.sched
        sched.farm = farm
        ended = 0
        jobs = sched.conn.execute(
            "SELECT id, settings FROM jobs WHERE status='active' AND paused=0 AND n_ready > 0").fetchall()
        for job, settings in jobs:
            for backend in json.loads(settings):
                has = sched.conn.execute(
                    "SELECT 1 FROM frames WHERE job_id=? AND state='ready' AND backend=? LIMIT 1",
                    (job, backend)).fetchone()
                if not has:
                    continue
                names = all_blocklisted(sched, job, backend)
                if names:
                    error = (f"cannot be rendered: every server that renders {backend!r} is blocklisted "
                             f"for this job ({', '.join(names)}); retry the job to try them again")
                    yield from sched.fail_ready(job, backend, error)
                    ended += 1
        for server, job, frame in sched.pending_remote_deps():
            if server not in farm.peers:
                sched.set_remote_dep(server, job, frame, "failed",
                                     error=f"server {server} is not a peer of {sched.server}")
                ended += 1
                yield
                continue
            r = farm.renderer(server)
            if r is not None and not r.up and r.down_since is not None \
                    and farm.now - r.down_since > self.remote_dep_timeout:
                sched.set_remote_dep(server, job, frame, "failed",
                                     error=f"server {server} unreachable since {_when(r.down_since)}")
                ended += 1
                yield
        return ended

"""A stateful property test of the scheduler: a small farm of servers, each a real `Scheduler` on
its own SQLite file (`distren.store.db.connect`), all on one virtual clock, federated by this
model instead of HTTP.

Each server has render slots (lease owner `local:<name>`, backends drawn per server) and claims
frames of the other servers under its own name, as a peer. Some servers are "broken" as peers:
every frame they render for another server fails (their own slots work). Some frames are "bad":
they fail wherever they run. The model plays the federation's watcher: a frame that waits for a
frame of another server learns its end through `set_remote_dep` ('done' with the output,
'failed'/'cancelled' with the error, 'failed' "does not exist" for a frame or job that the peer
does not have), as `federation/service.py` does.

Rules: submit (sparse frame ids, two backends, dependencies within the job, on other jobs of the
server and on frames of other servers; some refused at intake), an intake that a crash
interrupts, claim (checked against the expected best frame), heartbeat, complete / fail,
renderers that crash (leases never renewed) or hand back their leases, lease expiry, clock
jumps (also backwards), cancel, retry, delete (Conflict while other jobs wait), restarts (also
with other backends), servers that vanish and come back, the watcher, the liveness check, a
round of the whole farm at work. Submit, cancel, retry and delete also run as operations under
way (`*_steps`; the scheduler's CHUNK is lowered to 10 during the test and jobs have up to 13
frames, so that they take several transactions): other rules run between their steps, and a
restart stops them halfway, as a kill -9 of the server would.

After every step (SQLite queried directly): one of the six states per frame; a running frame has
exactly one open attempt, matching `frames.attempts` and its lease owner, and a lease expiry;
no other frame has an open attempt or a lease; a done frame has an output; attempts only grow;
the jobs of the database are the model's (no hidden job left between calls, job ids never
reused, also after deletes and restarts); the `n_<state>` counters equal the real counts; a
waiting frame waits for something, for nothing that failed, and `deps_left` counts exactly the
dependencies not done; a ready frame has every dependency done; a claim returns the best
claimable frame (priority, job, frame; blocklist; retry elsewhere), or None when there is none;
a result is accepted exactly when its lease is current. A frame that fails must have a reason
that is true: a dependency that really failed, was cancelled or does not exist (on a peer: as
that peer has it now; or the peer not being a peer, or down for longer than the remote
dependency timeout), every renderer of its backend blocklisted (checked against the farm view
the liveness check was given), or `max_failures` counted failures. (Every step runs at a time
of its own, so a frame that fails again is judged again.)

At the end (`teardown`, when the steps passed): every server and renderer comes back with its
first backends, faults stop (broken peers still fail, bad frames still fail), and the farm runs
rounds (clock forward, lease expiry, liveness check, watcher, every renderer claims and
finishes) until nothing changes. Then every job must be done, failed or cancelled, every frame
must have ended, and no frame that is not bad failed except for a failed dependency, the
blocklist, or a failure count that injected faults (broken peers, expired leases) filled.

Defaults (DISTREN_STATEFUL_EXAMPLES=30 examples of DISTREN_STATEFUL_STEPS=50 steps) keep a
passing run under 30 s. Longer runs (the sequences that find bugs are long: raise both):

    DISTREN_STATEFUL_EXAMPLES=500 DISTREN_STATEFUL_STEPS=100 \
        .venv/bin/python -m pytest tests/test_stateful_scheduler.py

A failure is printed as the steps that lead to it (shrunk; shrinking stops after 5 minutes);
Hypothesis keeps it in .hypothesis/ and replays it first on the next run.

The machine also runs against the scheduler before the rewrite (commit 5df6e40: no liveness
module, no retry_elsewhere, no deps_left / n_* columns, no steps generators; those parts are
skipped by feature checks): put that commit's `src` first on PYTHONPATH. It fails there (blocklist
starvation: a job whose only frame left is ready, its only renderer blocklisted, never ends).
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import sqlite3
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import distren.scheduler as scheduler_module
from distren.errors import Conflict, NotFound
from distren.job.spec import FrameSpec, JobSpec
from distren.scheduler import Scheduler
from distren.store import db
from distren.store.blobs import Blob
from distren.url import DistrenURL, format_url, parse_url

try:  # the scheduler before the rewrite has no liveness module
    from distren.liveness import FarmView, Liveness, RendererView
except ImportError:  # pragma: no cover - old code only
    Liveness = None

HAS_LIVENESS = Liveness is not None
HAS_RETRY_ELSEWHERE = "retry_elsewhere" in inspect.signature(Scheduler.__init__).parameters
HAS_STEPS = all(hasattr(Scheduler, f"{op}_steps") for op in ("activate_job", "cancel", "retry", "delete"))
HAS_UPLOAD = hasattr(Scheduler, "record_upload")
HAS_PAUSE = all(hasattr(Scheduler, name) for name in ("pause", "resume", "set_priority"))
PRIORITIES = (-1000, -1, 0, 1, 2, 3, 1000)

EXAMPLES = int(os.environ.get("DISTREN_STATEFUL_EXAMPLES", "30"))
STEPS = int(os.environ.get("DISTREN_STATEFUL_STEPS", "50"))

NAMES = ("A", "B", "C")
NOT_A_PEER = "Z"          # a server that dependencies may name but that is no peer of anyone
MAX_FAILURES = 3
BLOCK_AFTER = 2
RETRY_ELSEWHERE = 30.0
LEASE = 20.0
REMOTE_DEP_TIMEOUT = 600.0
MAX_ROUNDS = 500
NO_JOB = 10**6            # a job id no server reaches in a test
# Frames per transaction of the *_steps operations during the test (the scheduler's CHUNK is
# 2,000): jobs of 11-13 frames take several. Not below 10: a retry recounts CHUNK // 10 frames
# per transaction.
SMALL_CHUNK = 10
TICK = 0.001              # the time a step takes
OPS = ("submit", "cancel", "retry", "delete")

FRAME_STATES = ("waiting", "ready", "running", "done", "failed", "cancelled")
UNFINISHED = ("waiting", "ready", "running")
TERMINAL = ("done", "failed", "cancelled")
BACKEND_SETS = ((), ("povray",), ("ffmpeg",), ("povray", "ffmpeg"))
SEED = Blob("5" * 64, 10)
BAD = "bad frame: #error in the scene"
BROKEN = "broken renderer: cannot run povray"
EXPIRED = "lease expired"


class Clock:
    """The farm's one virtual clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class JobModel:
    frames: dict[int, tuple[str, frozenset]]   # frame -> (backend, {(server, job, frame)})
    bad: set[int]
    priority: int = 0
    # while paused: each frame's attempts at the pause (no attempt starts until a resume)
    paused: dict[int, int] | None = None


@dataclass
class Server:
    name: str
    path: Path
    initial: frozenset       # the backends of its slots at the start (and at the end)
    backends: frozenset      # now (a restart may change them)
    broken: bool             # as a peer: every frame it renders for another server fails
    known: bool              # its backends are known to the other servers
    conn: sqlite3.Connection | None = None
    sched: Scheduler | None = None
    live: object = None
    up: bool = True
    down_since: float | None = None
    farm: object = None      # the FarmView its last liveness check was given
    issued: set[int] = field(default_factory=set)
    jobs: dict[int, JobModel] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)


@dataclass
class Op:
    """An operation of bounded transactions (`*_steps`) under way: the server runs other
    requests between its steps."""

    server: str
    kind: str                 # submit | cancel | retry | delete
    job: int
    steps: object             # the generator
    model: JobModel | None = None   # submit: the job, once it is shown

    def __repr__(self) -> str:
        return f"{self.kind} {format_url(self.server, self.job)}"


@dataclass
class Held:
    """A lease a renderer (the slots of server `holder`) holds on server `home`."""

    home: str
    holder: str
    job: int
    frame: int
    attempt: int

    @property
    def owner(self) -> str:
        return f"local:{self.home}" if self.holder == self.home else self.holder

    def __repr__(self) -> str:
        return f"{self.owner}@{format_url(self.home, self.job, self.frame)}#{self.attempt}"


def output_blob(home: str, job: int, frame: int, attempt: int) -> Blob:
    return Blob(hashlib.sha256(f"{home}/{job}/{frame}/{attempt}".encode()).hexdigest(), 100 + frame)


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _pick(draw, cands: tuple[list, list]):
    """Mostly a dependency that exists, sometimes one that does not."""
    good, odd = cands
    if odd and draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(odd))
    return draw(st.sampled_from(good)) if good else None


@st.composite
def job_specs(draw, local_cands: tuple, remote_cands: tuple, backends: list[str], remote_every: int = 3):
    """A job: sparse frame ids in random order, each with dependencies on earlier frames of the
    job (acyclic), maybe one on another job of the server, maybe one on a frame of another
    server, a backend, and whether it is bad."""
    n = draw(st.sampled_from([1, 2, 2, 3, 3, 4, 5, 11, 13]))
    if draw(st.booleans()):   # an animation's range (chunks need consecutive ids)
        start = draw(st.integers(0, 27))
        ids = list(range(start, start + n))
    else:
        ids = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n, unique=True))
    main = draw(st.sampled_from(backends))
    priority = draw(st.integers(0, 2))
    frames = []
    for k, fid in enumerate(ids):
        own = draw(st.lists(st.sampled_from(ids[:k]), max_size=2, unique=True)) if k else []
        ext = [_pick(draw, local_cands)] if draw(st.integers(0, 3)) == 0 else []
        rem = [_pick(draw, remote_cands)] if draw(st.integers(1, remote_every)) == 1 else []
        ext, rem = [d for d in ext if d is not None], [d for d in rem if d is not None]
        backend = draw(st.sampled_from(backends))
        bad = draw(st.integers(0, 7)) == 0
        frames.append((fid, backend, tuple(own), tuple(ext), tuple(rem), bad))
    return {"main": main, "priority": priority, "frames": frames}


class FarmMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="distren-stateful-"))
        self.clock = Clock()
        self.servers: dict[str, Server] = {}
        self.held: list[Held] = []
        # per frame, its state and end time when last seen: a frame that fails (again) is judged
        # (every step runs at a time of its own, see `consistent`)
        self.seen: dict[tuple[str, int, int], tuple] = {}
        self.attempts: dict[tuple[str, int, int], int] = {}   # highest attempts seen per frame
        self.has_counters = self.has_deps_left = self.has_avoid = False
        self.ops: list[Op] = []
        self.chunk = getattr(scheduler_module, "CHUNK", None)
        if HAS_STEPS:
            scheduler_module.CHUNK = SMALL_CHUNK

    # -- set-up and servers ------------------------------------------------------------------
    @initialize(
        backends=st.lists(st.sampled_from(BACKEND_SETS), min_size=len(NAMES), max_size=len(NAMES)),
        broken=st.lists(st.sampled_from([False, False, True]), min_size=len(NAMES), max_size=len(NAMES)),
        known=st.lists(st.booleans(), min_size=len(NAMES), max_size=len(NAMES)),
        first_jobs=st.lists(st.sampled_from(NAMES), min_size=1, max_size=4),
        data=st.data(),
    )
    def configure(self, backends, broken, known, first_jobs, data):
        if not any("povray" in b for b in backends):
            backends[0] = tuple(backends[0]) + ("povray",)
        for name, b, br, kn in zip(NAMES, backends, broken, known):
            srv = Server(name, self.dir / f"{name}.sqlite3", frozenset(b), frozenset(b), br, kn)
            self.servers[name] = srv
            self._open(srv)
        cols_jobs = columns(self.servers[NAMES[0]].conn, "jobs")
        cols_frames = columns(self.servers[NAMES[0]].conn, "frames")
        self.has_counters = "n_ready" in cols_jobs
        self.has_deps_left = "deps_left" in cols_frames
        self.has_avoid = "avoid" in cols_frames
        for name in first_jobs:
            self._submit(name, data)

    def _open(self, srv: Server) -> None:
        srv.conn = db.connect(srv.path)
        kw = {"retry_elsewhere": RETRY_ELSEWHERE} if HAS_RETRY_ELSEWHERE else {}
        srv.sched = Scheduler(srv.conn, srv.name, max_failures=MAX_FAILURES, block_after=BLOCK_AFTER,
                              clock=self.clock, **kw)
        srv.live = Liveness(srv.sched, remote_dep_timeout=REMOTE_DEP_TIMEOUT) if HAS_LIVENESS else None
        srv.farm = None

    def _close(self, srv: Server) -> None:
        if srv.conn is not None:
            srv.conn.close()
        srv.conn = srv.sched = srv.live = None

    def _abandon_ops(self, srv: Server) -> None:
        """The server stops: operations under way stop between two of their transactions."""
        for op in [o for o in self.ops if o.server == srv.name]:
            op.steps.close()
            self.ops.remove(op)
            row = srv.conn.execute("SELECT status FROM jobs WHERE id=?", (op.job,)).fetchone()
            if op.kind == "delete" and row is not None and row[0] == "deleting":
                self._forget(srv, op.job)   # hidden from its first step; the restart finishes it

    def _forget(self, srv: Server, job: int) -> None:
        del srv.jobs[job]
        srv.deleted.add(job)
        self.held = [h for h in self.held if not (h.home == srv.name and h.job == job)]
        for key in [k for k in self.seen if k[0] == srv.name and k[1] == job]:
            del self.seen[key]

    def _start(self, srv: Server) -> None:
        """(Re)start a server: reopen its database, drop interrupted intakes, recover its slots'
        leases. Whatever its slots held is gone (its processes died)."""
        if srv.conn is not None:
            self._abandon_ops(srv)
        self._close(srv)
        self._open(srv)
        srv.sched.discard_intake()
        srv.sched.recover(f"local:{srv.name}")
        if hasattr(srv.sched, "resume_steps"):   # cancels and retries the stop interrupted
            for _ in srv.sched.resume_steps():
                pass
        srv.up, srv.down_since = True, None
        n = srv.conn.execute("SELECT COUNT(*) FROM frames WHERE state='running' AND lease_owner=?",
                             (f"local:{srv.name}",)).fetchone()[0]
        assert n == 0, f"{srv.name}: {n} frames still running on its own slots after recover"

    def _drop_holder(self, holder: str) -> None:
        self.held = [h for h in self.held if h.holder != holder]

    def _up(self, name: str) -> Server | None:
        srv = self.servers.get(name)
        return srv if srv is not None and srv.up else None

    def _others(self, srv: Server) -> list[Server]:
        return [s for s in self.servers.values() if s.name != srv.name]

    def _truth(self, server: str, job: int, frame: int) -> sqlite3.Row | None:
        """A frame as its home server has it (None: no such frame or job), also when the server
        is down (its file is still there)."""
        srv = self.servers[server]
        conn = srv.conn
        if conn is None:
            conn = sqlite3.connect(srv.path)
            conn.row_factory = sqlite3.Row
        try:
            return conn.execute(
                "SELECT f.state, f.output_sha256, f.output_size, f.error FROM frames f JOIN jobs j"
                " ON j.id=f.job_id WHERE f.job_id=? AND f.frame=? AND j.status IN ('active','cancelled')",
                (job, frame)).fetchone()
        finally:
            if conn is not srv.conn:
                conn.close()

    # -- submit ----------------------------------------------------------------------------
    def _candidates(self, srv: Server) -> tuple[tuple[list, list], tuple[list, list]]:
        """Dependencies a new job of `srv` may name, each as (frames that exist, others): on
        other jobs of the server, and on frames of the other servers."""
        shown = self._shown(srv)
        local = [(j, f) for j in sorted(shown) for f in sorted(srv.jobs[j].frames)]
        odd_local = [(j, 0) for j in sorted(srv.deleted | (set(srv.jobs) - shown))] + [(NO_JOB, 0)]
        odd_local += [(j, 999) for j in sorted(shown)][:1]
        remote, odd_remote = [], []
        for p in self._others(srv):
            remote += [(p.name, j, f) for j, m in sorted(p.jobs.items()) for f in sorted(m.frames)]
            odd_remote += [(p.name, j, 0) for j in sorted(p.deleted)]
            odd_remote += [(p.name, j, 999) for j in sorted(p.jobs)][:1]
            odd_remote.append((p.name, NO_JOB, 0))
        if HAS_LIVENESS:
            odd_remote.append((NOT_A_PEER, 1, 0))
        # frames of peers that frames here waited for before, more often: what this server
        # learnt of them may be out of date by now
        seen = {tuple(r[:3]): r[3] for r in srv.conn.execute("SELECT server, job, frame, state FROM remote_deps")}
        remote += [d for d in remote if d in seen] * 2
        remote += [d for d in remote if seen.get(d) in ("failed", "cancelled")] * 3
        return (local, odd_local), (remote, odd_remote)

    def _spec(self, srv: Server, job: int, draft: dict) -> tuple[JobSpec, JobModel, bool]:
        frames, model, refused = [], {}, False
        bad = set()
        for fid, backend, own, ext, rem, is_bad in draft["frames"]:
            deps = [DistrenURL(srv.name, job, d) for d in own]
            for j, f in ext:
                deps.append(DistrenURL(srv.name, j, f))
                refused |= not (j in self._shown(srv) and f in srv.jobs[j].frames)
            deps += [DistrenURL(s, j, f) for s, j, f in rem]
            frames.append(FrameSpec(fid, deps, None if backend == draft["main"] else backend))
            model[fid] = (backend, frozenset((d.server, d.job, d.frame) for d in deps))
            if is_bad:
                bad.add(fid)
        extra = {b: {} for _, b, *_ in draft["frames"] if b != draft["main"]}
        spec = JobSpec(f"job{job}", draft["main"], {}, frames, draft["priority"], extra_backends=extra)
        return spec, JobModel(model, bad, draft["priority"]), refused

    def _farm_backends(self) -> list[str]:
        return sorted(set().union(*(s.initial for s in self.servers.values())))

    def _begin(self, srv: Server) -> int:
        job = srv.sched.begin_job()
        assert job not in srv.issued and job > max(srv.issued, default=0), \
            f"{srv.name}: job id {job} handed out again (ids so far {sorted(srv.issued)})"
        srv.issued.add(job)
        return job

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def submit(self, name, data):
        self._submit(name, data)

    @rule(name=st.sampled_from(NAMES), data=st.data())
    def submit_on_peers(self, name, data):
        """A job whose every frame waits for a frame of another server."""
        self._submit(name, data, remote_every=1)

    def _submit(self, name, data, remote_every: int = 3, in_steps: bool = False) -> None:
        """Intake: reserve an id, check the dependencies on other jobs of the server (refused:
        the id is dropped), record the job: at once, or (`in_steps`) as an operation under way."""
        srv = self._up(name)
        if srv is None:
            return
        local, remote = self._candidates(srv)
        draft = data.draw(job_specs(local, remote, self._farm_backends(), remote_every), label="job")
        job = self._begin(srv)
        spec, model, refused = self._spec(srv, job, draft)
        problems = srv.sched.check_external_deps(spec, job)
        assert bool(problems) == refused, (problems, refused)
        if problems:
            srv.sched.drop_job(job)
            with pytest.raises(NotFound):
                srv.sched.job(job)
            return
        if in_steps:
            self._step(Op(srv.name, "submit", job, srv.sched.activate_job_steps(job, spec, SEED), model))
            return
        srv.sched.activate_job(job, spec, SEED)
        srv.jobs[job] = model
        assert srv.sched.job(job)["total_frames"] == len(model.frames)

    # -- operations under way ----------------------------------------------------------------
    def _shown(self, srv: Server) -> set[int]:
        """The jobs the server shows (a delete under way hides its job from its first step)."""
        return set(srv.jobs) - {op.job for op in self.ops if op.server == srv.name and op.kind == "delete"}

    def _busy(self, server: str) -> set[int]:
        return {op.job for op in self.ops if op.server == server}

    def _step(self, op: Op) -> None:
        """One transaction of an operation (the first one starts it)."""
        if op not in self.ops:
            self.ops.append(op)
        srv = self.servers[op.server]
        self.clock.now += TICK
        try:
            next(op.steps)
        except StopIteration:
            self._done(op, srv)
        except (Conflict, NotFound):
            self.ops.remove(op)
            raise
        self._check(srv)   # (a drain runs many steps in one rule)

    def _done(self, op: Op, srv: Server) -> None:
        self.ops.remove(op)
        if op.kind == "submit":
            srv.jobs[op.job] = op.model
            assert srv.sched.job(op.job)["total_frames"] == len(op.model.frames)
        elif op.kind == "delete":
            self._forget(srv, op.job)
            with pytest.raises(NotFound):
                srv.sched.job(op.job)
        elif op.kind == "cancel":
            assert srv.sched.job(op.job)["state"] == "cancelled"

    @rule(kind=st.sampled_from(OPS), name=st.sampled_from(NAMES), i=st.integers(0, 63), data=st.data())
    def begin_operation(self, kind, name, i, data):
        """Start a submit, cancel, retry or delete that runs as a series of transactions; other
        rules run between its steps (step_operation), and a restart stops it halfway."""
        if not HAS_STEPS:
            return
        if kind == "submit":
            self._submit(name, data, in_steps=True)
            return
        picked = self._pick_job(name, i, UNFINISHED if kind == "cancel" else
                                ("failed", "cancelled") if kind == "retry" else ())
        if picked is None:
            return
        srv, job = picked
        if kind == "delete":
            if self._waiting_for(srv, job):
                with pytest.raises(Conflict):
                    self._step(Op(srv.name, kind, job, srv.sched.delete_steps(job)))
                return
        self._step(Op(srv.name, kind, job, getattr(srv.sched, f"{kind}_steps")(job)))

    @rule(i=st.integers(0, 15), to_the_end=st.booleans())
    def step_operation(self, i, to_the_end):
        live = [op for op in self.ops if self.servers[op.server].up]
        if not live:
            return
        op = live[i % len(live)]
        self._step(op)
        while to_the_end and op in self.ops:
            self._step(op)

    @rule(name=st.sampled_from(NAMES), steps=st.integers(0, 4), data=st.data())
    def interrupted_submit(self, name, steps, data):
        """The server dies during an intake (after some of the job's transactions): at the
        restart the job is gone and its id is not handed out again."""
        srv = self._up(name)
        if srv is None:
            return
        job = self._begin(srv)
        if HAS_STEPS and steps:
            local, remote = self._candidates(srv)
            local = (local[0], [])  # intake checked them
            draft = data.draw(job_specs(local, remote, self._farm_backends()), label="job")
            spec, _, _ = self._spec(srv, job, draft)
            gen = srv.sched.activate_job_steps(job, spec, SEED)
            for _ in range(steps):
                try:
                    next(gen)
                except StopIteration:
                    break
            else:
                gen.close()
            if srv.conn.execute("SELECT status FROM jobs WHERE id=?", (job,)).fetchone()[0] != "intake":
                srv.jobs[job] = self._spec(srv, job, draft)[1]   # it finished after all: a real job
                return
        self._drop_holder(srv.name)
        self._start(srv)
        with pytest.raises(NotFound):
            srv.sched.job(job)

    # -- leases ----------------------------------------------------------------------------
    def _expected_claim(self, home: Server, owner: str, backends: list[str]) -> tuple[int, int] | None:
        if not backends:
            return None
        marks = ",".join("?" * len(backends))
        sql = ("SELECT f.job_id, f.frame FROM frames f JOIN jobs j ON j.id=f.job_id"
               f" WHERE f.state='ready' AND j.status='active' AND f.backend IN ({marks})"
               + (" AND j.paused=0" if HAS_PAUSE else "") +
               " AND NOT EXISTS (SELECT 1 FROM blocklist b WHERE b.job_id=f.job_id AND b.renderer=?)")
        args = [*backends, owner]
        if self.has_avoid:
            sql += " AND (f.avoid IS NULL OR f.avoid != ? OR f.avoid_until <= ?)"
            args += [owner, self.clock.now]
        sql += " ORDER BY j.priority DESC, f.job_id, f.frame LIMIT 1"
        row = home.conn.execute(sql, args).fetchone()
        return None if row is None else (row[0], row[1])

    def _claim(self, home: Server, holder: Server) -> Held | None:
        owner = f"local:{home.name}" if holder is home else holder.name
        backends = sorted(holder.backends)
        expected = self._expected_claim(home, owner, backends)
        lease = home.sched.claim(owner, backends, lease_seconds=LEASE)
        got = None if lease is None else (lease.job, lease.frame)
        assert got == expected, f"{owner} claimed {got} on {home.name}; the best claimable frame is {expected}"
        if lease is None:
            return None
        assert lease.backend in backends
        deps = home.sched.frame(lease.job, lease.frame)["depends"]
        assert all(d["state"] == "done" for d in deps), deps
        assert all(d["sha256"] for d in lease.depends), lease.depends
        h = Held(home.name, holder.name, lease.job, lease.frame, lease.attempt)
        self.held.append(h)
        return h

    def _current(self, home: Server, h: Held) -> bool:
        row = home.conn.execute("SELECT state, attempts, lease_owner FROM frames WHERE job_id=? AND frame=?",
                                (h.job, h.frame)).fetchone()
        return row is not None and row[0] == "running" and row[1] == h.attempt and row[2] == h.owner

    def _finish(self, h: Held) -> None:
        """The renderer reports the result: bad frames and broken peers fail, others complete.
        Accepted exactly when the lease is current."""
        home, holder = self.servers[h.home], self.servers[h.holder]
        job = home.jobs.get(h.job)
        bad = job is not None and h.frame in job.bad
        peer = h.holder != h.home
        current = self._current(home, h)
        try:
            if bad or (peer and holder.broken):
                error = BAD if bad else BROKEN
                state = home.sched.fail(h.job, h.frame, h.attempt, "log", f"{error} (on {h.holder})" if peer else error,
                                        owner=h.owner)
                assert state in ("ready", "failed")
            else:
                blob = output_blob(h.home, h.job, h.frame, h.attempt)
                if peer and HAS_UPLOAD:
                    home.sched.record_upload(h.job, h.frame, h.attempt, h.owner, blob)
                    assert home.sched.uploaded(h.job, h.frame, h.attempt, h.owner) == blob
                home.sched.complete(h.job, h.frame, h.attempt, blob, h.holder, "log", owner=h.owner)
                row = home.conn.execute("SELECT state, output_sha256, output_size, rendered_by FROM frames"
                                        " WHERE job_id=? AND frame=?", (h.job, h.frame)).fetchone()
                assert tuple(row) == ("done", blob.sha256, blob.size, h.holder), tuple(row)
        except (Conflict, NotFound) as exc:
            assert not current, f"result of the current lease {h} refused: {exc}"
            return
        assert current, f"result of {h} accepted, but the lease is not current"

    def _usable(self) -> list[Held]:
        return [h for h in self.held if self.servers[h.home].up and self.servers[h.holder].up]

    @rule(home=st.sampled_from(NAMES), holder=st.sampled_from(NAMES))
    def claim(self, home, holder):
        h, r = self._up(home), self._up(holder)
        if h is not None and r is not None:
            self._claim(h, r)

    @rule(name=st.sampled_from(NAMES), n=st.integers(2, 5), pause=st.booleans())
    def claim_chunk(self, name, n, pause):
        """A local slot leases a chunk: the best frame, then (claim_more) the frames right after
        it of the same job and backend that are ready, never failed and not kept from it, as
        long as they are consecutive, up to n in all; each with its own lease."""
        srv = self._up(name)
        if srv is None or not hasattr(srv.sched, "claim_more"):
            return
        owner = f"local:{srv.name}"
        failures = {}
        expected = self._expected_claim(srv, owner, sorted(srv.backends))
        if expected is not None:
            failures = {r[0]: tuple(r[1:]) for r in srv.conn.execute(
                "SELECT frame, state, failures, backend, avoid, avoid_until, attempts FROM frames"
                " WHERE job_id=? AND frame BETWEEN ? AND ?", (expected[0], expected[1], expected[1] + n - 1))}
        h = self._claim(srv, srv)
        if h is None:
            return
        from distren.scheduler import Lease

        first = Lease(job=h.job, frame=h.frame, attempt=h.attempt, backend=failures[h.frame][2], settings={},
                      seed_sha256="", seed_size=0, depends=(), expires=None, owner=owner, lease_seconds=LEASE)
        want = []
        if failures[h.frame][1] == 0:
            for f in range(h.frame + 1, h.frame + n):
                state, fails, backend, avoid, until, _ = failures.get(f, (None,) * 6)
                if state != "ready" or fails or backend != first.backend or \
                        (avoid == owner and until is not None and until > self.clock.now):
                    break
                want.append(f)
        if pause and HAS_PAUSE:   # paused after its first frame was leased: no more frames of it
            self._pause(srv, h.job)
            event(f"job paused in a chunk of {len(want) + 1}")
            want = []
        more = srv.sched.claim_more(first, n - 1)
        event(f"chunk of {len(more) + 1}" + (" after a failure" if failures[h.frame][1] else ""))
        assert [m.frame for m in more] == want, f"chunk after {h}: got {[m.frame for m in more]}, expected {want}"
        for m in more:
            assert (m.job, m.backend, m.owner) == (h.job, first.backend, owner)
            assert m.attempt == failures[m.frame][5] + 1
            held = Held(srv.name, srv.name, m.job, m.frame, m.attempt)
            assert self._current(srv, held)
            self.held.append(held)

    @rule(home=st.sampled_from(NAMES), holder=st.sampled_from(NAMES), n=st.integers(1, 4))
    def work(self, home, holder, n):
        """A renderer at work: claims and finishes up to n frames in a row."""
        h, r = self._up(home), self._up(holder)
        if h is None or r is None:
            return
        for _ in range(n):
            lease = self._claim(h, r)
            if lease is None:
                return
            self.held.remove(lease)
            self._finish(lease)

    @rule(i=st.integers(0, 15))
    def finish(self, i):
        usable = self._usable()
        if usable:
            h = usable[i % len(usable)]
            self.held.remove(h)
            self._finish(h)

    @rule(i=st.integers(0, 15), every=st.booleans())
    def heartbeat(self, i, every):
        usable = self._usable()
        if usable and not every:
            usable = [usable[i % len(usable)]]
        for h in usable:
            home = self.servers[h.home]
            current = self._current(home, h)
            try:
                expires = home.sched.heartbeat(h.job, h.frame, h.attempt, h.owner, LEASE)
            except (Conflict, NotFound) as exc:
                assert not current, f"heartbeat of the current lease {h} refused: {exc}"
                continue
            assert current, f"heartbeat of {h} accepted, but the lease is not current"
            assert expires == self.clock.now + LEASE

    @rule(i=st.integers(0, 15), n=st.integers(1, 3))
    def give_back(self, i, n):
        """A renderer gives back the last n frames it holds of a job (a chunk split for an idle
        renderer: `Scheduler.release`): taken exactly when the lease is current; those frames
        are ready again, and a give-back counts as nothing (no failure, no interruption)."""
        usable = self._usable()
        if not usable or not hasattr(self.servers[usable[0].home].sched, "release"):
            return
        pick = usable[i % len(usable)]
        same = sorted((h for h in usable if (h.home, h.holder, h.job) == (pick.home, pick.holder, pick.job)),
                      key=lambda h: h.frame)[-n:]
        home = self.servers[pick.home]
        before = {h.frame: (self._current(home, h), home.conn.execute(
            "SELECT failures FROM frames WHERE job_id=? AND frame=?", (h.job, h.frame)).fetchone()) for h in same}
        got = home.sched.release(pick.job, [(h.frame, h.attempt) for h in same], pick.owner)
        assert got == [h.frame for h in same if before[h.frame][0]], (same, got)
        for h in same:
            self.held.remove(h)
            if h.frame in got:
                row = home.conn.execute("SELECT state, failures, lease_owner FROM frames WHERE job_id=? AND frame=?",
                                        (h.job, h.frame)).fetchone()
                assert tuple(row) == ("ready", before[h.frame][1][0], None), tuple(row)
        event(f"gave back {len(got)} of {len(same)}")

    @rule(name=st.sampled_from(NAMES), graceful=st.booleans())
    def renderer_stops(self, name, graceful):
        """The slots of a server stop: gracefully they hand their leases back (an interrupted
        attempt, not a failure); crashed, they never renew them."""
        mine = [h for h in self.held if h.holder == name]
        self._drop_holder(name)
        if not graceful:
            return
        for h in mine:
            home = self._up(h.home)
            if home is None or not self.servers[name].up:
                continue
            current = self._current(home, h)
            try:
                state = home.sched.fail(h.job, h.frame, h.attempt, "", f"interrupted: {name} stopping",
                                        counts=False, owner=h.owner)
            except (Conflict, NotFound):
                assert not current
                continue
            assert current and state == "ready"

    @rule(dt=st.integers(0, int(3 * LEASE)))
    def expire(self, dt):
        self.clock.now += dt
        for srv in self.servers.values():
            if srv.up:
                srv.sched.expire_leases()
                n = srv.conn.execute("SELECT COUNT(*) FROM frames WHERE state='running' AND lease_expires < ?",
                                     (self.clock.now,)).fetchone()[0]
                assert n == 0, f"{srv.name}: {n} expired leases left running"

    @rule(dt=st.sampled_from([-90, -5, 45, 700, 4000]))
    def clock_jump(self, dt):
        self.clock.now += dt

    # -- job actions -----------------------------------------------------------------------
    def _pick_job(self, name: str, i: int, prefer: tuple[str, ...] = ()) -> tuple[Server, int] | None:
        """A job of the server; with `prefer`, more often one with frames in those states."""
        srv = self._up(name)
        busy = self._busy(name)
        if srv is None or not set(srv.jobs) - busy:
            return None
        jobs = sorted(set(srv.jobs) - busy)
        if prefer:
            marks = ",".join("?" * len(prefer))
            jobs += [r[0] for r in srv.conn.execute(
                f"SELECT DISTINCT job_id FROM frames WHERE state IN ({marks}) ORDER BY job_id", prefer)
                if r[0] in jobs] * 3
        if "failed" in prefer:
            # jobs whose end other servers learnt: a retry makes what they know out of date
            known = {r[0] for p in self._others(srv) if p.up for r in p.conn.execute(
                "SELECT job FROM remote_deps WHERE server=? AND state IN ('failed','cancelled')", (srv.name,))}
            jobs += sorted(known & set(jobs)) * 6
        return srv, jobs[i % len(jobs)]

    def _pause(self, srv: Server, job: int) -> None:
        model = srv.jobs[job]
        srv.sched.pause(job)
        if model.paused is None:
            model.paused = {r[0]: r[1] for r in srv.conn.execute(
                "SELECT frame, attempts FROM frames WHERE job_id=?", (job,))}
        info = srv.sched.job(job)
        event("job paused" + (" while it runs" if info["frames"]["running"] else ""))
        assert info["paused"] and (info["state"] == "paused" or info["state"] in TERMINAL), info
        assert info["state"] in TERMINAL or info["waiting_for"].startswith("the job is paused"), info

    def _resume(self, srv: Server, job: int) -> None:
        srv.sched.resume(job)
        srv.jobs[job].paused = None
        assert srv.sched.job(job)["state"] != "paused"

    @rule(name=st.sampled_from(NAMES), i=st.integers(0, 63))
    def pause(self, name, i):
        """A person pauses a job (more often one with frames to render)."""
        picked = self._pick_job(name, i, UNFINISHED) if HAS_PAUSE else None
        if picked is not None:
            self._pause(*picked)

    @rule(name=st.sampled_from(NAMES), i=st.integers(0, 63))
    def resume(self, name, i):
        srv = self._up(name) if HAS_PAUSE else None
        if srv is None:
            return
        paused = sorted(j for j, m in srv.jobs.items() if m.paused is not None and j not in self._busy(name))
        if paused:
            self._resume(srv, paused[i % len(paused)])

    @rule(name=st.sampled_from(NAMES), i=st.integers(0, 63), priority=st.sampled_from(PRIORITIES))
    def set_priority(self, name, i, priority):
        picked = self._pick_job(name, i, ("ready",)) if HAS_PAUSE else None
        if picked is not None:
            srv, job = picked
            srv.sched.set_priority(job, priority)
            srv.jobs[job].priority = priority

    @rule(name=st.sampled_from(NAMES), i=st.integers(0, 63))
    def cancel(self, name, i):
        picked = self._pick_job(name, i, UNFINISHED)
        if picked is None:
            return
        srv, job = picked
        srv.sched.cancel(job)
        info = srv.sched.job(job)
        assert info["state"] == "cancelled"
        assert not any(info["frames"][s] for s in UNFINISHED), info["frames"]

    @rule(name=st.sampled_from(NAMES), i=st.integers(0, 63))
    def retry(self, name, i):
        picked = self._pick_job(name, i, ("failed", "cancelled"))
        if picked is None:
            return
        srv, job = picked
        srv.sched.retry(job)
        assert srv.sched.job(job)["state"] != "cancelled"

    @rule(name=st.sampled_from(NAMES), i=st.integers(0, 15))
    def delete(self, name, i):
        picked = self._pick_job(name, i)
        if picked is None:
            return
        srv, job = picked
        if self._waiting_for(srv, job):
            with pytest.raises(Conflict):
                srv.sched.delete(job)
            return
        srv.sched.delete(job)
        self._forget(srv, job)
        with pytest.raises(NotFound):
            srv.sched.job(job)

    def _waiting_for(self, srv: Server, job: int) -> list[tuple[int, int]]:
        """Unfinished frames of other jobs (shown, or under intake) that wait for the job: a
        delete is refused while there are any."""
        jobs = {**{op.job: op.model for op in self.ops if op.server == srv.name and op.kind == "submit"},
                **srv.jobs}
        out = []
        for j, m in jobs.items():
            if j == job:
                continue
            for f, (_, deps) in m.frames.items():
                if any(s == srv.name and dj == job for s, dj, _ in deps):
                    row = srv.conn.execute("SELECT state FROM frames WHERE job_id=? AND frame=?", (j, f)).fetchone()
                    if row is not None and row[0] in UNFINISHED:
                        out.append((j, f))
        return out

    # -- servers ---------------------------------------------------------------------------
    @rule(name=st.sampled_from(NAMES), backends=st.none() | st.sampled_from(BACKEND_SETS))
    def restart(self, name, backends):
        srv = self._up(name)
        if srv is None:
            return
        self._drop_holder(name)
        if backends is not None:
            srv.backends = frozenset(backends)
        self._start(srv)

    @rule(name=st.sampled_from(NAMES))
    def vanish(self, name):
        srv = self._up(name)
        if srv is None:
            return
        self._drop_holder(name)
        self._abandon_ops(srv)
        self._close(srv)
        srv.up, srv.down_since = False, self.clock.now

    @rule(name=st.sampled_from(NAMES))
    def come_back(self, name):
        srv = self.servers[name]
        if not srv.up:
            self._start(srv)

    @rule(name=st.sampled_from(NAMES))
    def announce(self, name):
        self.servers[name].known = True

    def _watch(self, srv: Server) -> None:
        """The federation's watcher: ask each peer about the frames waited for here."""
        for server, job, frame in srv.sched.pending_remote_deps():
            peer = self._up(server)
            if peer is None:
                continue  # not a peer, or down: the liveness check decides
            row = self._truth(server, job, frame)
            if row is None:
                srv.sched.set_remote_dep(server, job, frame, "failed", error="does not exist")
            elif row["state"] == "done":
                srv.sched.set_remote_dep(server, job, frame, "done", Blob(row["output_sha256"], row["output_size"]))
            elif row["state"] in ("failed", "cancelled"):
                srv.sched.set_remote_dep(server, job, frame, row["state"], error=row["error"])

    @rule(name=st.sampled_from(NAMES))
    def watch(self, name):
        srv = self._up(name)
        if srv is not None:
            self._watch(srv)

    def _farm_view(self, srv: Server):
        renderers = [RendererView(f"local:{srv.name}", frozenset(srv.backends))]
        for p in self._others(srv):
            renderers.append(RendererView(p.name, frozenset(p.backends) if p.known else None, p.up, p.down_since))
        return FarmView(tuple(renderers), frozenset(p.name for p in self._others(srv)), self.clock.now)

    def _liveness(self, srv: Server) -> None:
        if srv.live is not None:
            srv.farm = self._farm_view(srv)
            srv.live.check(srv.farm)

    @rule(name=st.sampled_from(NAMES))
    def liveness(self, name):
        srv = self._up(name)
        if srv is not None:
            self._liveness(srv)

    # -- invariants ------------------------------------------------------------------------
    def _why_failed(self, srv: Server, job: int, frame: int, row: sqlite3.Row) -> str | None:
        """None when the failure of a frame has a true reason, else what is wrong with it."""
        err = row["error"] or ""
        where = format_url(srv.name, job, frame)
        if err.startswith("dependency "):
            url = err.split()[1]
            dep = parse_url(url)
            rest = err[len("dependency ") + len(url):].strip()
            # the peer's own error follows in parentheses: only the liveness check's words count
            if dep.server != srv.name and rest.startswith(f"failed (server {dep.server} unreachable since"):
                p = self.servers.get(dep.server)
                if p is not None and not p.up and self.clock.now - p.down_since > REMOTE_DEP_TIMEOUT:
                    return None
                return f"{where} failed ({err!r}), but {dep.server} is up or not down for that long"
            if dep.server != srv.name and rest.startswith(f"failed (server {dep.server} is not a peer"):
                return None if dep.server not in self.servers else f"{where} failed ({err!r}): it is a peer"
            if dep.server not in self.servers:
                return f"{where} failed ({err!r}) on a server that is not a peer, without saying so"
            truth = self._truth(dep.server, dep.job, dep.frame)
            state = "deleted or missing" if truth is None else truth["state"]
            if truth is None or truth["state"] in ("failed", "cancelled"):
                return None
            return f"{where} failed ({err!r}), but {url} is {state}"
        if err.startswith("cannot be rendered"):
            if srv.jobs[job].paused is not None:
                return f"{where} failed ({err!r}) while its job is paused"
            backend = row["backend"]
            if srv.farm is None:
                return f"{where} failed ({err!r}) without a liveness check"
            capable = {r.name for r in srv.farm.renderers if r.backends is None or backend in r.backends}
            blocked = {r[0] for r in srv.conn.execute("SELECT renderer FROM blocklist WHERE job_id=?", (job,))}
            if capable and capable <= blocked and "blocklisted" in err:
                return None
            return f"{where} failed ({err!r}); renderers of {backend}: {sorted(capable)}, blocklisted: {sorted(blocked)}"
        if err.startswith((BAD, BROKEN, EXPIRED)):
            if row["failures"] < MAX_FAILURES:
                return f"{where} failed ({err!r}) after {row['failures']} failures"
            if err.startswith(BAD) and frame not in srv.jobs[job].bad:
                return f"{where} is not bad but failed as bad"
            return None
        return f"{where} failed for no known reason: {err!r}"

    def _check(self, srv: Server) -> None:
        c = srv.conn
        busy = {op.job: op.kind for op in self.ops if op.server == srv.name}
        # jobs whose rows a submit or delete under way is writing or removing
        partial = {j for j, kind in busy.items() if kind in ("submit", "delete")}
        jobs = {r["id"]: r for r in c.execute("SELECT * FROM jobs")}
        hidden = {j: r["status"] for j, r in jobs.items() if r["status"] not in ("active", "cancelled")}
        assert set(hidden) <= partial, f"{srv.name}: jobs left hidden between calls: {hidden}"
        expected = set(srv.jobs) | {j for j, kind in busy.items() if kind == "submit"}
        assert set(jobs) == expected, f"{srv.name}: jobs {sorted(jobs)}, expected {sorted(expected)}"
        assert set(jobs) <= srv.issued
        frames = {(r["job_id"], r["frame"]): r for r in c.execute("SELECT * FROM frames")}
        assert {j for j, _ in frames} <= set(jobs), f"{srv.name}: frames of jobs that do not exist"
        for j, m in srv.jobs.items():
            if j in partial:
                continue
            have = {f for (jj, f) in frames if jj == j}
            assert have == set(m.frames), f"{srv.name}: job {j} has frames {sorted(have)}, expected {sorted(m.frames)}"
        opened: dict[tuple, list] = defaultdict(list)
        counted: Counter = Counter()
        top: dict[tuple, int] = {}
        for r in c.execute("SELECT job_id, frame, attempt, renderer, finished FROM attempts"):
            key = (r[0], r[1])
            counted[key] += 1
            top[key] = max(top.get(key, 0), r[2])
            if r["finished"] is None:
                opened[key].append((r[2], r[3]))
        assert set(counted) <= set(frames), f"{srv.name}: attempts of frames that do not exist"
        deps: dict[tuple, set] = defaultdict(set)
        for r in c.execute("SELECT job_id, frame, dep_server, dep_job, dep_frame FROM deps"):
            deps[(r[0], r[1])].add((r[2], r[3], r[4]))
        remote = {(r[0], r[1], r[2]): r[3] for r in c.execute("SELECT server, job, frame, state FROM remote_deps")}

        def dep_state(d):
            if d[0] == srv.name:
                row = frames.get((d[1], d[2]))
                return None if row is None else row["state"]
            assert d in remote, f"{srv.name}: no remote_deps row for {format_url(*d)}"
            return remote[d]

        counts: dict[int, Counter] = defaultdict(Counter)
        for key, r in frames.items():
            job, frame = key
            where = format_url(srv.name, job, frame)
            state = r["state"]
            counts[job][state] += 1
            assert state in FRAME_STATES, f"{where}: state {state!r}"
            assert r["attempts"] == top.get(key, 0) == counted[key], \
                f"{where}: attempts {r['attempts']}, attempt rows {counted[key]} (highest {top.get(key)})"
            skey = (srv.name, job, frame)
            assert r["attempts"] >= self.attempts.get(skey, 0), f"{where}: attempts went down"
            self.attempts[skey] = r["attempts"]
            if state == "running":
                assert opened[key] == [(r["attempts"], r["lease_owner"])], \
                    f"{where}: running attempt {r['attempts']} of {r['lease_owner']}, open attempts {opened[key]}"
                assert r["lease_owner"] and r["lease_expires"] is not None, f"{where}: running without a lease"
            else:
                assert not opened[key], f"{where}: {state} with open attempts {opened[key]}"
                assert r["lease_owner"] is None and r["lease_expires"] is None, f"{where}: {state} with a lease"
            if state == "done":
                assert r["output_sha256"] and r["output_size"] is not None, f"{where}: done without an output"
            if job in partial:
                continue  # judged once the job is shown (submit), or gone (delete)
            assert deps[key] == srv.jobs[job].frames[frame][1], f"{where}: dependencies {deps[key]}"
            paused = srv.jobs[job].paused
            if paused is not None:
                assert r["attempts"] == paused[frame], \
                    f"{where}: attempt {r['attempts']} of a job paused at attempt {paused[frame]}"
            states = [dep_state(d) for d in sorted(deps[key])]
            left = sum(s != "done" for s in states)
            if state == "ready":
                assert left == 0, f"{where}: ready with dependencies {states}"
            recount = busy.get(job) == "retry" and self.has_deps_left and r["deps_left"] == -1
            if state == "waiting" and not recount:  # (a retry under way counts these afresh)
                assert left > 0, f"{where}: waiting for nothing"
                ended = [(d, st) for d, st in zip(sorted(deps[key]), states) if st in ("failed", "cancelled", None)
                         # a cancel under way reaches the job's own frames in a later step
                         and not (busy.get(job) == "cancel" and d[:2] == (srv.name, job))]
                assert not ended, f"{where}: waiting for a dependency that ended: {ended}"
                if self.has_deps_left:
                    assert r["deps_left"] == left, f"{where}: deps_left {r['deps_left']}, {left} not done"
            if state == "failed" and self.seen.get(skey) != (state, r["finished"]):
                why = self._why_failed(srv, job, frame, r)
                assert why is None, why
            self.seen[skey] = (state, r["finished"])
        for j, r in jobs.items():
            real = {s: counts[j][s] for s in FRAME_STATES}
            if self.has_counters:
                have = {s: r[f"n_{s}"] for s in FRAME_STATES}
                assert have == real, f"{srv.name}: job {j} counters {have}, frames {real}"
            if j in hidden:
                continue
            if HAS_PAUSE and j in srv.jobs and j not in partial:
                m = srv.jobs[j]
                assert (r["priority"], bool(r["paused"])) == (m.priority, m.paused is not None), \
                    f"{srv.name}: job {j} priority {r['priority']} paused {r['paused']}, expected {m.priority} {m.paused}"
            info = srv.sched.job(j)
            assert info["frames"] == real, f"{srv.name}: job {j} reports {info['frames']}, frames {real}"

    @invariant()
    def consistent(self):
        for srv in self.servers.values():
            if srv.up:
                self._check(srv)
        self.clock.now += TICK   # every step at a time of its own: a frame failing again shows

    # -- the end -----------------------------------------------------------------------------
    def _fingerprint(self) -> tuple:
        out = []
        for srv in self.servers.values():
            c = srv.conn
            out.append(tuple(tuple(r) for r in c.execute(
                "SELECT job_id, frame, state, attempts FROM frames ORDER BY job_id, frame")))
            out.append(tuple(tuple(r) for r in c.execute("SELECT * FROM remote_deps ORDER BY server, job, frame")))
            out.append(tuple(tuple(r) for r in c.execute("SELECT job_id, renderer FROM blocklist ORDER BY 1, 2")))
        return tuple(out)

    def _stuck(self) -> list[str]:
        out = []
        for srv in self.servers.values():
            for job in sorted(srv.jobs):
                info = srv.sched.job(job)
                if info["state"] in TERMINAL:
                    continue
                out.append(f"{info['url']} {info['state']} {info['frames']} waiting_for={info.get('waiting_for')!r}"
                           f" blocklisted={info['blocklisted']}")
                for f in sorted(srv.jobs[job].frames):
                    fr = srv.sched.frame(job, f)
                    if fr["state"] in UNFINISHED:
                        out.append(f"  {fr['url']} {fr['state']} (backend {fr['backend']}, failures"
                                   f" {fr['failures']}, bad {f in srv.jobs[job].bad})"
                                   f" waiting_for={fr.get('waiting_for')!r} depends={fr['depends']}")
        return out

    def _round(self) -> None:
        """The farm at work for a while, its servers and renderers that are up: renderers finish
        what they hold; time passes (past leases and retry_elsewhere); leases expire; liveness
        checks; the watcher; then every renderer claims and finishes, the healthy ones all they
        can, each broken peer one frame per server."""
        for h in self._usable():
            self.held.remove(h)
            self._finish(h)
        self.clock.now += max(LEASE, RETRY_ELSEWHERE) + 1
        servers = [s for s in self.servers.values() if s.up]
        for srv in servers:
            srv.sched.expire_leases()
        for srv in servers:
            self._liveness(srv)
        for srv in servers:
            self._watch(srv)
        for home in servers:
            others = [s for s in servers if s is not home]
            for holder in [home] + [s for s in others if not s.broken]:
                for _ in range(200):
                    h = self._claim(home, holder)
                    if h is None:
                        break
                    self.held.remove(h)
                    self._finish(h)
            for holder in [s for s in others if s.broken]:
                h = self._claim(home, holder)
                if h is not None:
                    self.held.remove(h)
                    self._finish(h)

    @rule()
    def farm_round(self):
        self._round()

    def _timers(self) -> int:
        """What time alone still changes: leases nobody renews any more (every renderer
        finished what it held) run out; frames that avoid a renderer (after a clock jump
        backwards, for longer) are its again."""
        n = 0
        for srv in self.servers.values():
            n += srv.conn.execute("SELECT COUNT(*) FROM frames WHERE state='running'").fetchone()[0]
            if self.has_avoid:
                n += srv.conn.execute("SELECT COUNT(*) FROM frames WHERE state='ready' AND avoid_until > ?",
                                      (self.clock.now,)).fetchone()[0]
        return n

    def settle(self) -> None:
        """No more faults: every server and renderer back with its first backends; rounds of
        expiry, liveness, watching, claiming and finishing until nothing changes."""
        for srv in self.servers.values():
            if not srv.up:
                self._start(srv)
            srv.backends, srv.known = srv.initial, True
        for op in list(self.ops):
            while op in self.ops:
                self._step(op)
        for srv in self.servers.values():   # as a person would: paused jobs are resumed
            for job in sorted(j for j, m in srv.jobs.items() if m.paused is not None):
                event("a paused job resumed at the end")
                self._resume(srv, job)
        servers = list(self.servers.values())
        for rounds in range(MAX_ROUNDS):
            before = self._fingerprint()
            self._round()
            for srv in servers:
                self._check(srv)
            if self._fingerprint() == before and not self._timers():
                break
        else:
            raise AssertionError(f"the farm does not settle in {MAX_ROUNDS} rounds:\n" + "\n".join(self._stuck()))
        stuck = self._stuck()
        assert not stuck, f"jobs that never end (after {rounds + 1} rounds):\n" + "\n".join(stuck)
        left = [f"{format_url(srv.name, r[0], r[1])} {r[2]} (job {srv.sched.job(r[0])['state']})"
                for srv in servers for r in srv.conn.execute(
                    "SELECT job_id, frame, state FROM frames WHERE state IN ('waiting','ready','running')")]
        assert not left, "frames that never end, of jobs that did:\n" + "\n".join(left)
        wrong = []
        for srv in servers:
            for r in srv.conn.execute("SELECT * FROM frames WHERE state='failed' ORDER BY job_id, frame"):
                if r["frame"] in srv.jobs[r["job_id"]].bad:
                    continue
                err = r["error"] or ""
                if err.startswith("dependency ") or (err.startswith("cannot be rendered") and "blocklisted" in err):
                    continue
                if err.startswith((BROKEN, EXPIRED)) and r["failures"] >= MAX_FAILURES:
                    continue  # injected faults filled its failure count
                wrong.append(f"{format_url(srv.name, r['job_id'], r['frame'])}: {err!r}")
        assert not wrong, "frames that are not bad failed:\n" + "\n".join(wrong)
        self._events(rounds)

    def _events(self, rounds: int) -> None:
        """What the example went through (pytest --hypothesis-show-statistics)."""
        event(f"settled in {min(rounds + 1, 5)}{'+' if rounds + 1 >= 5 else ''} rounds")
        for srv in self.servers.values():
            c = srv.conn
            for (err,) in c.execute("SELECT error FROM frames WHERE state='failed'"):
                kind = (err or "").split(" (")[0].split(":")[0]
                if kind.startswith("dependency"):
                    kind = "dependency " + err.split()[2]
                    if "unreachable" in err or "not a peer" in err or "does not exist" in err:
                        kind += " (" + ("unreachable" if "unreachable" in err else
                                        "not a peer" if "not a peer" in err else "does not exist") + ")"
                event(f"frame failed: {kind}")
            if c.execute("SELECT 1 FROM blocklist").fetchone():
                event("some renderer blocklisted")
            for job in srv.jobs:
                event(f"job {srv.sched.job(job)['state']}")
        jobs = sum(len(s.jobs) for s in self.servers.values())
        attempts = sum(s.conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] for s in self.servers.values())
        event(f"jobs: {min(jobs, 8)}{'+' if jobs >= 8 else ''}")
        event(f"attempts: {min(attempts // 10 * 10, 50)}{'+' if attempts >= 50 else ''}")

    def teardown(self):
        try:
            if sys.exc_info()[0] is None and self.servers:
                self.settle()
        finally:
            for op in self.ops:
                op.steps.close()
            for srv in self.servers.values():
                self._close(srv)
            shutil.rmtree(self.dir, ignore_errors=True)
            if HAS_STEPS:
                scheduler_module.CHUNK = self.chunk


FarmMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TestFarm = FarmMachine.TestCase

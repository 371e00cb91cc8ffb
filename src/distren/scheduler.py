"""The scheduler: the one owner of every job and frame state change.

Frame states: waiting (for dependencies) -> ready -> running (leased to a renderer, local or
remote) -> done | failed | cancelled. A lease carries an attempt number that fences: only the
result of the current attempt of a running frame is accepted. Every lease, a local slot's too,
has an expiry that its holder renews; a lease that is not renewed expires and the frame is
ready again. No other module writes a state.

Per-frame work does not grow with the job: a waiting frame keeps a counter of the dependencies
not done yet (`deps_left`), which each finishing dependency decrements; a claim looks up one
frame through an index; the jobs table keeps frame counts by state (SQL triggers), so a job's
status is one row. Work that does grow with a job (creating, cancelling, retrying, deleting it)
runs as a series of bounded transactions (`*_steps` generators, `CHUNK` frames each) that the
server interleaves with everything else, so no single transaction holds the database, or the
event loop, for long.

A job's state is derived from its frame counts (and its status), never stored:
queued | running | paused | done | failed | cancelled. A paused job (`jobs.paused`, set and
cleared by a person) has none of its frames leased, to this server's slots or to peers; frames
already running finish and are recorded.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .chunks import JobRenderers
from .errors import BadRequest, Conflict, DistrenError, NotFound
from .job.spec import JobSpec
from .store.blobs import Blob
from .url import MAX_ID, DistrenURL, format_url

FRAME_STATES = ("waiting", "ready", "running", "done", "failed", "cancelled")
TERMINAL = ("done", "failed", "cancelled")
UNFINISHED = ("waiting", "ready", "running")
# Splitting a chunk (split_candidates): the jobs looked at, the running frames read of each,
# and the fewest frames a holder must be rendering for its chunk to be worth splitting.
SPLIT_JOBS = 5
SPLIT_SAMPLE = 200
SPLIT_LEAST = 3
LOG_LIMIT = 256 * 1024
# Interrupted attempts (not the frame's fault: a stop, a drain, a renderer killed from outside)
# do not count against a frame, up to this many per allowed failure; beyond, each counts.
INTERRUPTIONS_PER_FAILURE = 20
# Frames (or dependency rows) handled by one transaction of the long operations.
CHUNK = 2000
# ... of a delete: each deleted output updates its blob's reference count (a keyed update at a
# random place of blob_refs), so fewer frames keep each transaction near 20 ms.
DELETE_CHUNK = 500
# Frames a page of the frame list holds by default, and at most.
PAGE = 1000
MAX_PAGE = 10_000
# A lease names the outputs of the frame's dependencies. Up to this many are read in the claim's
# transaction; a frame with more (an encode frame of a long job) gets them from `depends_of`, in
# a thread (100,000 of them take a second to read).
INLINE_DEPENDS = 256
# Hidden job statuses: a job under intake or being deleted is not shown or served.
HIDDEN = ("intake", "deleting")
# What a paused job's unfinished frames wait for (`waiting_for`).
PAUSED = "the job is paused: resume it to render its frames"


@dataclass(frozen=True)
class Lease:
    """A frame handed to a renderer. `attempt` is the fencing token."""

    job: int
    frame: int
    attempt: int
    backend: str
    settings: dict
    seed_sha256: str
    seed_size: int
    depends: tuple[dict, ...] | None   # {"url", "sha256", "size"} of each dependency's output;
    # None: more than INLINE_DEPENDS, to be read with Scheduler.depends_of
    expires: float | None
    owner: str = ""
    lease_seconds: float | None = None   # as granted by the home server
    timeout: float | None = None         # the job's render timeout, if it sets one
    # a home server's hints to a peer, for choosing a chunk: the job's own <chunk> (None: not
    # set), its count of ready frames when the lease was granted, and the servers rendering it
    chunk: int | None = None
    ready: int | None = None
    servers: int | None = None

    def to_json(self, lease_seconds: float | None) -> dict:
        return {
            "job": self.job, "frame": self.frame, "attempt": self.attempt, "backend": self.backend,
            "settings": self.settings, "seed": {"sha256": self.seed_sha256, "size": self.seed_size},
            "depends": list(self.depends or ()), "lease_seconds": lease_seconds, "timeout": self.timeout,
        }


async def with_depends(sched: "Scheduler", lease: Lease | None) -> Lease | None:
    """The lease with its dependency outputs, read in a thread when the claim left them out."""
    import asyncio
    import dataclasses

    if lease is None or lease.depends is not None:
        return lease
    depends = await asyncio.to_thread(sched.depends_of, lease.job, lease.frame)
    return dataclasses.replace(lease, depends=depends)


def _clip_log(log: str | None) -> str | None:
    if log is not None and len(log) > LOG_LIMIT:
        return "[... log truncated ...]\n" + log[-LOG_LIMIT:]
    return log


def drain(steps: Iterator) -> object:
    """Run a `*_steps` generator to its end in one go; returns its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def is_local(renderer: str) -> bool:
    return renderer.startswith("local:")


class Scheduler:
    def __init__(
        self,
        conn: sqlite3.Connection,
        server: str,
        *,
        max_failures: int = 3,
        block_after: int = 2,
        retry_elsewhere: float = 30.0,
        on_ready: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ):
        self.conn = conn
        self.server = server
        # the database file, for the read-only connections of threads (`_reader`)
        self._path = conn.execute("PRAGMA database_list").fetchone()[2]
        self.max_failures = max_failures
        self.block_after = block_after
        self.retry_elsewhere = retry_elsewhere
        self.on_ready = on_ready
        self.clock = clock
        # What the liveness checker last learnt of the farm (liveness.FarmView); read by
        # waiting_for. None until the first check.
        self.farm = None
        self.renderers = JobRenderers()   # who took frames of each job lately: a chunk-size hint
        # told each single-frame change once committed (job, frame, state, attempt, rendered_by):
        # leased, done, failed, ready again (events.py); bulk changes are not told one by one
        self.on_frame: Callable[[int, int, str, int, str | None], None] | None = None
        self._noted: list[tuple] = []

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._noted.clear()
            raise
        self.conn.execute("COMMIT")
        if self._noted:   # frame changes are told once they are committed
            noted, self._noted = self._noted, []
            if self.on_frame is not None:
                for change in noted:
                    self.on_frame(*change)

    def _note(self, job: int, frame: int, state: str, attempt: int, rendered_by: str | None = None) -> None:
        """A frame's state changed in the current transaction (told to `on_frame` at commit)."""
        if self.on_frame is not None:
            self._noted.append((job, frame, state, attempt, rendered_by))

    # -- intake --------------------------------------------------------------------------
    def begin_job(self) -> int:
        """Reserve a job id for a package under intake. Ids are never reused."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO jobs(name, backend, status, submitted) VALUES ('', '', 'intake', ?)",
                (self.clock(),),
            )
            return cur.lastrowid

    def drop_job(self, job: int) -> None:
        with self._tx() as c:
            self._purge(c, job, "intake")

    def _purge(self, c: sqlite3.Connection, job: int, status: str) -> None:
        if c.execute("SELECT 1 FROM jobs WHERE id=? AND status=?", (job, status)).fetchone() is None:
            return
        self._drop_deps(c, job, -1, MAX_ID)
        for table in ("attempts", "frames", "blocklist"):
            c.execute(f"DELETE FROM {table} WHERE job_id=?", (job,))
        c.execute("DELETE FROM jobs WHERE id=? AND status=?", (job, status))

    def _drop_deps(self, c: sqlite3.Connection, job: int, first: int, last: int) -> None:
        """Delete the dependency rows of frames first..last of a job, and what is known of the
        peers' frames that no other frame here depends on any more (remote_deps: their fetched
        outputs are then no longer referenced, and are reclaimed)."""
        peers_frames = c.execute(
            "SELECT DISTINCT dep_server, dep_job, dep_frame FROM deps WHERE job_id=? AND frame BETWEEN ? AND ?"
            " AND dep_server != ?", (job, first, last, self.server)).fetchall()
        c.execute("DELETE FROM deps WHERE job_id=? AND frame BETWEEN ? AND ?", (job, first, last))
        c.executemany(
            "DELETE FROM remote_deps WHERE server=? AND job=? AND frame=? AND NOT EXISTS"
            " (SELECT 1 FROM deps d WHERE d.dep_server=? AND d.dep_job=? AND d.dep_frame=?)",
            (tuple(r) * 2 for r in peers_frames))

    def activate_job(self, job: int, spec: JobSpec, seed: Blob) -> None:
        drain(self.activate_job_steps(job, spec, seed))

    def activate_job_steps(self, job: int, spec: JobSpec, seed: Blob) -> Iterator[None]:
        """Record a checked job and its frames, in bounded transactions, while the job stays
        hidden ('intake'); then show it. A frame's dependency rows are written before the frame
        itself, and its state is computed from its dependencies' states in the transaction that
        writes it: a dependency that changes later finds the rows and moves the frame on."""
        with self._tx() as c:
            c.execute(
                "UPDATE jobs SET name=?, backend=?, priority=?, settings=?, seed_sha256=?,"
                " seed_size=?, timeout=?, chunk=? WHERE id=? AND status='intake'",
                (spec.name, spec.backend, spec.priority, json.dumps(spec.backends()), seed.sha256, seed.size,
                 spec.timeout, spec.chunk, job),
            )
        batch: list = []
        rows = 0
        for f in spec.frames:
            # a frame's dependency rows first (several transactions for a fan-in frame)
            for i in range(0, len(f.depends), CHUNK):
                part = f.depends[i:i + CHUNK]
                with self._tx() as c:
                    self._insert_deps(c, job, f.id, part)
                yield
            batch.append(f)
            rows += 1 + len(f.depends) // 16
            if rows >= CHUNK:
                with self._tx() as c:
                    self._insert_frames(c, job, spec, batch)
                batch, rows = [], 0
                yield
        with self._tx() as c:
            if batch:
                self._insert_frames(c, job, spec, batch)
            c.execute("UPDATE jobs SET status='active' WHERE id=? AND status='intake'", (job,))
        self.on_ready()

    def _insert_deps(self, c: sqlite3.Connection, job: int, frame: int, deps: list[DistrenURL]) -> None:
        c.executemany(
            "INSERT OR IGNORE INTO deps(job_id, frame, dep_server, dep_job, dep_frame) VALUES (?,?,?,?,?)",
            ((job, frame, d.server, d.job, d.frame) for d in deps),
        )
        remote = [(d.server, d.job, d.frame) for d in deps if d.server != self.server]
        if remote:
            # A peer's frame that was failed or cancelled may have been retried there since:
            # a new dependent asks again. Only 'done' is final.
            c.executemany(
                "INSERT INTO remote_deps(server, job, frame) VALUES (?,?,?) ON CONFLICT(server, job, frame)"
                " DO UPDATE SET state='waiting', error=NULL WHERE state != 'done'",
                remote,
            )

    def _insert_frames(self, c: sqlite3.Connection, job: int, spec: JobSpec, frames: list) -> None:
        now = self.clock()
        failed_here = {r[0] for r in c.execute(
            "SELECT frame FROM frames WHERE job_id=? AND state IN ('failed','cancelled')", (job,))}
        cache: dict[DistrenURL, str | None] = {}
        rows = []
        broken_frames = []
        for f in frames:
            left, broken = 0, None
            for d in f.depends:
                if d.server == self.server and d.job == job:
                    st = "failed" if d.frame in failed_here else "waiting"
                else:
                    if d not in cache:
                        cache[d] = self._dep_state(c, d)
                    st = cache[d]
                if st != "done":
                    left += 1
                    if st in ("failed", "cancelled", None) and broken is None:
                        broken = f"dependency {d} {self._ended_as(c, d.server, d.job, d.frame)}"
            if broken:
                rows.append((job, f.id, spec.frame_backend(f), spec.priority, "failed", left, now, broken))
                broken_frames.append(f.id)
            else:
                rows.append((job, f.id, spec.frame_backend(f), spec.priority, "ready" if left == 0 else "waiting",
                             left, None, None))
        c.executemany(
            "INSERT INTO frames(job_id, frame, backend, priority, state, deps_left, finished, error)"
            " VALUES (?,?,?,?,?,?,?,?)", rows)
        # frames written earlier that wait for a frame failed just now
        self._ripple_failure(c, [(job, f) for f in broken_frames])

    def _dep_state(self, c: sqlite3.Connection, d: DistrenURL) -> str | None:
        """The state of a dependency: a frame here (None: it does not exist, or is hidden), or
        what is known of a peer's frame."""
        if d.server == self.server:
            row = c.execute("SELECT f.state FROM frames f JOIN jobs j ON j.id=f.job_id WHERE f.job_id=?"
                            " AND f.frame=? AND j.status NOT IN ('intake','deleting')", (d.job, d.frame)).fetchone()
        else:
            row = c.execute("SELECT state FROM remote_deps WHERE server=? AND job=? AND frame=?",
                            (d.server, d.job, d.frame)).fetchone()
            if row is None:
                return "waiting"
        return None if row is None else row[0]

    def check_external_deps(self, spec: JobSpec, job: int) -> list[str]:
        """Problems with dependencies on other jobs of this server (unknown job or frame)."""
        problems = []
        seen: set[DistrenURL] = set()
        for f in spec.frames:
            for d in f.depends:
                if d.server == self.server and d.job != job and d not in seen:
                    seen.add(d)
                    if self._dep_state(self.conn, d) is None:
                        problems.append(f"frame {f.id} depends on {d}, which does not exist")
                        if len(problems) >= 10:
                            return problems
        return problems

    def discard_intake(self) -> None:
        """At start-up: drop jobs whose intake a crash interrupted (their client got no 201),
        and finish deletions a crash interrupted."""
        with self._tx() as c:
            for status in HIDDEN:
                for (job,) in c.execute("SELECT id FROM jobs WHERE status=?", (status,)).fetchall():
                    self._purge(c, job, status)

    # -- dependencies ----------------------------------------------------------------------
    def _dependents(self, c: sqlite3.Connection, job: int, frame: int, server: str | None = None) -> list[tuple[int, int]]:
        rows = c.execute(
            "SELECT job_id, frame FROM deps WHERE dep_server=? AND dep_job=? AND dep_frame=?",
            (server or self.server, job, frame),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def awaited(self, job: int, frames: list[int]) -> set[int]:
        """Those of `frames` (of this server's `job`) that a waiting frame here depends on: an
        index look-up each."""
        c = self.conn
        return {f for f in frames if c.execute(
            "SELECT 1 FROM deps d JOIN frames w ON w.job_id=d.job_id AND w.frame=d.frame"
            " WHERE d.dep_server=? AND d.dep_job=? AND d.dep_frame=? AND w.state='waiting' LIMIT 1",
            (self.server, job, f)).fetchone() is not None}

    def _dependency_done(self, c: sqlite3.Connection, server: str, job: int, frame: int) -> None:
        """One dependency finished: its waiting dependents count down; at zero they are ready."""
        for dj, df in self._dependents(c, job, frame, server):
            c.execute(
                "UPDATE frames SET deps_left=deps_left-1,"
                " state=CASE WHEN deps_left<=1 THEN 'ready' ELSE state END"
                " WHERE job_id=? AND frame=? AND state='waiting' AND deps_left > 0",
                (dj, df),
            )

    def _ripple_failure(self, c: sqlite3.Connection, frames: list[tuple[int, int]], server: str | None = None,
                        skip_job: int | None = None) -> None:
        """These frames failed or were cancelled: the frames waiting for them fail, and so on
        (except in `skip_job`, a job being cancelled whole)."""
        now = self.clock()
        work = [(server or self.server, j, f) for j, f in frames]
        while work:
            srv, job, frame = work.pop()
            url = format_url(srv, job, frame)
            for dj, df in self._dependents(c, job, frame, srv):
                if dj == skip_job:
                    continue
                row = c.execute("SELECT state, error FROM frames WHERE job_id=? AND frame=?", (dj, df)).fetchone()
                if row is None or row[0] != "waiting":
                    continue
                c.execute("UPDATE frames SET state='failed', finished=?, error=? WHERE job_id=? AND frame=?",
                          (now, f"dependency {url} {self._ended_as(c, srv, job, frame)}", dj, df))
                work.append((self.server, dj, df))

    def _ended_as(self, c: sqlite3.Connection, server: str, job: int, frame: int) -> str:
        if server == self.server:   # (a frame of a job being deleted is as good as deleted)
            row = c.execute("SELECT f.state FROM frames f JOIN jobs j ON j.id=f.job_id WHERE f.job_id=?"
                            " AND f.frame=? AND j.status != 'deleting'", (job, frame)).fetchone()
        else:
            row = c.execute("SELECT state, error FROM remote_deps WHERE server=? AND job=? AND frame=?",
                            (server, job, frame)).fetchone()
            if row and row[1]:
                return f"{row[0]} ({row[1]})"
        return row[0] if row else "deleted"

    # -- leases --------------------------------------------------------------------------
    def claim(self, owner: str, backends: Iterable[str], lease_seconds: float | None = None) -> Lease | None:
        """Lease the best ready frame (highest priority, oldest job, lowest frame id) of a
        backend the renderer has, or None; frames of paused jobs are not leased. A frame whose
        last attempt failed on this renderer is not given back to it for `retry_elsewhere`
        seconds (another renderer gets a go)."""
        names = sorted(set(backends))
        if not names:
            return None
        now = self.clock()
        with self._tx() as c:
            jobs = c.execute(
                "SELECT id FROM jobs WHERE status='active' AND paused=0 AND n_ready > 0"
                " AND NOT EXISTS (SELECT 1 FROM blocklist b WHERE b.job_id=jobs.id AND b.renderer=?)"
                " ORDER BY priority DESC, id", (owner,)).fetchall()
            row = None
            for (job,) in jobs:
                best = None
                for backend in names:
                    r = c.execute(
                        "SELECT job_id, frame, attempts, backend FROM frames"
                        " WHERE job_id=? AND state='ready' AND backend=?"
                        " AND (avoid IS NULL OR avoid != ? OR avoid_until <= ?)"
                        " ORDER BY frame LIMIT 1", (job, backend, owner, now)).fetchone()
                    if r is not None and (best is None or r[1] < best[1]):
                        best = r
                if best is not None:
                    row = best
                    break
            if row is None:
                return None
            return self._lease(c, row[0], row[1], row[2] + 1, row["backend"], owner, lease_seconds, now)

    def _lease(self, c: sqlite3.Connection, job: int, frame: int, attempt: int, backend: str, owner: str,
               lease_seconds: float | None, now: float) -> Lease:
        """Lease a ready frame (inside the caller's transaction)."""
        expires = now + lease_seconds if lease_seconds else None
        c.execute(
            "UPDATE frames SET state='running', attempts=?, lease_owner=?, lease_expires=?,"
            " started=COALESCE(started, ?), error=NULL, upload_sha256=NULL, upload_size=NULL"
            " WHERE job_id=? AND frame=?",
            (attempt, owner, expires, now, job, frame),
        )
        self._note(job, frame, "running", attempt)
        self.renderers.seen(job, owner, now)
        c.execute(
            "INSERT INTO attempts(job_id, frame, attempt, renderer, started) VALUES (?,?,?,?,?)",
            (job, frame, attempt, owner, now),
        )
        jrow = c.execute(
            "SELECT settings, seed_sha256, seed_size, timeout FROM jobs WHERE id=?", (job,)
        ).fetchone()
        many = len(c.execute("SELECT 1 FROM deps WHERE job_id=? AND frame=? LIMIT ?",
                             (job, frame, INLINE_DEPENDS + 1)).fetchall()) > INLINE_DEPENDS
        deps = None if many else self._depends(c, job, frame)
        return Lease(
            job=job, frame=frame, attempt=attempt, backend=backend,
            settings=json.loads(jrow["settings"])[backend], seed_sha256=jrow["seed_sha256"],
            seed_size=jrow["seed_size"], depends=deps, expires=expires, owner=owner,
            lease_seconds=lease_seconds, timeout=jrow["timeout"],
        )

    def chunk_request(self, job: int) -> tuple[int | None, int, int]:
        """The job's own chunk size (<chunk>, or None), its count of ready frames, and how many
        servers render it now (chunks.JobRenderers)."""
        row = self.conn.execute("SELECT chunk, n_ready FROM jobs WHERE id=?", (job,)).fetchone()
        servers = self.renderers.count(job, self.clock())
        return (None, 0, servers) if row is None else (row[0], row[1], servers)

    def claim_more(self, first: Lease, limit: int) -> list[Lease]:
        """Up to `limit` more frames for the renderer that holds `first`, to render with it as
        one chunk (one renderer process): the frame ids right after it, consecutive, of the same
        job and backend, ready, never failed, and not kept from this renderer (retry elsewhere);
        none when the job is paused. Each gets its own attempt number and lease: fencing, heartbeats and results stay per
        frame. A frame that has failed before (the first one too) renders alone. One index
        range of at most `limit` rows: the cost does not grow with the job."""
        if limit <= 0:
            return []
        now = self.clock()
        out: list[Lease] = []
        with self._tx() as c:
            row = c.execute("SELECT failures, state, attempts, lease_owner FROM frames WHERE job_id=? AND frame=?",
                            (first.job, first.frame)).fetchone()
            if row is None or row[0] or (row[1], row[2], row[3]) != ("running", first.attempt, first.owner):
                return []
            if c.execute("SELECT paused FROM jobs WHERE id=?", (first.job,)).fetchone()[0]:
                return []
            rows = c.execute(
                "SELECT frame, attempts FROM frames WHERE job_id=? AND state='ready' AND backend=?"
                " AND frame > ? AND frame <= ? AND failures=0"
                " AND (avoid IS NULL OR avoid != ? OR avoid_until <= ?) ORDER BY frame",
                (first.job, first.backend, first.frame, first.frame + limit, first.owner, now)).fetchall()
            for n, r in enumerate(rows):
                if r[0] != first.frame + 1 + n:
                    break  # consecutive frames only (one renderer run renders a range)
                out.append(self._lease(c, first.job, r[0], r[1] + 1, first.backend, first.owner,
                                       first.lease_seconds, now))
        return out

    def claim_more_for(self, job: int, frame: int, attempt: int, owner: str, limit: int,
                       lease_seconds: float) -> list[Lease]:
        """`claim_more` for a peer that holds attempt `attempt` of the frame (its chunk): the
        frames after it, leased to the same owner. Conflict when that lease is not current."""
        with self._tx() as c:
            self._running(c, job, frame, attempt, owner)
            backend = c.execute("SELECT backend FROM frames WHERE job_id=? AND frame=?", (job, frame)).fetchone()[0]
        first = Lease(job, frame, attempt, backend, {}, "", 0, (), None, owner, lease_seconds)
        return self.claim_more(first, limit)

    def release(self, job: int, frames: list[tuple[int, int]], owner: str) -> list[int]:
        """The holder of a chunk gives back frames of it that it has not started (`(frame,
        attempt)` each; chunks.py, "Splitting a chunk"): they are ready again at once, for
        another renderer. Not a failure and not an interruption (the attempt ends `released`,
        which nothing counts). A frame whose lease is no longer `owner`'s is skipped; one that
        `owner` gave back already under that attempt is counted as released again (the holder
        may ask again when an answer was lost). Returns the frames released."""
        done: list[int] = []
        again: list[int] = []
        with self._tx() as c:
            for frame, attempt in frames:
                try:
                    self._running(c, job, frame, attempt, owner)
                except (Conflict, NotFound):
                    if c.execute("SELECT 1 FROM attempts WHERE job_id=? AND frame=? AND attempt=? AND renderer=?"
                                 " AND outcome='released'", (job, frame, attempt, owner)).fetchone():
                        again.append(frame)
                    continue
                c.execute("UPDATE frames SET state='ready', lease_owner=NULL, lease_expires=NULL,"
                          " upload_sha256=NULL, upload_size=NULL WHERE job_id=? AND frame=?", (job, frame))
                self._end_attempt(c, job, frame, attempt, "released", None)
                self._note(job, frame, "ready", attempt)
                done.append(frame)
        if done:
            self.on_ready()
        return sorted(done + again)

    def split_candidates(self, claimer: str, backends: Iterable[str], *, jobs: int = SPLIT_JOBS,
                         sample: int = SPLIT_SAMPLE, least: int = SPLIT_LEAST) -> list[tuple[int, str]]:
        """`claimer` found nothing to lease: the jobs it could render that have no ready frame
        but frames running in chunks of the size distren chose (a job's own `<chunk>` is kept
        whole), and who holds those chunks, as `(job, holder)` (at most
        two holders a job, those holding most first; `claimer` itself only when it is one of
        this server's own slots, which render side by side; never a render-only worker, which
        cannot be asked). Bounded whatever the job's size or
        the farm's: at most `jobs` jobs, and of each the `sample` highest running frames (the
        latest chunks)."""
        names = sorted(set(backends))
        if not names:
            return []
        out: list[tuple[int, str]] = []
        marks = ",".join("?" * len(names))
        for (job,) in self.conn.execute(
                "SELECT id FROM jobs WHERE status='active' AND paused=0 AND n_ready=0 AND n_running>=?"
                " AND chunk IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM blocklist b WHERE b.job_id=jobs.id AND b.renderer=?)"
                f" AND EXISTS (SELECT 1 FROM frames f WHERE f.job_id=jobs.id AND f.state='running' AND f.backend IN ({marks}))"
                " ORDER BY priority DESC, id LIMIT ?", (least, claimer, *names, jobs)).fetchall():
            counts: dict[str, int] = {}
            for backend in names:
                for (owner,) in self.conn.execute(
                        "SELECT lease_owner FROM frames WHERE job_id=? AND state='running' AND backend=?"
                        " ORDER BY frame DESC LIMIT ?", (job, backend, sample)):
                    # (a render-only worker serves no requests: it cannot be asked to split)
                    if owner and (owner != claimer or is_local(owner)) and not owner.startswith("worker:"):
                        counts[owner] = counts.get(owner, 0) + 1
            holders = sorted((n, owner) for owner, n in counts.items() if n >= least)[::-1][:2]
            out += [(job, owner) for _, owner in holders]
        return out

    def _depends(self, c: sqlite3.Connection, job: int, frame: int) -> tuple[dict, ...]:
        return tuple({"url": format_url(r[0], r[1], r[2]), "sha256": r["sha256"], "size": r["size"]}
                     for r in self._deps(c, job, frame))

    def _reader(self) -> sqlite3.Connection:
        """A connection of its own to the database, for reads in a thread (off the event loop,
        never touching the server's connection)."""
        conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def depends_of(self, job: int, frame: int) -> tuple[dict, ...]:
        """The dependency outputs of a leased frame, read on a connection of its own: safe in a
        thread, off the event loop. (A ready frame's dependencies are done, and done is final:
        no transaction is needed to read them consistently.)"""
        conn = self._reader()
        try:
            return self._depends(conn, job, frame)
        finally:
            conn.close()

    def _deps(self, c: sqlite3.Connection, job: int, frame: int, limit: int = -1) -> list[sqlite3.Row]:
        """A frame's dependencies: url, state and output, for frames here and on peers. A frame
        here whose job is being deleted has no state (None, as a deleted one): a retry that
        runs while the delete does must not count it as a dependency still to come."""
        return c.execute(
            "SELECT d.dep_server, d.dep_job, d.dep_frame,"
            " CASE WHEN d.dep_server=? THEN (CASE WHEN j.status='deleting' THEN NULL ELSE f.state END)"
            " ELSE r.state END AS state,"
            " CASE WHEN d.dep_server=? THEN f.output_sha256 ELSE r.output_sha256 END AS sha256,"
            " CASE WHEN d.dep_server=? THEN f.output_size ELSE r.output_size END AS size"
            " FROM deps d"
            " LEFT JOIN frames f ON d.dep_server=? AND f.job_id=d.dep_job AND f.frame=d.dep_frame"
            " LEFT JOIN jobs j ON d.dep_server=? AND j.id=d.dep_job"
            " LEFT JOIN remote_deps r ON r.server=d.dep_server AND r.job=d.dep_job AND r.frame=d.dep_frame"
            " WHERE d.job_id=? AND d.frame=? ORDER BY d.dep_server, d.dep_job, d.dep_frame LIMIT ?",
            (self.server, self.server, self.server, self.server, self.server, job, frame, limit),
        ).fetchall()

    def _running(self, c: sqlite3.Connection, job: int, frame: int, attempt: int, owner: str | None = None) -> sqlite3.Row:
        row = c.execute(
            "SELECT state, attempts, failures, lease_owner, upload_sha256, upload_size FROM frames"
            " WHERE job_id=? AND frame=?",
            (job, frame),
        ).fetchone()
        if row is None:
            raise NotFound(f"no frame {format_url(self.server, job, frame)}")
        if row["state"] != "running" or row["attempts"] != attempt or (owner and row["lease_owner"] != owner):
            raise Conflict(
                f"attempt {attempt} of {format_url(self.server, job, frame)} is not current"
                f" (frame is {row['state']}, attempt {row['attempts']})"
            )
        return row

    def record_upload(self, job: int, frame: int, attempt: int, owner: str, output: Blob) -> None:
        """A peer uploaded the output of its current attempt (it reports complete next)."""
        with self._tx() as c:
            self._running(c, job, frame, attempt, owner)
            c.execute("UPDATE frames SET upload_sha256=?, upload_size=? WHERE job_id=? AND frame=?",
                      (output.sha256, output.size, job, frame))

    def uploaded(self, job: int, frame: int, attempt: int, owner: str) -> Blob | None:
        row = self._running(self.conn, job, frame, attempt, owner)
        return Blob(row["upload_sha256"], row["upload_size"]) if row["upload_sha256"] else None

    def complete(
        self, job: int, frame: int, attempt: int, output: Blob, rendered_by: str, log: str, owner: str | None = None
    ) -> None:
        """Record a frame's output. Raises Conflict for a superseded or expired attempt."""
        (refused,) = self.complete_many([(job, frame, attempt, output, log)], rendered_by, owner)
        if refused is not None:
            raise refused

    def complete_many(
        self, results: list[tuple[int, int, int, Blob, str]], rendered_by: str, owner: str | None = None
    ) -> list[DistrenError | None]:
        """Record the outputs of several frames (a chunk's: `(job, frame, attempt, output, log)`
        each) in one transaction. A frame whose attempt is no longer current (Conflict) or whose
        job is gone (NotFound) is left as it is and does not hold the others back: its error is
        returned in its place, None for each frame recorded."""
        now = self.clock()
        outcome: list[DistrenError | None] = []
        with self._tx() as c:
            for job, frame, attempt, output, log in results:
                try:
                    row = self._running(c, job, frame, attempt, owner)
                except (Conflict, NotFound) as exc:   # nothing written for this frame yet
                    outcome.append(exc)
                    continue
                c.execute(
                    "UPDATE frames SET state='done', finished=?, output_sha256=?, output_size=?, rendered_by=?,"
                    " lease_owner=NULL, lease_expires=NULL, upload_sha256=NULL, upload_size=NULL, avoid=NULL,"
                    " avoid_until=NULL WHERE job_id=? AND frame=?",
                    (now, output.sha256, output.size, rendered_by, job, frame),
                )
                self._end_attempt(c, job, frame, attempt, "done", log)
                self._note(job, frame, "done", attempt, rendered_by)
                if row["failures"]:
                    self._strike(c, job, frame, rendered_by)
                self._dependency_done(c, self.server, job, frame)
                outcome.append(None)
        if any(one is None for one in outcome):
            self.on_ready()
        return outcome

    def _strike(self, c: sqlite3.Connection, job: int, frame: int, rendered_by: str) -> None:
        """The frame rendered here after failing on other peers: that was those peers' fault.
        A peer with `block_after` such frames in a job gets no more of its frames (until a
        retry). A frame that fails everywhere is the frame's fault and strikes nobody; this
        server's own slots are never blocked (the job must still run or fail somewhere)."""
        for (renderer,) in c.execute(
            # (+ keeps the planner on the primary key: this frame's attempts, not the job's)
            "SELECT DISTINCT renderer FROM attempts WHERE job_id=? AND frame=? AND +outcome='failed'"
            " AND +renderer != ?", (job, frame, rendered_by)).fetchall():
            if is_local(renderer):
                continue
            strikes = c.execute(
                "SELECT COUNT(DISTINCT a.frame) FROM attempts a JOIN frames f ON f.job_id=a.job_id"
                " AND f.frame=a.frame WHERE a.job_id=? AND a.renderer=? AND a.outcome='failed'"
                " AND f.state='done' AND f.rendered_by != ?", (job, renderer, renderer)).fetchone()[0]
            if strikes >= self.block_after:
                c.execute("INSERT OR IGNORE INTO blocklist(job_id, renderer, since) VALUES (?,?,?)",
                          (job, renderer, self.clock()))

    def fail(
        self, job: int, frame: int, attempt: int, log: str, error: str, *, counts: bool = True,
        owner: str | None = None, outcome: str | None = None,
    ) -> str:
        """Record a failed attempt. The frame is ready again until it has failed
        `max_failures` times; then it is failed, and so are the frames waiting for it.
        `counts=False` for attempts that were interrupted through no fault of the frame.
        Returns the frame's new state."""
        now = self.clock()
        with self._tx() as c:
            row = self._running(c, job, frame, attempt, owner)
            renderer = row["lease_owner"] or ""
            if not counts and self._interruptions(c, job, frame) + 1 >= self.max_failures * INTERRUPTIONS_PER_FAILURE:
                # liveness: a frame whose renders are always stopped from outside (a renderer
                # that exits as if killed by SIGTERM each time) must still end
                counts, outcome = True, outcome or "failed"
                error = (f"{error}; interrupted {self.max_failures * INTERRUPTIONS_PER_FAILURE} times, which now counts"
                         " as a failure")
            failures = c.execute(
                "SELECT failures FROM frames WHERE job_id=? AND frame=?", (job, frame)
            ).fetchone()[0] + (1 if counts else 0)
            state = "failed" if failures >= self.max_failures else "ready"
            # an expired lease says nothing of the renderer (it crashed, or lost the network)
            avoid = renderer if counts and outcome is None and not is_local(renderer) else None
            c.execute(
                "UPDATE frames SET state=?, failures=?, error=?, lease_owner=NULL, lease_expires=NULL,"
                " upload_sha256=NULL, upload_size=NULL, avoid=?, avoid_until=?,"
                " finished=CASE WHEN ?='failed' THEN ? ELSE NULL END WHERE job_id=? AND frame=?",
                (state, failures, error, avoid, now + self.retry_elsewhere if avoid else None,
                 state, now, job, frame),
            )
            self._end_attempt(c, job, frame, attempt, outcome or ("failed" if counts else "interrupted"), log)
            self._note(job, frame, state, attempt)
            if state == "failed":
                self._ripple_failure(c, [(job, frame)])
        if state == "ready":
            self.on_ready()
        return state

    @staticmethod
    def _interruptions(c: sqlite3.Connection, job: int, frame: int) -> int:
        """The frame's attempts that ended interrupted (bounded: the cap stops counting)."""
        return c.execute("SELECT COUNT(*) FROM attempts WHERE job_id=? AND frame=? AND outcome='interrupted'",
                         (job, frame)).fetchone()[0]

    def _end_attempt(self, c: sqlite3.Connection, job: int, frame: int, attempt: int, outcome: str, log: str | None) -> None:
        c.execute(
            "UPDATE attempts SET finished=?, outcome=?, log=? WHERE job_id=? AND frame=? AND attempt=?",
            (self.clock(), outcome, _clip_log(log), job, frame, attempt),
        )

    def heartbeat(self, job: int, frame: int, attempt: int, owner: str, lease_seconds: float) -> float:
        """Extend a lease; Conflict when it is no longer this renderer's. Returns the expiry."""
        expires = self.clock() + lease_seconds
        with self._tx() as c:
            self._running(c, job, frame, attempt, owner)
            c.execute("UPDATE frames SET lease_expires=? WHERE job_id=? AND frame=?", (expires, job, frame))
        self.renderers.seen(job, owner, expires - lease_seconds)
        return expires

    def pending_remote_deps(self) -> list[tuple[str, int, int]]:
        """Frames on peers that waiting frames here depend on, not yet known done or failed."""
        rows = self.conn.execute(
            "SELECT r.server, r.job, r.frame FROM remote_deps r WHERE r.state='waiting' AND EXISTS"
            " (SELECT 1 FROM deps d JOIN frames f ON f.job_id=d.job_id AND f.frame=d.frame"
            " WHERE d.dep_server=r.server AND d.dep_job=r.job AND d.dep_frame=r.frame AND f.state='waiting')"
            " ORDER BY r.server, r.job, r.frame"
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def set_remote_dep(self, server: str, job: int, frame: int, state: str, output: Blob | None = None,
                       error: str | None = None) -> None:
        """What a peer reported of a frame that frames here depend on: 'done' (with its output,
        already in the blob store), 'failed' or 'cancelled'; dependents move on."""
        with self._tx() as c:
            row = c.execute("SELECT state FROM remote_deps WHERE server=? AND job=? AND frame=?",
                            (server, job, frame)).fetchone()
            if row is None or row[0] == "done":
                return  # done is final; an unknown row has no dependents
            c.execute(
                "UPDATE remote_deps SET state=?, output_sha256=?, output_size=?, error=?, checked=?"
                " WHERE server=? AND job=? AND frame=?",
                (state, output.sha256 if output else None, output.size if output else None, error,
                 self.clock(), server, job, frame),
            )
            if state == "done":
                self._dependency_done(c, server, job, frame)
            else:
                self._ripple_failure(c, [(job, frame)], server)
        self.on_ready()

    def recover(self, owner: str) -> int:
        """At start-up: frames leased to this server's own slots (under this name or an earlier
        one of the same data folder) were interrupted by the stop; they are ready again (the
        attempt does not count as a failure)."""
        rows = self.conn.execute(
            "SELECT job_id, frame, attempts FROM frames WHERE state='running' AND lease_owner LIKE 'local:%'"
        ).fetchall()
        for r in rows:
            self.fail(r[0], r[1], r[2], "", "interrupted by a server restart", counts=False)
        return len(rows)

    def expire_leases(self) -> int:
        """Leases past their expiry: the frame is ready again (a counted failure of the frame,
        not a strike against the renderer: it may have crashed or lost the network)."""
        rows = self.conn.execute(
            "SELECT job_id, frame, attempts FROM frames WHERE state='running'"
            " AND lease_expires IS NOT NULL AND lease_expires < ?",
            (self.clock(),),
        ).fetchall()
        n = 0
        for r in rows:
            try:
                self.fail(r[0], r[1], r[2], "", "lease expired", outcome="expired")
                n += 1
            except Conflict:
                pass  # renewed or finished meanwhile
        return n

    def fail_ready(self, job: int, backend: str, error: str) -> Iterator[None]:
        """Fail the ready frames of one backend of a job that no renderer can take any more
        (liveness.py decides), in bounded transactions."""
        now = self.clock()
        while True:
            with self._tx() as c:
                frames = [r[0] for r in c.execute(
                    "SELECT frame FROM frames WHERE job_id=? AND state='ready' AND backend=? ORDER BY frame LIMIT ?",
                    (job, backend, CHUNK))]
                c.executemany("UPDATE frames SET state='failed', finished=?, error=? WHERE job_id=? AND frame=?",
                              ((now, error, job, f) for f in frames))
                self._ripple_failure(c, [(job, f) for f in frames])
            if len(frames) < CHUNK:
                return
            yield

    # -- job actions -----------------------------------------------------------------------
    def set_priority(self, job: int, priority: int) -> None:
        """Change a job's priority (-1000..1000, as <priority>); the next claim orders by it."""
        if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
            raise BadRequest(f"priority must be a whole number from -1000 to 1000, not {json.dumps(priority, default=str)}")
        self._job_row(job)
        with self._tx() as c:
            c.execute("UPDATE jobs SET priority=? WHERE id=?", (priority, job))

    def pause(self, job: int) -> None:
        """Pause a job: none of its frames is leased any more (by this server's slots, peers'
        claims or chunks); frames already running finish and are recorded. Persisted; ended by
        `resume`. Cancel, retry and delete work on a paused job as on any other (a retried
        paused job stays paused)."""
        self._job_row(job)
        with self._tx() as c:
            c.execute("UPDATE jobs SET paused=1 WHERE id=?", (job,))

    def resume(self, job: int) -> None:
        """End a pause: the job's ready frames are leased again."""
        self._job_row(job)
        with self._tx() as c:
            c.execute("UPDATE jobs SET paused=0 WHERE id=?", (job,))
        self.on_ready()

    def cancel(self, job: int) -> list[tuple[int, int, int]]:
        return drain(self.cancel_steps(job))  # type: ignore[return-value]

    def cancel_steps(self, job: int) -> Iterator[None]:
        """Cancel a job: no frame of it starts any more; unfinished frames are cancelled (in
        bounded transactions); frames of other jobs waiting for them fail. Returns the
        (job, frame, attempt) leases that were running, for the runner to kill."""
        self._job_row(job)
        now = self.clock()
        with self._tx() as c:
            c.execute("UPDATE jobs SET status='cancelled', pending='cancel' WHERE id=?", (job,))
            running = [(job, r[0], r[1]) for r in c.execute(
                "SELECT frame, attempts FROM frames WHERE job_id=? AND state='running'", (job,))]
            for _, frame, attempt in running:
                self._end_attempt(c, job, frame, attempt, "cancelled", None)
            c.execute("UPDATE frames SET state='cancelled', finished=?, lease_owner=NULL, lease_expires=NULL,"
                      " upload_sha256=NULL, upload_size=NULL WHERE job_id=? AND state='running'", (now, job))
            self._ripple_failure(c, [(job, f) for _, f, _ in running], skip_job=job)
        yield
        def cancel_chunk(c: sqlite3.Connection, frames: list[int]) -> None:
            # only the frames this cancels: a done frame's dependents must not fail
            ending = [r[0] for r in c.execute(
                "SELECT frame FROM frames WHERE job_id=? AND frame BETWEEN ? AND ?"
                " AND state IN ('waiting','ready','running')", (job, frames[0], frames[-1]))]
            c.executemany(
                "UPDATE frames SET state='cancelled', finished=?, lease_owner=NULL, lease_expires=NULL,"
                " upload_sha256=NULL, upload_size=NULL WHERE job_id=? AND frame=?",
                ((now, job, f) for f in ending))
            # frames of other jobs that wait for these fail (also jobs submitted since the
            # cancel began: looked up per chunk)
            self._ripple_failure(c, [(job, f) for f in ending], skip_job=job)

        yield from self._in_chunks(job, cancel_chunk)
        self._done_pending(job, "cancel")
        return running

    def _done_pending(self, job: int, op: str) -> None:
        self.conn.execute("UPDATE jobs SET pending=NULL WHERE id=? AND pending=?", (job, op))

    def resume_steps(self) -> Iterator[None]:
        """At start-up: finish the cancels and retries that a stop interrupted between their
        transactions (each is safe to run again from the start). Returns the jobs resumed."""
        jobs = self.conn.execute("SELECT id, pending FROM jobs WHERE pending IS NOT NULL"
                                 " AND status NOT IN ('intake','deleting') ORDER BY id").fetchall()
        for job, op in jobs:
            yield from (self.cancel_steps(job) if op == "cancel" else self.retry_steps(job))
        return [r[0] for r in jobs]

    def _in_chunks(self, job: int, action: Callable[[sqlite3.Connection, list[int]], int | None],
                   size: int = CHUNK) -> Iterator[None]:
        """Call `action(c, frames)` for the job's frames in id order, `size` of them per
        transaction (`frames` is sorted: actions may work on the range frames[0]..frames[-1]).
        Returns the sum of what the actions return."""
        after, total = -1, 0
        while True:
            with self._tx() as c:
                frames = [r[0] for r in c.execute(
                    "SELECT frame FROM frames WHERE job_id=? AND frame > ? ORDER BY frame LIMIT ?",
                    (job, after, size))]
                if frames:
                    total += action(c, frames) or 0
                    after = frames[-1]
            if len(frames) < size:
                return total
            yield

    def retry(self, job: int) -> int:
        return drain(self.retry_steps(job))  # type: ignore[return-value]

    def retry_steps(self, job: int) -> Iterator[None]:
        """Requeue a job's failed and cancelled frames (and lift a cancel), in bounded
        transactions. Returns how many. First the frames wait again, then each one's
        dependency counter is counted afresh from its dependencies' states."""
        self._job_row(job)
        with self._tx() as c:
            c.execute("UPDATE jobs SET status='active', pending='retry', bundle_sha256=NULL, bundle_key=NULL"
                      " WHERE id=?", (job,))
            c.execute("DELETE FROM blocklist WHERE job_id=?", (job,))
            # frames on peers that failed may have been retried there: ask again
            c.execute(
                "UPDATE remote_deps SET state='waiting', error=NULL WHERE state != 'done' AND EXISTS"
                " (SELECT 1 FROM deps d WHERE d.job_id=? AND d.dep_server=remote_deps.server"
                " AND d.dep_job=remote_deps.job AND d.dep_frame=remote_deps.frame)",
                (job,),
            )
        yield
        def requeue_chunk(c: sqlite3.Connection, frames: list[int]) -> int:
            # frames without dependencies are ready at once; the others are counted below
            return c.execute(
                "UPDATE frames SET failures=0, error=NULL, finished=NULL, avoid=NULL, avoid_until=NULL,"
                " deps_left=CASE WHEN EXISTS (SELECT 1 FROM deps d WHERE d.job_id=frames.job_id"
                " AND d.frame=frames.frame) THEN -1 ELSE 0 END,"
                " state=CASE WHEN EXISTS (SELECT 1 FROM deps d WHERE d.job_id=frames.job_id"
                " AND d.frame=frames.frame) THEN 'waiting' ELSE 'ready' END"
                " WHERE job_id=? AND frame BETWEEN ? AND ? AND state IN ('failed','cancelled')",
                (job, frames[0], frames[-1])).rowcount

        count = yield from self._in_chunks(job, requeue_chunk)
        # deps_left = -1 marks the requeued frames whose counter is to be counted
        while True:
            with self._tx() as c:
                frames = [r[0] for r in c.execute(
                    "SELECT frame FROM frames WHERE job_id=? AND state='waiting' AND deps_left < 0"
                    " ORDER BY frame LIMIT ?", (job, CHUNK // 10))]
                broken = []
                for frame in frames:
                    left, why = 0, None
                    for r in self._deps(c, job, frame):
                        st = r["state"]
                        if st != "done":
                            left += 1
                            if st in ("failed", "cancelled", None) and why is None:
                                why = f"dependency {format_url(r[0], r[1], r[2])} {self._ended_as(c, r[0], r[1], r[2])}"
                    if why:
                        c.execute("UPDATE frames SET state='failed', deps_left=?, finished=?, error=?"
                                  " WHERE job_id=? AND frame=?", (left, self.clock(), why, job, frame))
                        broken.append((job, frame))
                    else:
                        c.execute("UPDATE frames SET deps_left=?, state=? WHERE job_id=? AND frame=?",
                                  (left, "ready" if left == 0 else "waiting", job, frame))
                self._ripple_failure(c, broken)
            if len(frames) < CHUNK // 10:
                break
            yield
        self._done_pending(job, "retry")
        self.on_ready()
        return count

    def delete(self, job: int) -> list[tuple[int, int, int]]:
        return drain(self.delete_steps(job))  # type: ignore[return-value]

    def delete_steps(self, job: int) -> Iterator[None]:
        """Forget a job (its id is never handed out again), in bounded transactions; hidden
        from the first. Refused while unfinished frames of other jobs wait for it. Returns its
        running leases, for the runner to kill."""
        self._job_row(job)
        waiting = self.conn.execute(
            "SELECT d.job_id, d.frame FROM deps d JOIN frames f ON f.job_id=d.job_id AND f.frame=d.frame"
            " WHERE d.dep_server=? AND d.dep_job=? AND d.job_id != ? AND f.state IN ('waiting','ready','running')"
            " LIMIT 1",
            (self.server, job, job),
        ).fetchone()
        if waiting is not None:
            raise Conflict(
                f"{format_url(self.server, waiting[0], waiting[1])} waits for job {format_url(self.server, job)};"
                " cancel or delete that job first"
            )
        with self._tx() as c:
            running = [(job, r[0], r[1]) for r in c.execute(
                "SELECT frame, attempts FROM frames WHERE job_id=? AND state='running'", (job,))]
            c.execute("UPDATE jobs SET status='deleting' WHERE id=?", (job,))
        yield
        def delete_chunk(c: sqlite3.Connection, frames: list[int]) -> None:
            # (the triggers of blob_refs drop the references of the frames' outputs)
            self._drop_deps(c, job, frames[0], frames[-1])
            for table in ("attempts", "frames"):
                c.execute(f"DELETE FROM {table} WHERE job_id=? AND frame BETWEEN ? AND ?",
                          (job, frames[0], frames[-1]))

        yield from self._in_chunks(job, delete_chunk, DELETE_CHUNK)
        with self._tx() as c:
            self._purge(c, job, "deleting")
        return running

    # -- queries -------------------------------------------------------------------------
    def finished_before(self, when: float, limit: int = 100, after: int = 0) -> list[int]:
        """Jobs after id `after` whose every frame ended (done, failed or cancelled) before
        `when`, oldest first, with no operation under way (--keep-finished deletes them; it
        pages on with `after` past jobs that others wait for)."""
        rows = self.conn.execute(
            "SELECT id FROM jobs WHERE id > ? AND status IN ('active','cancelled') AND pending IS NULL"
            " AND n_waiting + n_ready + n_running = 0 AND COALESCE(finished, submitted) < ? ORDER BY id LIMIT ?",
            (after, when, limit)).fetchall()
        return [r[0] for r in rows]

    def ready_backends(self) -> set[str]:
        """The backends of the active jobs, not paused, that have ready frames (one row per job)."""
        out: set[str] = set()
        for (settings,) in self.conn.execute("SELECT settings FROM jobs WHERE status='active' AND paused=0"
                                             " AND n_ready > 0"):
            out.update(json.loads(settings))
        return out

    def ready_count(self, backends: Iterable[str], limit: int) -> int:
        """Ready frames of these backends in active jobs that are not paused, counted up to
        `limit` (one index range per job: cheap however large the queue; the Slurm executor
        asks it every poll)."""
        names = sorted(set(backends))
        if not names or limit <= 0:
            return 0
        marks = ",".join("?" * len(names))
        return self.conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM jobs j JOIN frames f ON f.job_id=j.id"
            f" WHERE j.status='active' AND j.paused=0 AND j.n_ready > 0 AND f.state='ready' AND f.backend IN ({marks})"
            " LIMIT ?)", (*names, limit)).fetchone()[0]

    def _job_row(self, job: int) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=? AND status NOT IN ('intake','deleting')",
                                (job,)).fetchone()
        if row is None:
            raise NotFound(f"no job {format_url(self.server, job)}")
        return row

    @staticmethod
    def job_state(cancelled: bool, counts: dict[str, int], paused: bool = False) -> str:
        """cancelled, done, failed (every frame ended, some not done), else paused while a
        person has paused the job (frames running at the pause may still be running), else
        running once a frame started or ended, else queued."""
        total = sum(counts.values())
        if cancelled:
            return "cancelled"
        if counts["done"] == total:
            return "done"
        if counts["running"] or counts["ready"] or counts["waiting"]:
            if paused:
                return "paused"
            return "running" if (counts["running"] or counts["done"] or counts["failed"]) else "queued"
        return "failed"

    def job(self, job: int) -> dict:
        return self._job_json(self._job_row(job))

    def jobs(self) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM jobs WHERE status NOT IN ('intake','deleting') ORDER BY id").fetchall()
        return [self._job_json(r) for r in rows]

    def job_signatures(self) -> dict[int, tuple]:
        """Every visible job's row as a tuple, its frame counts first (waiting, ready, running,
        done, failed, cancelled): a change in it is a change of the job (events.py)."""
        rows = self.conn.execute(
            "SELECT " + ", ".join(f"n_{s}" for s in FRAME_STATES) + ", * FROM jobs"
            " WHERE status NOT IN ('intake','deleting')").fetchall()
        return {r["id"]: tuple(r) for r in rows}

    def frame_totals(self) -> dict[str, int]:
        """Frames of every job (not in intake), by state: one sum over the jobs' counters."""
        row = self.conn.execute(
            "SELECT " + ", ".join(f"COALESCE(SUM(n_{s}), 0)" for s in FRAME_STATES)
            + " FROM jobs WHERE status != 'intake'").fetchone()
        return dict(zip(FRAME_STATES, row))

    def _job_json(self, row: sqlite3.Row) -> dict:
        counts = {s: row[f"n_{s}"] for s in FRAME_STATES}
        state = self.job_state(row["status"] == "cancelled", counts, bool(row["paused"]))
        out = {
            "id": row["id"],
            "url": format_url(self.server, row["id"]),
            "name": row["name"],
            "backend": row["backend"],
            "backends": list(json.loads(row["settings"])),
            "priority": row["priority"],
            "timeout": row["timeout"],
            "chunk": row["chunk"],
            "state": state,
            "paused": bool(row["paused"]),
            "frames": counts,
            "total_frames": sum(counts.values()),
            "submitted": row["submitted"],
            "started": row["started"],
            "finished": row["finished"] if state in TERMINAL else None,
            "seed": {"sha256": row["seed_sha256"], "size": row["seed_size"]},
            "blocklisted": [r[0] for r in self.conn.execute(
                "SELECT renderer FROM blocklist WHERE job_id=? ORDER BY renderer", (row["id"],))],
        }
        out["waiting_for"] = self._job_waiting_for(row, counts) if state not in TERMINAL else None
        return out

    def _job_waiting_for(self, row: sqlite3.Row, counts: dict[str, int]) -> str | None:
        """Why an unfinished job is not moving, if it is not: no renderer for its ready frames,
        or the dependency that its first waiting frame waits for."""
        from .liveness import renderer_problem

        job = row["id"]
        if row["paused"]:
            return PAUSED + (f" ({counts['running']} running frames finishing)" if counts["running"] else "")
        if counts["ready"]:
            for backend in json.loads(row["settings"]):
                has = self.conn.execute("SELECT 1 FROM frames WHERE job_id=? AND state='ready' AND backend=? LIMIT 1",
                                        (job, backend)).fetchone()
                if has:
                    problem = renderer_problem(self, job, backend)
                    if problem:
                        return problem
        if counts["waiting"] and not counts["ready"] and not counts["running"]:
            first = self.conn.execute("SELECT frame FROM frames WHERE job_id=? AND state='waiting' ORDER BY frame"
                                      " LIMIT 1", (job,)).fetchone()
            if first is not None:
                why = self._frame_waiting_for(job, first[0], "waiting")
                return f"frame {first[0]}: {why[0]}" if why else None
        return None

    def frames(self, job: int, after: int | None = None, limit: int = PAGE, state: str | None = None) -> list[dict]:
        """A page of a job's frames in id order: those with ids above `after`."""
        self._job_row(job)
        limit = max(1, min(limit, MAX_PAGE))
        start = -1 if after is None else after
        if state is None:
            rows = self.conn.execute("SELECT * FROM frames WHERE job_id=? AND frame>? ORDER BY frame LIMIT ?",
                                     (job, start, limit)).fetchall()
        else:
            rows = self.conn.execute("SELECT * FROM frames WHERE job_id=? AND state=? AND frame>? ORDER BY frame"
                                     " LIMIT ?", (job, state, start, limit)).fetchall()
        return [self._frame_json(r) for r in rows]

    def frame(self, job: int, frame: int) -> dict:
        row = self._frame_row(job, frame)
        out = self._frame_json(row)
        deps = self._deps(self.conn, job, frame, limit=1000)
        out["depends"] = [{"url": format_url(r[0], r[1], r[2]), "state": r["state"] or "deleted"} for r in deps]
        out["depends_total"] = self.conn.execute("SELECT COUNT(*) FROM deps WHERE job_id=? AND frame=?",
                                                 (job, frame)).fetchone()[0]
        out["waiting_for"] = self._frame_waiting_for(job, frame, row["state"])
        out["history"] = [
            {k: r[k] for k in ("attempt", "renderer", "started", "finished", "outcome", "log")}
            for r in self.conn.execute(
                "SELECT * FROM attempts WHERE job_id=? AND frame=? ORDER BY attempt", (job, frame)
            )
        ]
        last = [h for h in out["history"] if h["log"]]
        out["log"] = last[-1]["log"] if last else ""
        return out

    def _frame_waiting_for(self, job: int, frame: int, state: str) -> list[str]:
        """What a waiting or ready frame waits for, in words (at most 10 items)."""
        from .liveness import dependency_problem, renderer_problem

        out: list[str] = []
        if state in ("waiting", "ready") and self.conn.execute("SELECT paused FROM jobs WHERE id=?",
                                                               (job,)).fetchone()[0]:
            out.append(PAUSED)
        if state == "waiting":
            rows = self.conn.execute(
                "SELECT d.dep_server, d.dep_job, d.dep_frame,"
                " CASE WHEN d.dep_server=? THEN f.state ELSE r.state END AS state, j.paused"
                " FROM deps d LEFT JOIN frames f ON d.dep_server=? AND f.job_id=d.dep_job AND f.frame=d.dep_frame"
                " LEFT JOIN jobs j ON d.dep_server=? AND j.id=d.dep_job"
                " LEFT JOIN remote_deps r ON r.server=d.dep_server AND r.job=d.dep_job AND r.frame=d.dep_frame"
                " WHERE d.job_id=? AND d.frame=? AND COALESCE(CASE WHEN d.dep_server=? THEN f.state"
                " ELSE r.state END, '') != 'done' LIMIT 11",
                (self.server, self.server, self.server, job, frame, self.server)).fetchall()
            for r in rows[:10]:
                url = format_url(r[0], r[1], r[2])
                extra = dependency_problem(self, r[0]) if r[0] != self.server else None
                if r[0] == self.server and r["paused"] and r[1] != job and r["state"] in UNFINISHED:
                    extra = "its job is paused"
                out.append(f"dependency {url} ({r['state'] or 'deleted'}" + (f"; {extra})" if extra else ")"))
            if len(rows) > 10:
                left = self.conn.execute("SELECT deps_left FROM frames WHERE job_id=? AND frame=?",
                                         (job, frame)).fetchone()[0]
                out.append(f"and {max(0, left - 10)} more dependencies")
        elif state == "ready" and not out:
            row = self.conn.execute("SELECT backend, avoid, avoid_until FROM frames WHERE job_id=? AND frame=?",
                                    (job, frame)).fetchone()
            out.append(renderer_problem(self, job, row[0]) or "a free render slot")
            if row[1] and row[2] and row[2] > self.clock():
                out.append(f"its last attempt failed on {row[1]}, which gets it again only after "
                           f"{time.strftime('%H:%M:%S', time.gmtime(row[2]))} UTC (others may take it now)")
        return out

    def _frame_row(self, job: int, frame: int) -> sqlite3.Row:
        self._job_row(job)
        row = self.conn.execute("SELECT * FROM frames WHERE job_id=? AND frame=?", (job, frame)).fetchone()
        if row is None:
            raise NotFound(f"no frame {format_url(self.server, job, frame)}")
        return row

    def _frame_json(self, row: sqlite3.Row) -> dict:
        return {
            "job": row["job_id"],
            "frame": row["frame"],
            "url": format_url(self.server, row["job_id"], row["frame"]),
            "state": row["state"],
            "backend": row["backend"],
            "attempts": row["attempts"],
            "failures": row["failures"],
            "started": row["started"],
            "finished": row["finished"],
            "rendered_by": row["rendered_by"],
            "error": row["error"],
            "output": {"sha256": row["output_sha256"], "size": row["output_size"]} if row["output_sha256"] else None,
        }

    def frame_output(self, job: int, frame: int) -> Blob:
        row = self._frame_row(job, frame)
        if row["state"] != "done":
            raise Conflict(f"frame {format_url(self.server, job, frame)} is {row['state']}, not done")
        return Blob(row["output_sha256"], row["output_size"])

    def done_outputs(self, job: int) -> list[tuple[int, Blob]]:
        self._job_row(job)
        rows = self.conn.execute(
            "SELECT frame, output_sha256, output_size FROM frames WHERE job_id=? AND state='done' ORDER BY frame",
            (job,),
        ).fetchall()
        return [(r[0], Blob(r[1], r[2])) for r in rows]

    def is_running(self, job: int, frame: int, attempt: int, owner: str | None = None) -> bool:
        row = self.conn.execute(
            "SELECT state, attempts, lease_owner FROM frames WHERE job_id=? AND frame=?", (job, frame)
        ).fetchone()
        return (row is not None and row["state"] == "running" and row["attempts"] == attempt
                and (owner is None or row["lease_owner"] == owner))

    def cached_bundle(self, job: int) -> tuple[str, str | None]:
        """The key of the job's bundle as its frames are now, and the bundle kept for that key
        (None: none is). The key is the count of done frames: a done frame stays done with
        its output (a retry requeues only failed and cancelled frames, and drops the bundle),
        so the count names the set of frames a bundle holds."""
        row = self._job_row(job)
        key = f"done:{row['n_done']}"
        return key, row["bundle_sha256"] if row["bundle_key"] == key else None

    def set_cached_bundle(self, job: int, key: str, sha256: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET bundle_sha256=?, bundle_key=? WHERE id=?", (sha256, key, job))

    # -- dependency cycles across servers ----------------------------------------------------
    def frontier(self, job: int, frame: int, limit: int = 2000) -> tuple[list[DistrenURL], bool]:
        """The frames of other servers that this frame waits for, through this server's own
        unfinished frames: a walk over the dependencies not done, from the frame, through the
        frames here that wait (a ready or running frame's dependencies are all done),
        collecting the dependencies on other servers not known done. At most `limit` frames
        here are visited, `limit` URLs collected and 100 x `limit` dependency rows read; the
        bool is False when the walk stopped short (what was found is true; what is missing is
        unknown). NotFound for a frame that does not exist (or whose job is hidden).

        Read-only, on a connection of its own in one read transaction (a consistent snapshot
        that blocks no writer): safe in a thread, off the event loop."""
        conn = self._reader()
        try:
            conn.execute("BEGIN")
            row = conn.execute(
                "SELECT f.state FROM frames f JOIN jobs j ON j.id=f.job_id WHERE f.job_id=? AND f.frame=?"
                " AND j.status NOT IN ('intake','deleting')", (job, frame)).fetchone()
            if row is None:
                raise NotFound(f"no frame {format_url(self.server, job, frame)}")
            if row[0] not in UNFINISHED:
                return [], True
            rows_left = 100 * limit
            seen = {(job, frame)}
            todo = [(job, frame)]   # breadth first: the nearest frames before a truncation
            found: dict[tuple[str, int, int], None] = {}   # insertion-ordered set
            complete = True
            i = 0
            while i < len(todo):
                j, f = todo[i]
                i += 1
                deps = conn.execute(
                    "SELECT d.dep_server, d.dep_job, d.dep_frame,"
                    " CASE WHEN d.dep_server=? THEN fr.state ELSE r.state END"
                    " FROM deps d"
                    " LEFT JOIN frames fr ON d.dep_server=? AND fr.job_id=d.dep_job AND fr.frame=d.dep_frame"
                    " LEFT JOIN remote_deps r ON d.dep_server!=? AND r.server=d.dep_server AND r.job=d.dep_job"
                    " AND r.frame=d.dep_frame WHERE d.job_id=? AND d.frame=? LIMIT ?",
                    (self.server, self.server, self.server, j, f, rows_left + 1)).fetchall()
                if len(deps) > rows_left:
                    complete = False
                    deps = deps[:rows_left]
                rows_left -= len(deps)
                for server, dj, df, state in deps:
                    if server == self.server:
                        # a ready or running frame's dependencies are all done: only waiting
                        # frames lead further
                        if state == "waiting" and (dj, df) not in seen:
                            if len(seen) >= limit:
                                complete = False
                                continue
                            seen.add((dj, df))
                            todo.append((dj, df))
                    elif state != "done" and (server, dj, df) not in found:
                        if len(found) >= limit:
                            complete = False
                            continue
                        found[(server, dj, df)] = None
                if rows_left <= 0 and i < len(todo):
                    complete = False
                    break
            return [DistrenURL(*k) for k in found], complete
        finally:
            conn.close()

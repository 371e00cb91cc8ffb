"""The scheduler: the one owner of every job and frame state change.

Frame states: waiting (for dependencies) -> ready -> running (leased to a renderer, local or
remote) -> done | failed | cancelled. A lease carries an attempt number that fences: only the
result of the current attempt of a running frame is accepted. No other module writes a state.

A job's state is derived from its frames (and its cancelled flag), never stored:
queued | running | done | failed | cancelled.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .errors import Conflict, NotFound
from .job.spec import JobSpec
from .store.blobs import Blob
from .url import format_url

FRAME_STATES = ("waiting", "ready", "running", "done", "failed", "cancelled")
TERMINAL = ("done", "failed", "cancelled")
LOG_LIMIT = 256 * 1024


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
    frame_ids: tuple[int, ...]
    depends: tuple[dict, ...]   # {"url", "sha256", "size"} of each dependency's output
    expires: float | None
    owner: str = ""
    lease_seconds: float | None = None   # as granted by the home server
    timeout: float | None = None         # the job's render timeout, if it sets one

    def to_json(self, lease_seconds: float | None) -> dict:
        return {
            "job": self.job, "frame": self.frame, "attempt": self.attempt, "backend": self.backend,
            "settings": self.settings, "seed": {"sha256": self.seed_sha256, "size": self.seed_size},
            "frame_ids": list(self.frame_ids), "depends": list(self.depends), "lease_seconds": lease_seconds,
            "timeout": self.timeout,
        }


def _clip_log(log: str | None) -> str | None:
    if log is not None and len(log) > LOG_LIMIT:
        return "[... log truncated ...]\n" + log[-LOG_LIMIT:]
    return log


class Scheduler:
    def __init__(
        self,
        conn: sqlite3.Connection,
        server: str,
        *,
        max_failures: int = 3,
        block_after: int = 2,
        on_ready: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ):
        self.conn = conn
        self.server = server
        self.max_failures = max_failures
        self.block_after = block_after
        self.on_ready = on_ready
        self.clock = clock

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

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
            c.execute("DELETE FROM jobs WHERE id=? AND status='intake'", (job,))

    def activate_job(self, job: int, spec: JobSpec, seed: Blob) -> None:
        """Record a checked job and its frames; frames whose dependencies are done become ready."""
        with self._tx() as c:
            c.execute(
                "UPDATE jobs SET name=?, backend=?, priority=?, settings=?, seed_sha256=?,"
                " seed_size=?, timeout=?, status='active' WHERE id=? AND status='intake'",
                (spec.name, spec.backend, spec.priority, json.dumps(spec.backends()), seed.sha256, seed.size,
                 spec.timeout, job),
            )
            c.executemany(
                "INSERT INTO frames(job_id, frame, backend, priority, state) VALUES (?, ?, ?, ?, 'waiting')",
                ((job, f.id, spec.frame_backend(f), spec.priority) for f in spec.frames),
            )
            c.executemany(
                "INSERT OR IGNORE INTO deps(job_id, frame, dep_server, dep_job, dep_frame) VALUES (?,?,?,?,?)",
                ((job, f.id, d.server, d.job, d.frame) for f in spec.frames for d in f.depends),
            )
            c.executemany(
                "INSERT OR IGNORE INTO remote_deps(server, job, frame) VALUES (?,?,?)",
                ((d.server, d.job, d.frame) for f in spec.frames for d in f.depends if d.server != self.server),
            )
            self._settle(c, ((job, f.id) for f in spec.frames))
        self.on_ready()

    def check_external_deps(self, spec: JobSpec, job: int) -> list[str]:
        """Problems with dependencies on other jobs of this server (unknown job or frame)."""
        problems = []
        for f in spec.frames:
            for d in f.depends:
                if d.server == self.server and d.job != job:
                    row = self.conn.execute(
                        "SELECT 1 FROM frames f JOIN jobs j ON j.id=f.job_id"
                        " WHERE f.job_id=? AND f.frame=? AND j.status != 'intake'",
                        (d.job, d.frame),
                    ).fetchone()
                    if row is None:
                        problems.append(f"frame {f.id} depends on {d}, which does not exist")
        return problems

    def discard_intake(self) -> None:
        """At start-up: drop jobs whose intake a crash interrupted (their client got no 201)."""
        with self._tx() as c:
            c.execute("DELETE FROM jobs WHERE status='intake'")

    # -- readiness -----------------------------------------------------------------------
    def _deps(self, c: sqlite3.Connection, job: int, frame: int) -> list[sqlite3.Row]:
        """A frame's dependencies: url, state and output, for frames here and on peers."""
        rows = c.execute(
            "SELECT d.dep_server, d.dep_job, d.dep_frame,"
            " CASE WHEN d.dep_server=? THEN f.state ELSE r.state END AS state,"
            " CASE WHEN d.dep_server=? THEN f.output_sha256 ELSE r.output_sha256 END AS sha256,"
            " CASE WHEN d.dep_server=? THEN f.output_size ELSE r.output_size END AS size"
            " FROM deps d"
            " LEFT JOIN frames f ON d.dep_server=? AND f.job_id=d.dep_job AND f.frame=d.dep_frame"
            " LEFT JOIN remote_deps r ON r.server=d.dep_server AND r.job=d.dep_job AND r.frame=d.dep_frame"
            " WHERE d.job_id=? AND d.frame=? ORDER BY d.dep_server, d.dep_job, d.dep_frame",
            (self.server, self.server, self.server, self.server, job, frame),
        ).fetchall()
        return rows

    def _dep_states(self, c: sqlite3.Connection, job: int, frame: int) -> list[tuple[str, str | None]]:
        return [(format_url(r[0], r[1], r[2]), r["state"]) for r in self._deps(c, job, frame)]

    def _settle(self, c: sqlite3.Connection, frames: Iterable[tuple[int, int]]) -> None:
        """Move waiting frames on: ready when every dependency is done, failed when one failed
        or was cancelled (and then their own dependents too)."""
        work = list(frames)
        now = self.clock()
        while work:
            job, frame = work.pop()
            row = c.execute(
                "SELECT f.state, j.status FROM frames f JOIN jobs j ON j.id=f.job_id"
                " WHERE f.job_id=? AND f.frame=?",
                (job, frame),
            ).fetchone()
            if row is None or row["state"] != "waiting" or row["status"] != "active":
                continue
            deps = self._dep_states(c, job, frame)
            # a frame of this server with no row was deleted with its job
            broken = [(url, st or "deleted") for url, st in deps if st in ("failed", "cancelled", None)]
            if broken:
                url, st = broken[0]
                c.execute(
                    "UPDATE frames SET state='failed', finished=?, error=? WHERE job_id=? AND frame=?",
                    (now, f"dependency {url} {st}", job, frame),
                )
                work.extend(self._dependents(c, job, frame))
            elif all(st == "done" for _, st in deps):
                c.execute("UPDATE frames SET state='ready' WHERE job_id=? AND frame=?", (job, frame))

    def _dependents(self, c: sqlite3.Connection, job: int, frame: int, server: str | None = None) -> list[tuple[int, int]]:
        rows = c.execute(
            "SELECT job_id, frame FROM deps WHERE dep_server=? AND dep_job=? AND dep_frame=?",
            (server or self.server, job, frame),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    # -- leases --------------------------------------------------------------------------
    def claim(self, owner: str, backends: Iterable[str], lease_seconds: float | None = None) -> Lease | None:
        """Lease the best ready frame (highest priority, oldest job, lowest frame id) of a
        backend the renderer has, or None."""
        names = list(backends)
        if not names:
            return None
        marks = ",".join("?" * len(names))
        now = self.clock()
        with self._tx() as c:
            row = c.execute(
                "SELECT f.job_id, f.frame, f.attempts, f.backend FROM frames f JOIN jobs j ON j.id=f.job_id"
                f" WHERE f.state='ready' AND j.status='active' AND f.backend IN ({marks})"
                " AND NOT EXISTS (SELECT 1 FROM blocklist b WHERE b.job_id=f.job_id AND b.renderer=?)"
                " ORDER BY f.priority DESC, f.job_id, f.frame LIMIT 1",
                [*names, owner],
            ).fetchone()
            if row is None:
                return None
            job, frame, attempt = row[0], row[1], row[2] + 1
            expires = now + lease_seconds if lease_seconds else None
            c.execute(
                "UPDATE frames SET state='running', attempts=?, lease_owner=?, lease_expires=?,"
                " started=COALESCE(started, ?), error=NULL WHERE job_id=? AND frame=?",
                (attempt, owner, expires, now, job, frame),
            )
            c.execute(
                "INSERT INTO attempts(job_id, frame, attempt, renderer, started) VALUES (?,?,?,?,?)",
                (job, frame, attempt, owner, now),
            )
            jrow = c.execute(
                "SELECT backend, settings, seed_sha256, seed_size, timeout FROM jobs WHERE id=?", (job,)
            ).fetchone()
            ids = tuple(r[0] for r in c.execute("SELECT frame FROM frames WHERE job_id=? ORDER BY frame", (job,)))
            deps = tuple(
                {"url": format_url(r[0], r[1], r[2]), "sha256": r["sha256"], "size": r["size"]}
                for r in self._deps(c, job, frame)
            )
        return Lease(
            job=job, frame=frame, attempt=attempt, backend=row["backend"],
            settings=json.loads(jrow["settings"])[row["backend"]], seed_sha256=jrow["seed_sha256"],
            seed_size=jrow["seed_size"], frame_ids=ids, depends=deps, expires=expires, owner=owner,
            lease_seconds=lease_seconds, timeout=jrow["timeout"],
        )

    def _running(self, c: sqlite3.Connection, job: int, frame: int, attempt: int, owner: str | None = None) -> None:
        row = c.execute(
            "SELECT state, attempts, lease_owner FROM frames WHERE job_id=? AND frame=?", (job, frame)
        ).fetchone()
        if row is None:
            raise NotFound(f"no frame {format_url(self.server, job, frame)}")
        if row["state"] != "running" or row["attempts"] != attempt or (owner and row["lease_owner"] != owner):
            raise Conflict(
                f"attempt {attempt} of {format_url(self.server, job, frame)} is not current"
                f" (frame is {row['state']}, attempt {row['attempts']})"
            )

    def complete(
        self, job: int, frame: int, attempt: int, output: Blob, rendered_by: str, log: str, owner: str | None = None
    ) -> None:
        """Record a frame's output. Raises Conflict for a superseded or expired attempt."""
        now = self.clock()
        with self._tx() as c:
            self._running(c, job, frame, attempt, owner)
            c.execute(
                "UPDATE frames SET state='done', finished=?, output_sha256=?, output_size=?,"
                " rendered_by=?, lease_owner=NULL, lease_expires=NULL WHERE job_id=? AND frame=?",
                (now, output.sha256, output.size, rendered_by, job, frame),
            )
            self._end_attempt(c, job, frame, attempt, "done", log)
            self._settle(c, self._dependents(c, job, frame))
        self.on_ready()

    def fail(
        self, job: int, frame: int, attempt: int, log: str, error: str, *, counts: bool = True, owner: str | None = None
    ) -> str:
        """Record a failed attempt. The frame is ready again until it has failed
        `max_failures` times; then it is failed, and so are the frames waiting for it.
        `counts=False` for attempts that were interrupted through no fault of the frame.
        Returns the frame's new state."""
        now = self.clock()
        with self._tx() as c:
            self._running(c, job, frame, attempt, owner)
            failures = c.execute(
                "SELECT failures FROM frames WHERE job_id=? AND frame=?", (job, frame)
            ).fetchone()[0] + (1 if counts else 0)
            state = "failed" if failures >= self.max_failures else "ready"
            c.execute(
                "UPDATE frames SET state=?, failures=?, error=?, lease_owner=NULL, lease_expires=NULL,"
                " finished=CASE WHEN ?='failed' THEN ? ELSE NULL END WHERE job_id=? AND frame=?",
                (state, failures, error, state, now, job, frame),
            )
            self._end_attempt(c, job, frame, attempt, "failed" if counts else "interrupted", log)
            if counts:
                self._maybe_block(c, job, frame, attempt)
            if state == "failed":
                self._settle(c, self._dependents(c, job, frame))
        if state == "ready":
            self.on_ready()
        return state

    def _maybe_block(self, c: sqlite3.Connection, job: int, frame: int, attempt: int) -> None:
        """A peer whose renders of this job failed `block_after` times gets no more of its
        frames; the others take them. This server's own slots are never blocked (the job must
        still run or fail somewhere)."""
        row = c.execute("SELECT renderer FROM attempts WHERE job_id=? AND frame=? AND attempt=?",
                        (job, frame, attempt)).fetchone()
        if row is None or row[0].startswith("local:"):
            return
        failed = c.execute("SELECT COUNT(*) FROM attempts WHERE job_id=? AND renderer=? AND outcome='failed'",
                           (job, row[0])).fetchone()[0]
        if failed >= self.block_after:
            c.execute("INSERT OR IGNORE INTO blocklist(job_id, renderer, since) VALUES (?,?,?)",
                      (job, row[0], self.clock()))

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
        return expires

    def pending_remote_deps(self) -> list[tuple[str, int, int]]:
        """Frames on peers that waiting frames here depend on, not yet known done or failed."""
        rows = self.conn.execute(
            "SELECT DISTINCT r.server, r.job, r.frame FROM remote_deps r JOIN deps d"
            " ON d.dep_server=r.server AND d.dep_job=r.job AND d.dep_frame=r.frame"
            " JOIN frames f ON f.job_id=d.job_id AND f.frame=d.frame"
            " WHERE r.state='waiting' AND f.state='waiting'"
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def set_remote_dep(self, server: str, job: int, frame: int, state: str, output: Blob | None = None,
                       error: str | None = None) -> None:
        """What a peer reported of a frame that frames here depend on: 'done' (with its output,
        already in the blob store), 'failed' or 'cancelled'; dependents move on."""
        with self._tx() as c:
            c.execute(
                "UPDATE remote_deps SET state=?, output_sha256=?, output_size=?, error=?, checked=?"
                " WHERE server=? AND job=? AND frame=?",
                (state, output.sha256 if output else None, output.size if output else None, error,
                 self.clock(), server, job, frame),
            )
            self._settle(c, self._dependents(c, job, frame, server))
        self.on_ready()

    def recover(self, owner: str) -> int:
        """At start-up: frames leased to this server's own renderers were interrupted by the
        stop; they are ready again (the attempt does not count as a failure)."""
        rows = self.conn.execute(
            "SELECT job_id, frame, attempts FROM frames WHERE state='running' AND lease_owner=?", (owner,)
        ).fetchall()
        for r in rows:
            self.fail(r[0], r[1], r[2], "", "interrupted by a server restart", counts=False)
        return len(rows)

    def expire_leases(self) -> int:
        """Leases past their expiry: the frame is ready again (a counted failure)."""
        rows = self.conn.execute(
            "SELECT job_id, frame, attempts FROM frames WHERE state='running'"
            " AND lease_expires IS NOT NULL AND lease_expires < ?",
            (self.clock(),),
        ).fetchall()
        for r in rows:
            self.fail(r[0], r[1], r[2], "", "lease expired")
        return len(rows)

    # -- job actions -----------------------------------------------------------------------
    def cancel(self, job: int) -> list[tuple[int, int, int]]:
        """Cancel a job: unfinished frames are cancelled; frames of other jobs waiting for them
        fail. Returns the (job, frame, attempt) leases that were running, for the runner to kill."""
        self._job_row(job)
        now = self.clock()
        with self._tx() as c:
            running = [
                (r[0], r[1], r[2])
                for r in c.execute(
                    "SELECT job_id, frame, attempts FROM frames WHERE job_id=? AND state='running'", (job,)
                )
            ]
            for _, frame, attempt in running:
                self._end_attempt(c, job, frame, attempt, "cancelled", None)
            changed = [
                r[0]
                for r in c.execute(
                    "SELECT frame FROM frames WHERE job_id=? AND state IN ('waiting','ready','running')", (job,)
                )
            ]
            c.execute(
                "UPDATE frames SET state='cancelled', finished=?, lease_owner=NULL, lease_expires=NULL"
                " WHERE job_id=? AND state IN ('waiting','ready','running')",
                (now, job),
            )
            c.execute("UPDATE jobs SET status='cancelled' WHERE id=?", (job,))
            for frame in changed:
                self._settle(c, [d for d in self._dependents(c, job, frame) if d[0] != job])
        return running

    def retry(self, job: int) -> int:
        """Requeue a job's failed and cancelled frames (and lift a cancel). Returns how many."""
        self._job_row(job)
        with self._tx() as c:
            frames = [
                r[0]
                for r in c.execute("SELECT frame FROM frames WHERE job_id=? AND state IN ('failed','cancelled')", (job,))
            ]
            c.execute(
                "UPDATE frames SET state='waiting', failures=0, error=NULL, finished=NULL"
                " WHERE job_id=? AND state IN ('failed','cancelled')",
                (job,),
            )
            c.execute("UPDATE jobs SET status='active', bundle_sha256=NULL, bundle_key=NULL WHERE id=?", (job,))
            c.execute("DELETE FROM blocklist WHERE job_id=?", (job,))
            # frames on peers that failed may have been retried there: ask again
            c.execute(
                "UPDATE remote_deps SET state='waiting', error=NULL WHERE state != 'done' AND EXISTS"
                " (SELECT 1 FROM deps d WHERE d.job_id=? AND d.dep_server=remote_deps.server"
                " AND d.dep_job=remote_deps.job AND d.dep_frame=remote_deps.frame)",
                (job,),
            )
            self._settle(c, ((job, f) for f in sorted(frames)))
        self.on_ready()
        return len(frames)

    def delete(self, job: int) -> list[tuple[int, int, int]]:
        """Forget a job (its id is never handed out again). Refused while unfinished frames of
        other jobs wait for it. Returns its running leases, for the runner to kill."""
        self._job_row(job)
        waiting = self.conn.execute(
            "SELECT d.job_id, d.frame FROM deps d JOIN frames f ON f.job_id=d.job_id AND f.frame=d.frame"
            " WHERE d.dep_server=? AND d.dep_job=? AND d.job_id != ? AND f.state IN ('waiting','ready','running')",
            (self.server, job, job),
        ).fetchone()
        if waiting is not None:
            raise Conflict(
                f"{format_url(self.server, waiting[0], waiting[1])} waits for job {format_url(self.server, job)};"
                " cancel or delete that job first"
            )
        running = [(job, r[0], r[1]) for r in self.conn.execute(
            "SELECT frame, attempts FROM frames WHERE job_id=? AND state='running'", (job,))]
        with self._tx() as c:
            for table in ("attempts", "deps", "frames", "blocklist"):
                c.execute(f"DELETE FROM {table} WHERE job_id=?", (job,))
            c.execute("DELETE FROM jobs WHERE id=?", (job,))
        return running

    # -- queries -------------------------------------------------------------------------
    def _job_row(self, job: int) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM jobs WHERE id=? AND status != 'intake'", (job,)).fetchone()
        if row is None:
            raise NotFound(f"no job {format_url(self.server, job)}")
        return row

    def job_state(self, cancelled: bool, counts: dict[str, int]) -> str:
        total = sum(counts.values())
        if cancelled:
            return "cancelled"
        if counts["done"] == total:
            return "done"
        if counts["running"] or counts["ready"] or counts["waiting"]:
            return "running" if (counts["running"] or counts["done"] or counts["failed"]) else "queued"
        return "failed"

    def job(self, job: int) -> dict:
        return self._job_json(self._job_row(job))

    def jobs(self) -> list[dict]:
        rows = self.conn.execute("SELECT * FROM jobs WHERE status != 'intake' ORDER BY id").fetchall()
        return [self._job_json(r) for r in rows]

    def _job_json(self, row: sqlite3.Row) -> dict:
        counts = dict.fromkeys(FRAME_STATES, 0)
        for state, n in self.conn.execute(
            "SELECT state, COUNT(*) FROM frames WHERE job_id=? GROUP BY state", (row["id"],)
        ):
            counts[state] = n
        times = self.conn.execute(
            "SELECT MIN(started), MAX(finished) FROM frames WHERE job_id=?", (row["id"],)
        ).fetchone()
        state = self.job_state(row["status"] == "cancelled", counts)
        return {
            "id": row["id"],
            "url": format_url(self.server, row["id"]),
            "name": row["name"],
            "backend": row["backend"],
            "backends": list(json.loads(row["settings"])),
            "priority": row["priority"],
            "timeout": row["timeout"],
            "state": state,
            "frames": counts,
            "total_frames": sum(counts.values()),
            "submitted": row["submitted"],
            "started": times[0],
            "finished": times[1] if state in ("done", "failed", "cancelled") else None,
            "seed": {"sha256": row["seed_sha256"], "size": row["seed_size"]},
            "blocklisted": [r[0] for r in self.conn.execute(
                "SELECT renderer FROM blocklist WHERE job_id=? ORDER BY renderer", (row["id"],))],
        }

    def frames(self, job: int) -> list[dict]:
        self._job_row(job)
        rows = self.conn.execute("SELECT * FROM frames WHERE job_id=? ORDER BY frame", (job,)).fetchall()
        return [self._frame_json(r) for r in rows]

    def frame(self, job: int, frame: int) -> dict:
        row = self._frame_row(job, frame)
        out = self._frame_json(row)
        out["depends"] = [{"url": url, "state": st} for url, st in self._dep_states(self.conn, job, frame)]
        out["history"] = [
            {k: r[k] for k in ("attempt", "renderer", "started", "finished", "outcome", "log")}
            for r in self.conn.execute(
                "SELECT * FROM attempts WHERE job_id=? AND frame=? ORDER BY attempt", (job, frame)
            )
        ]
        last = [h for h in out["history"] if h["log"]]
        out["log"] = last[-1]["log"] if last else ""
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

    def cached_bundle(self, job: int, key: str) -> str | None:
        row = self.conn.execute("SELECT bundle_sha256, bundle_key FROM jobs WHERE id=?", (job,)).fetchone()
        return row["bundle_sha256"] if row and row["bundle_key"] == key else None

    def set_cached_bundle(self, job: int, key: str, sha256: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE jobs SET bundle_sha256=?, bundle_key=? WHERE id=?", (sha256, key, job))

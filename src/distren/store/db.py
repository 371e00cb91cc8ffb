"""The SQLite database: schema and connection settings.

WAL mode with synchronous=NORMAL survives kill -9 of the server without losing an acknowledged
write (measured: 30 kill -9 runs in a write loop). Job ids come from AUTOINCREMENT, so SQLite never hands out an id
twice, also after the job with the highest id was deleted and after restarts.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..errors import DistrenError


class DatabaseVersionError(DistrenError):
    """Raised when a data folder's database has a schema this distren cannot use."""

    code = "database_version"

WAL_SIZE_LIMIT = 4 * 1024 * 1024

# How many cells of the database name each blob (a seed, a frame output, an upload waiting for
# its complete, a bundle, a peer's output that frames here depend on), kept by the triggers below
# in the transaction that changes the cell: no code path can add or drop a reference without
# the count following. A blob whose count falls to 0 loses its row and is appended to blob_free
# (appended: a delete of many frames writes the end of one table, not places all over an index),
# as is a blob written but never referenced (a result refused, a package refused after it was
# stored). server/storage.py reclaims what blob_free names and blob_refs does not.
BLOB_REFS = """
CREATE TABLE IF NOT EXISTS blob_refs (
    sha256 TEXT PRIMARY KEY,
    refs INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blob_free (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL
);
"""
# (table, column) of every cell that names a blob
BLOB_COLUMNS = (("jobs", "seed_sha256"), ("jobs", "bundle_sha256"), ("frames", "output_sha256"),
                ("frames", "upload_sha256"), ("remote_deps", "output_sha256"))


def _blob_ref_triggers() -> str:
    add = ("INSERT INTO blob_refs(sha256, refs) SELECT NEW.{c}, 1 WHERE NEW.{c} IS NOT NULL"
           " ON CONFLICT(sha256) DO UPDATE SET refs = refs + 1;")
    drop = ("UPDATE blob_refs SET refs = refs - 1 WHERE sha256 = OLD.{c};"
            " INSERT INTO blob_free(sha256) SELECT sha256 FROM blob_refs WHERE sha256 = OLD.{c} AND refs <= 0;"
            " DELETE FROM blob_refs WHERE sha256 = OLD.{c} AND refs <= 0;")
    out = []
    for table, col in BLOB_COLUMNS:
        name = f"ref_{table}_{col}"
        out.append(f"CREATE TRIGGER IF NOT EXISTS {name}_i AFTER INSERT ON {table} WHEN NEW.{col} IS NOT NULL"
                   f" BEGIN {add.format(c=col)} END;")
        out.append(f"CREATE TRIGGER IF NOT EXISTS {name}_d AFTER DELETE ON {table} WHEN OLD.{col} IS NOT NULL"
                   f" BEGIN {drop.format(c=col)} END;")
        out.append(f"CREATE TRIGGER IF NOT EXISTS {name}_u AFTER UPDATE OF {col} ON {table}"
                   f" WHEN OLD.{col} IS NOT NEW.{col} BEGIN {add.format(c=col)} {drop.format(c=col)} END;")
    return "\n".join(out) + "\n"


SCHEMA = """
-- 'draining' ('1' while the server is drained: it renders nothing new); until schema 6 also
-- 'schema_version', which is PRAGMA user_version now
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    backend TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    timeout INTEGER,
    -- {"backend name": {settings}}: the job's backend first, then any a frame names
    settings TEXT NOT NULL DEFAULT '{}',
    seed_sha256 TEXT,
    seed_size INTEGER,
    -- 'intake' while the package is checked (hidden), 'active', 'cancelled', 'deleting' (hidden)
    status TEXT NOT NULL,
    submitted REAL NOT NULL,
    bundle_sha256 TEXT,
    bundle_key TEXT,
    -- frame counts by state and first start / last finish, kept by the triggers below
    n_waiting INTEGER NOT NULL DEFAULT 0,
    n_ready INTEGER NOT NULL DEFAULT 0,
    n_running INTEGER NOT NULL DEFAULT 0,
    n_done INTEGER NOT NULL DEFAULT 0,
    n_failed INTEGER NOT NULL DEFAULT 0,
    n_cancelled INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    -- an operation over the job's frames that is under way ('cancel', 'retry'): it runs in
    -- bounded transactions, and a server that stops in the middle finishes it at start-up
    pending TEXT,
    -- frames per renderer process that the job asks for (<chunk>); NULL: chosen per server
    chunk INTEGER,
    -- 1 while a person has paused the job: none of its frames is leased (running ones finish)
    paused INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS frames (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    frame INTEGER NOT NULL,
    backend TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL,
    started REAL,
    finished REAL,
    output_sha256 TEXT,
    output_size INTEGER,
    rendered_by TEXT,
    error TEXT,
    -- dependencies not done yet (a counter: a finished dependency decrements its dependents)
    deps_left INTEGER NOT NULL DEFAULT 0,
    -- the renderer whose attempt last failed: it gets the frame again only after avoid_until
    avoid TEXT,
    avoid_until REAL,
    -- the output a peer uploaded for the current attempt, until it reports complete
    upload_sha256 TEXT,
    upload_size INTEGER,
    PRIMARY KEY (job_id, frame)
);
CREATE INDEX IF NOT EXISTS frames_job_state ON frames (job_id, state, backend, frame);
CREATE INDEX IF NOT EXISTS frames_leases ON frames (state, lease_expires);
CREATE TABLE IF NOT EXISTS deps (
    job_id INTEGER NOT NULL,
    frame INTEGER NOT NULL,
    dep_server TEXT NOT NULL,
    dep_job INTEGER NOT NULL,
    dep_frame INTEGER NOT NULL,
    PRIMARY KEY (job_id, frame, dep_server, dep_job, dep_frame)
);
CREATE INDEX IF NOT EXISTS deps_target ON deps (dep_server, dep_job, dep_frame);
-- Frames of other servers that frames here depend on, and what is known of them.
CREATE TABLE IF NOT EXISTS remote_deps (
    server TEXT NOT NULL,
    job INTEGER NOT NULL,
    frame INTEGER NOT NULL,
    -- 'waiting' until the peer reports the frame done (output fetched), 'failed' or 'cancelled'
    state TEXT NOT NULL DEFAULT 'waiting',
    output_sha256 TEXT,
    output_size INTEGER,
    error TEXT,
    checked REAL,
    PRIMARY KEY (server, job, frame)
);
-- Peers whose renders of a job keep failing: they get no more frames of it (until a retry).
CREATE TABLE IF NOT EXISTS blocklist (
    job_id INTEGER NOT NULL,
    renderer TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (job_id, renderer)
);
CREATE TABLE IF NOT EXISTS attempts (
    job_id INTEGER NOT NULL,
    frame INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    renderer TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    outcome TEXT,
    log TEXT,
    PRIMARY KEY (job_id, frame, attempt)
);
CREATE INDEX IF NOT EXISTS attempts_renderer ON attempts (job_id, renderer, outcome);
""" + BLOB_REFS + _blob_ref_triggers() + """
CREATE TRIGGER IF NOT EXISTS frames_insert AFTER INSERT ON frames BEGIN
    UPDATE jobs SET
        n_waiting = n_waiting + (NEW.state = 'waiting'), n_ready = n_ready + (NEW.state = 'ready'),
        n_running = n_running + (NEW.state = 'running'), n_done = n_done + (NEW.state = 'done'),
        n_failed = n_failed + (NEW.state = 'failed'), n_cancelled = n_cancelled + (NEW.state = 'cancelled'),
        finished = CASE WHEN NEW.finished IS NOT NULL THEN MAX(COALESCE(finished, 0), NEW.finished) ELSE finished END
    WHERE id = NEW.job_id;
END;
CREATE TRIGGER IF NOT EXISTS frames_state AFTER UPDATE OF state, started, finished ON frames BEGIN
    UPDATE jobs SET
        n_waiting = n_waiting + (NEW.state = 'waiting') - (OLD.state = 'waiting'),
        n_ready = n_ready + (NEW.state = 'ready') - (OLD.state = 'ready'),
        n_running = n_running + (NEW.state = 'running') - (OLD.state = 'running'),
        n_done = n_done + (NEW.state = 'done') - (OLD.state = 'done'),
        n_failed = n_failed + (NEW.state = 'failed') - (OLD.state = 'failed'),
        n_cancelled = n_cancelled + (NEW.state = 'cancelled') - (OLD.state = 'cancelled'),
        started = CASE WHEN started IS NULL THEN NEW.started
                       WHEN NEW.started IS NULL THEN started ELSE MIN(started, NEW.started) END,
        finished = CASE WHEN NEW.finished IS NOT NULL THEN MAX(COALESCE(finished, 0), NEW.finished) ELSE finished END
    WHERE id = NEW.job_id;
END;
CREATE TRIGGER IF NOT EXISTS frames_delete AFTER DELETE ON frames BEGIN
    UPDATE jobs SET
        n_waiting = n_waiting - (OLD.state = 'waiting'), n_ready = n_ready - (OLD.state = 'ready'),
        n_running = n_running - (OLD.state = 'running'), n_done = n_done - (OLD.state = 'done'),
        n_failed = n_failed - (OLD.state = 'failed'), n_cancelled = n_cancelled - (OLD.state = 'cancelled')
    WHERE id = OLD.job_id;
END;
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at `path`, upgrading an older schema in place."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # a 100,000-frame job's rows and indexes stay in memory (the default cache is 2 MB)
        conn.execute("PRAGMA cache_size=-65536")
        # the WAL file is cut back to this size when it starts over after a checkpoint: a burst of
        # writes (a 100,000-frame job) does not leave a WAL of hundreds of MB on disk for good
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        _upgrade(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _upgrade(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION: an older database gets the migration steps from its
    version on (one transaction), a new one the schema; a newer one is refused."""
    version, legacy = _version(conn)
    if version > SCHEMA_VERSION:
        raise DatabaseVersionError(f"database {path} has schema version {version}, newer than this distren's "
                                   f"{SCHEMA_VERSION}: upgrade distren")
    if 0 < version < OLDEST_SCHEMA:
        raise DatabaseVersionError(f"database {path} has schema version {version}, which this distren "
                                   f"cannot upgrade (it upgrades versions {OLDEST_SCHEMA} and later)")
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master WHERE name='jobs'").fetchone() is not None:
        raise DatabaseVersionError(f"database {path} has distren's tables but no schema version: not upgraded")
    if legacy or 0 < version < SCHEMA_VERSION:
        _migrate(conn, version, legacy)
    if version == 0:
        # a new database: the schema and its version in one transaction (a crash leaves an
        # empty file, made again at the next start, never tables without a version)
        conn.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
    else:
        # new tables, indexes and triggers (all IF NOT EXISTS: a database interrupted here is
        # finished the next time)
        conn.executescript(SCHEMA)


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else row[0]


def set_meta(conn: sqlite3.Connection, key: str, value: str | None) -> None:
    """Set (None: remove) a key of the meta table, in a transaction of its own."""
    if value is None:
        conn.execute("DELETE FROM meta WHERE key=?", (key,))
    else:
        conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                     (key, value))


def _version(conn: sqlite3.Connection) -> tuple[int, bool]:
    """The schema version (0: a new database) and whether it is still kept the way of schema 6
    and before, in the `meta` row 'schema_version' (moved to PRAGMA user_version by the upgrade)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    row = None
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is not None:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        return version, False
    return version or int(row["value"]), True


def _to_4(conn: sqlite3.Connection) -> None:
    """Frame counters on jobs, dependency counters on frames, lease-side columns."""
    for col in ("n_waiting", "n_ready", "n_running", "n_done", "n_failed", "n_cancelled"):
        conn.execute(f"ALTER TABLE jobs ADD COLUMN {col} INTEGER NOT NULL DEFAULT 0")
    for col in ("started REAL", "finished REAL"):
        conn.execute(f"ALTER TABLE jobs ADD COLUMN {col}")
    for col in ("deps_left INTEGER NOT NULL DEFAULT 0", "avoid TEXT", "avoid_until REAL",
                "upload_sha256 TEXT", "upload_size INTEGER"):
        conn.execute(f"ALTER TABLE frames ADD COLUMN {col}")
    conn.execute("DROP INDEX IF EXISTS frames_ready")
    for state in ("waiting", "ready", "running", "done", "failed", "cancelled"):
        conn.execute(f"UPDATE jobs SET n_{state} = (SELECT COUNT(*) FROM frames f WHERE f.job_id = jobs.id"
                     f" AND f.state = '{state}')")
    conn.execute("UPDATE jobs SET started = (SELECT MIN(started) FROM frames f WHERE f.job_id = jobs.id),"
                 " finished = (SELECT MAX(finished) FROM frames f WHERE f.job_id = jobs.id)")
    # waiting frames: count the dependencies not done (a dependency with a remote_deps row is
    # a peer's frame; the others are this server's)
    conn.execute(
        "UPDATE frames SET deps_left = (SELECT COUNT(*) FROM deps d"
        " LEFT JOIN remote_deps r ON r.server = d.dep_server AND r.job = d.dep_job AND r.frame = d.dep_frame"
        " LEFT JOIN frames g ON r.server IS NULL AND g.job_id = d.dep_job AND g.frame = d.dep_frame"
        " WHERE d.job_id = frames.job_id AND d.frame = frames.frame"
        " AND COALESCE(r.state, g.state, 'missing') != 'done')"
        " WHERE state = 'waiting'")


def _to_5(conn: sqlite3.Connection) -> None:
    """The operation under way on a job (resumed at start-up); the job's chunk size."""
    conn.execute("ALTER TABLE jobs ADD COLUMN pending TEXT")
    conn.execute("ALTER TABLE jobs ADD COLUMN chunk INTEGER")
    # a version-4 server stopped in the middle of a retry left frames to be counted
    conn.execute("UPDATE jobs SET pending='retry' WHERE status='active' AND EXISTS"
                 " (SELECT 1 FROM frames f WHERE f.job_id=jobs.id AND f.state='waiting' AND f.deps_left < 0)")
    # ... or of a cancel: a cancelled job with unfinished frames
    conn.execute("UPDATE jobs SET pending='cancel' WHERE status='cancelled'"
                 " AND n_waiting + n_ready + n_running > 0")


def _to_6(conn: sqlite3.Connection) -> None:
    """Jobs can be paused (none is, after the upgrade)."""
    conn.execute("ALTER TABLE jobs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0")


def _to_7(conn: sqlite3.Connection) -> None:
    """Blobs are reference-counted (blob_refs, kept by triggers): the counts of what exists.
    Blobs of jobs deleted before are referenced by nothing: the start-up sweep reclaims them."""
    for statement in BLOB_REFS.split(";"):
        if statement.strip():
            conn.execute(statement)
    cells = " UNION ALL ".join(f"SELECT {col} AS sha256 FROM {table} WHERE {col} IS NOT NULL"
                               for table, col in BLOB_COLUMNS)
    conn.execute(f"INSERT INTO blob_refs(sha256, refs) SELECT sha256, COUNT(*) FROM ({cells}) GROUP BY sha256")


# The upgrade steps, in order: MIGRATIONS[i] turns schema OLDEST_SCHEMA + i into the next one.
# A schema change appends its step here (SCHEMA_VERSION follows) and changes SCHEMA above to
# match; tests/fixtures/make_v<N>.py records how a fixture of the schema before it was made.
OLDEST_SCHEMA = 3
MIGRATIONS = [_to_4, _to_5, _to_6, _to_7]
SCHEMA_VERSION = OLDEST_SCHEMA + len(MIGRATIONS)


def _migrate(conn: sqlite3.Connection, version: int, legacy: bool) -> None:
    """The steps from `version` on, and the version itself moved to PRAGMA user_version, in one
    transaction (SQLite's DDL and the header's user_version are transactional)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for step in MIGRATIONS[version - OLDEST_SCHEMA:]:
            step(conn)
        if legacy:
            conn.execute("DELETE FROM meta WHERE key='schema_version'")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Checkpointer:
    """Moves the WAL into the database file from a thread of its own, on a connection of its
    own, so that the fsyncs of a checkpoint never stall the server's event loop (SQLite
    otherwise checkpoints inside whichever COMMIT crosses 1,000 pages: 100 ms and more on a
    slow disk). The server's connection is set to `wal_autocheckpoint=0` meanwhile."""

    def __init__(self, path: Path, conn: sqlite3.Connection, period: float = 1.0):
        import threading

        self.path, self.period = path, period
        self._stop = threading.Event()
        conn.execute("PRAGMA wal_autocheckpoint=0")
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import logging

        own = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        try:
            while not self._stop.wait(self.period):
                try:
                    own.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    logging.getLogger("distren.db").warning("checkpoint failed; trying again", exc_info=True)
        finally:
            own.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

"""A data folder made by the schema that landed before (version 3) opens, is upgraded in place,
and its jobs go on. tests/fixtures/v3.sqlite3 was made by that code (tests/fixtures/make_v3.py)."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from distren.scheduler import Scheduler
from distren.store import db
from distren.store.blobs import Blob

FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "v3.sqlite3"


def test_a_version_3_database_is_upgraded_and_its_jobs_go_on(tmp_path):
    path = tmp_path / "distren.sqlite3"
    shutil.copy(FIXTURE, path)
    conn = db.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(db.SCHEMA_VERSION)
    s = Scheduler(conn, "alpha")
    video = s.job(1)
    assert video["frames"] == {"waiting": 1, "ready": 2, "running": 1, "done": 1, "failed": 0, "cancelled": 0}
    assert video["started"] is not None
    assert s.job(2)["state"] == "cancelled" and s.job(2)["frames"]["cancelled"] == 2
    # the fan-in frame counts the 3 dependencies not done; it becomes ready after the last one
    assert conn.execute("SELECT deps_left FROM frames WHERE job_id=1 AND frame=9").fetchone()[0] == 3
    out = Blob("c" * 64, 5)
    running = conn.execute("SELECT frame, attempts FROM frames WHERE job_id=1 AND state='running'").fetchone()
    s.complete(1, running[0], running[1], out, "beta", "", owner="beta")
    for _ in range(2):
        lease = s.claim("local:alpha", ["povray"], 60)
        s.complete(1, lease.frame, lease.attempt, out, "alpha", "")
    lease = s.claim("local:alpha", ["povray"], 60)
    assert lease.frame == 9 and len(lease.depends) == 4
    # opening it again changes nothing
    conn.close()
    assert db.connect(path).execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 7


def test_a_newer_database_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "distren.sqlite3"
    db.connect(path).close()
    c = sqlite3.connect(path)
    c.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    c.commit()
    c.close()
    with pytest.raises(db.DatabaseVersionError, match="newer"):
        db.connect(path)
    from conftest import run_cli

    r = run_cli("serve", "--name", "x", "--data", str(tmp_path), timeout=60)
    assert r.returncode != 0 and "newer than this distren" in r.stderr and "Traceback" not in r.stderr, r.stderr

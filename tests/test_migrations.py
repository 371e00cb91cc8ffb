"""Data folders made by the schemas that landed before (versions 3, 4 and 5) open, are upgraded
in place, and their jobs go on. tests/fixtures/v3.sqlite3, v4.sqlite3 and v5.sqlite3 were made by
that code (tests/fixtures/make_v3.py, make_v4.py, make_v5.py)."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from distren.scheduler import Scheduler
from distren.store import db
from distren.store.blobs import Blob

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "v3.sqlite3"


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


def test_a_version_4_database_finishes_the_cancel_and_retry_a_stop_interrupted(tmp_path):
    """Schema 4 did not record operations under way: the upgrade finds the cancelled job with
    unfinished frames and the frames whose dependency counter was still to be counted."""
    from distren.scheduler import drain

    path = tmp_path / "distren.sqlite3"
    shutil.copy(FIXTURES / "v4.sqlite3", path)
    s = Scheduler(db.connect(path), "alpha", max_failures=1)
    assert s.job(1)["frames"]["ready"] == 4
    assert sorted(drain(s.resume_steps())) == [1, 2]
    assert s.job(1)["state"] == "cancelled" and s.job(1)["frames"]["cancelled"] == 5
    # job 2: frame 0 is ready again; frames 1-20 wait for it (each counted: 1 left)
    assert s.job(2)["frames"] == {"waiting": 20, "ready": 1, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
    out = Blob("c" * 64, 5)
    while (lease := s.claim("local:alpha", ["povray"], 60)) is not None:
        s.complete(lease.job, lease.frame, lease.attempt, out, "alpha", "")
    assert s.job(2)["state"] == "done"


def test_a_version_5_database_has_no_paused_job_and_its_jobs_can_be_paused(tmp_path):
    """Schema 6 adds jobs.paused: after the upgrade no job is paused, claims go on in priority
    order, and a job of the old database can be paused and resumed."""
    path = tmp_path / "distren.sqlite3"
    shutil.copy(FIXTURES / "v5.sqlite3", path)
    conn = db.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(db.SCHEMA_VERSION)
    s = Scheduler(conn, "alpha")
    jobs = {j["id"]: j for j in s.jobs()}
    assert [jobs[i]["paused"] for i in (1, 2, 3)] == [False, False, False]
    assert [jobs[i]["state"] for i in (1, 2, 3)] == ["running", "queued", "cancelled"]
    assert jobs[1]["frames"] == {"waiting": 0, "ready": 2, "running": 2, "done": 1, "failed": 0, "cancelled": 0}
    # job 2 has the higher priority; paused, job 1's frames come first
    s.pause(2)
    assert s.job(2)["state"] == "paused" and s.job(2)["paused"]
    lease = s.claim("local:alpha", ["povray"], 60)
    assert (lease.job, lease.frame) == (1, 3)
    s.resume(2)
    lease = s.claim("local:alpha", ["povray"], 60)
    assert (lease.job, lease.frame) == (2, 0)
    # the frame running on beta is still beta's to finish
    running = conn.execute("SELECT frame, attempts FROM frames WHERE job_id=1 AND lease_owner='beta'").fetchone()
    s.complete(1, running[0], running[1], Blob("c" * 64, 5), "beta", "", owner="beta")
    conn.close()
    assert db.connect(path).execute("SELECT COUNT(*) FROM jobs WHERE paused=1").fetchone()[0] == 0

"""Data folders made by the schemas that landed before (versions 3 to 6) open, are upgraded in
place, and their jobs go on. tests/fixtures/v3.sqlite3, v4.sqlite3 and v5.sqlite3 and the data
folder tests/fixtures/v6/ were made by that code (tests/fixtures/make_v3.py ... make_v6.py).
Up to schema 6 the version was a `meta` row; since, it is PRAGMA user_version."""

from __future__ import annotations

import shutil
import time
import sqlite3

import pytest

from distren.scheduler import Scheduler
from distren.store import db
from distren.store.blobs import Blob

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "v3.sqlite3"


def assert_current(conn: sqlite3.Connection) -> None:
    """The schema is this distren's, its version in PRAGMA user_version, the old meta row gone."""
    assert conn.execute("PRAGMA user_version").fetchone()[0] == db.SCHEMA_VERSION
    assert conn.execute("SELECT COUNT(*) FROM meta WHERE key='schema_version'").fetchone()[0] == 0


def test_a_version_3_database_is_upgraded_and_its_jobs_go_on(tmp_path):
    path = tmp_path / "distren.sqlite3"
    shutil.copy(FIXTURE, path)
    conn = db.connect(path)
    assert_current(conn)
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


@pytest.mark.parametrize("how", ["user_version", "meta row"])
def test_a_newer_database_is_refused_with_a_clear_error(tmp_path, how):
    path = tmp_path / "distren.sqlite3"
    db.connect(path).close()
    c = sqlite3.connect(path)
    if how == "user_version":
        c.execute("PRAGMA user_version = 99")
    else:   # as a distren of schema 6 and before kept it
        c.execute("PRAGMA user_version = 0")
        c.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '99')")
    c.commit()
    c.close()
    with pytest.raises(db.DatabaseVersionError, match="newer"):
        db.connect(path)
    from conftest import run_cli

    r = run_cli("serve", "--name", "x", "--data", str(tmp_path), timeout=60)
    assert r.returncode == 2 and r.stderr == (f"distren: error: database {path} has schema version 99, newer than "
                                              f"this distren's {db.SCHEMA_VERSION}: upgrade distren\n"), r.stderr


def set_user_version(path, version: int) -> None:
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version = {version}")
    c.commit()
    c.close()


def test_a_database_of_no_known_version_is_refused(tmp_path):
    path = tmp_path / "distren.sqlite3"
    db.connect(path).close()
    set_user_version(path, 2)
    with pytest.raises(db.DatabaseVersionError, match="version 2, which this distren cannot upgrade"):
        db.connect(path)
    set_user_version(path, 0)
    with pytest.raises(db.DatabaseVersionError, match="no schema version"):
        db.connect(path)


def test_a_data_folder_of_schema_6_is_upgraded_and_its_job_renders_to_the_end(tmp_path, server_factory):
    """tests/fixtures/v6/: a real server of schema 6 was stopped with 2 of the 4 frames of
    distren://alpha/1 done (make_v6.py). A server of this distren upgrades the folder, renders
    the 2 frames left (the scene extracted again from the seed blob) and bundles all 4."""
    data = tmp_path / "data"
    shutil.copytree(FIXTURES / "v6", data)
    before = sqlite3.connect(data / "distren.sqlite3")
    assert before.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "6"
    assert before.execute("PRAGMA user_version").fetchone()[0] == 0
    before.close()
    server = server_factory("alpha", slots=2, data=data)
    c = server.client()
    assert c.job("distren://alpha/1")["frames"]["done"] == 2
    job = c.wait("distren://alpha/1", interval=0.2, timeout=120)
    assert job["state"] == "done" and job["frames"]["done"] == 4, job
    # the frames done before the upgrade were not rendered again
    assert [c.frame(f"distren://alpha/1/{i}")["attempts"] for i in (0, 1)] == [1, 1]
    bundle = c.download("distren://alpha/1", tmp_path / "bundle.tar")
    from conftest import bundle_images

    images = bundle_images(bundle)
    assert len(images) == 4 and {size for size, _mode, _pixels in images.values()} == {(48, 36)}, sorted(images)
    # the blobs' reference counts were made from the upgraded folder's cells: deleting the job
    # frees every blob (seed, outputs, bundle) and its scene folder
    c.delete("distren://alpha/1")
    deadline = time.monotonic() + 30
    while (used := c.server_info()["storage"])["blobs"] or used["scenes"]:
        assert time.monotonic() < deadline, used
        time.sleep(0.2)
    assert not any(p.is_file() for p in (data / "blobs").rglob("*"))
    server.stop()
    assert_current(db.connect(data / "distren.sqlite3"))


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
    assert_current(conn)
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

"""Render slots survive faults of their own server: a database error while a result is recorded
does not end the slot, and the frame is not left running for ever."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from distren.backends.base import Backend, FrameTask, RenderResult
from distren.job.spec import FrameSpec, JobSpec
from distren.server.config import ServerConfig
from distren.server.core import Core
from distren.server.runner import Runner
from distren.store.blobs import Blob


class InstantBackend(Backend):
    """Renders nothing, at once (only the slot's own bookkeeping is under test)."""

    name = "instant"

    def version(self) -> str:
        return "1"

    def check(self, settings, scene, frame_ids):
        return []

    async def render(self, task: FrameTask) -> RenderResult:
        out = task.out / "frame.txt"
        out.write_text(str(task.frame))
        return RenderResult(True, "", None, [out])


def core_with_job(tmp_path: Path, frames: int, **config) -> tuple[Core, int]:
    """A server's core (one slot unless `config` says, the instant backend) holding one job of
    `frames` frames."""
    config = {"slots": 1, **config}
    core = Core(ServerConfig(name="me", data=tmp_path / "data", intake_processes=0, **config),
                backends={"instant": InstantBackend()})
    seed = core.blobs.writer()
    seed.write(b"seed")
    blob: Blob = seed.commit()
    job = core.scheduler.begin_job()
    core.scheduler.activate_job(job, JobSpec("j", "instant", {}, [FrameSpec(i) for i in range(frames)]), blob)
    (core.scenes_dir / blob.sha256).mkdir()
    core.storage.release([blob.sha256], written=True)
    return core, job


def run_job(tmp_path: Path, frames: int, fail_completes: int, lease_seconds: float = 1.0) -> dict:
    core, job = core_with_job(tmp_path, frames, lease_seconds=lease_seconds)
    sched = core.scheduler
    real_complete = sched.complete
    failures = [fail_completes]

    def flaky_complete(*args, **kw):
        if failures[0] > 0:
            failures[0] -= 1
            raise sqlite3.OperationalError("database is locked")
        return real_complete(*args, **kw)

    sched.complete = flaky_complete

    async def main() -> dict:
        runner = Runner(core, 1)
        await runner.start()
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if sched.job(job)["state"] == "done":
                    break
            return sched.job(job)
        finally:
            await runner.stop()
            core.close()

    return asyncio.run(main())


def test_a_database_error_while_recording_a_result_does_not_end_the_slot(tmp_path):
    info = run_job(tmp_path, frames=3, fail_completes=2)
    assert info["state"] == "done", info


def test_a_result_that_cannot_be_recorded_is_rendered_again_when_its_lease_expires(tmp_path):
    # more errors than the slot retries: the frame's lease (local too) expires, and the slot,
    # still alive, renders it again
    info = run_job(tmp_path, frames=2, fail_completes=6, lease_seconds=1.0)
    assert info["state"] == "done", info


def test_settings_that_would_make_leases_eternal_are_refused(tmp_path):
    from conftest import run_cli

    for flag, value in (("--lease-seconds", "0"), ("--lease-seconds", "-5"), ("--lease-seconds", "nan"),
                        ("--watch-seconds", "0"), ("--remote-dep-timeout", "inf")):
        r = run_cli("serve", "--name", "x", "--data", str(tmp_path / "d"), flag, value, timeout=30)
        # one line naming the setting and its flag
        last, = r.stderr.strip().splitlines()
        assert r.returncode == 2 and flag in last and ("> 0" in last or "finite" in last), r.stderr
    conf = tmp_path / "c.toml"
    conf.write_text('name = "x"\ndata = "d"\nlease_seconds = 0\n')
    r = run_cli("serve", "--config", str(conf), timeout=30)
    assert r.returncode == 2 and "lease_seconds = 0 in" in r.stderr and "> 0" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def kill_while_blocked(core: Core, job: int, blocked: threading.Event, go: threading.Event, check) -> None:
    """A one-slot runner renders the job's frame 0 until a thread of that render sets `blocked`
    (and waits for `go`); the render is killed there, the thread let go on, and the frame
    renders again. `check()` runs once it is done, after the killed render's thread ended."""
    async def main() -> None:
        runner = Runner(core, 1)
        await runner.start()
        try:
            for _ in range(200):
                if blocked.is_set():
                    break
                await asyncio.sleep(0.02)
            assert blocked.is_set(), "the render never got there"
            attempt, = core.conn.execute("SELECT attempts FROM frames WHERE job_id=? AND frame=0", (job,)).fetchone()
            runner.kill(job, 0, attempt)
            await asyncio.sleep(0.2)
            go.set()
            for _ in range(200):   # the frame goes back and renders again
                await asyncio.sleep(0.05)
                if core.scheduler.job(job)["state"] == "done":
                    break
            assert core.scheduler.job(job)["state"] == "done"
            await asyncio.sleep(0.3)   # the killed render's thread has ended
            check()
        finally:
            await runner.stop()
            core.close()

    asyncio.run(main())



@pytest.mark.parametrize("when", ["before", "after"])
def test_a_render_killed_while_its_outputs_are_stored_leaves_no_blob_pinned(tmp_path, when):
    # A cancel (a job cancelled or deleted, a lost lease) that lands while the outputs are being
    # published in a thread. "before": the render's work folder goes under the thread, whose
    # publish fails and must pin nothing; "after": the thread has published, and its pins must
    # be let go (the blob a candidate for reclaiming) instead of holding it, unreferenced, for
    # ever. The frame goes back and renders again; at the end no pin is left.
    core, job = core_with_job(tmp_path, 1, output_processes=0)
    sched = core.scheduler
    publishing, go = threading.Event(), threading.Event()
    outcomes: list[str] = []
    real_publish = core.blobs.publish_group

    def slow_publish(files):
        first = not publishing.is_set()
        publishing.set()
        if first and when == "before":
            assert go.wait(10)
        try:
            got = real_publish(files)
        except FileNotFoundError:
            outcomes.append("failed")
            raise
        outcomes.append("published")
        if first and when == "after":
            assert go.wait(10)
        return got

    core.blobs.publish_group = slow_publish

    def check() -> None:
        assert len(outcomes) == 2 and outcomes[0 if when == "after" else 1] == \
            ("published" if when == "after" else "failed"), outcomes
        assert not core.blobs.pinned(sched.frame_output(job, 0).sha256)

    kill_while_blocked(core, job, publishing, go, check)


def test_a_render_killed_while_it_pins_its_seed_leaves_it_unpinned(tmp_path):
    # The seed and dependency outputs are pinned in a thread as a render is prepared; a cancel
    # that lands meanwhile must not leave those pins held for ever.
    core, job = core_with_job(tmp_path, 1)
    seed = core.scheduler.job(job)["seed"]["sha256"]
    pinning, go = threading.Event(), threading.Event()
    real_pin = core.blobs.pin

    def slow_pin(sha256):
        got = real_pin(sha256)
        if sha256 == seed and not pinning.is_set():   # the first render's pin waits until it was killed
            pinning.set()
            assert go.wait(10)
        return got

    core.blobs.pin = slow_pin

    def check() -> None:
        assert not core.blobs.pinned(seed)

    kill_while_blocked(core, job, pinning, go, check)

"""Render slots survive faults of their own server: a database error while a result is recorded
does not end the slot, and the frame is not left running for ever."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

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


def run_job(tmp_path: Path, frames: int, fail_completes: int, lease_seconds: float = 1.0) -> dict:
    config = ServerConfig(name="me", data=tmp_path / "data", slots=1, intake_processes=0,
                          lease_seconds=lease_seconds)
    core = Core(config, backends={"instant": InstantBackend()})
    sched = core.scheduler
    seed = core.blobs.writer()
    seed.write(b"seed")
    blob: Blob = seed.commit()
    job = sched.begin_job()
    sched.activate_job(job, JobSpec("j", "instant", {}, [FrameSpec(i) for i in range(frames)]), blob)
    (core.scenes_dir / blob.sha256).mkdir()
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

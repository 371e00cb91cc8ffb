"""Local render slots. Each slot takes a lease on the best ready frame, prepares the frame's
folders (scene, dependency outputs, an empty output folder), has the backend render it in the
sandbox, stores the output tarball as a blob and reports the result to the scheduler."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from ..backends.base import FrameTask
from ..errors import Conflict, DistrenError
from ..scheduler import Lease
from ..store.blobs import Blob
from ..url import parse_url
from .core import Core

log = logging.getLogger("distren.runner")
IDLE_POLL = 1.0


class Runner:
    def __init__(self, core: Core, slots: int):
        self.core = core
        self.slots = slots
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._renders: dict[tuple[int, int], asyncio.Task] = {}
        core.scheduler.on_ready = self.wake

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self.core.scheduler.recover(self.core.lease_owner)
        self._tasks = [asyncio.create_task(self._slot(i), name=f"slot-{i}") for i in range(self.slots)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def kill(self, job: int, frame: int) -> None:
        task = self._renders.get((job, frame))
        if task is not None:
            task.cancel()

    async def _slot(self, index: int) -> None:
        backends = self.core.available_backends()
        while True:
            self._wake.clear()
            lease = self.core.scheduler.claim(self.core.lease_owner, backends)
            if lease is None:
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL)
                except asyncio.TimeoutError:
                    pass
                continue
            render = asyncio.create_task(self._render(lease))
            self._renders[(lease.job, lease.frame)] = render
            try:
                await asyncio.wait({render})
            except asyncio.CancelledError:
                render.cancel()
                await asyncio.gather(render, return_exceptions=True)
                self._interrupted(lease)
                raise
            finally:
                self._renders.pop((lease.job, lease.frame), None)
            if render.cancelled():
                continue  # the job was cancelled; the scheduler already knows
            exc = render.exception()
            if exc is not None:
                log.error("render of %s/%s failed unexpectedly: %r", lease.job, lease.frame, exc)
                self._report_failure(lease, "", f"internal error: {exc}")

    def _interrupted(self, lease: Lease) -> None:
        try:
            self.core.scheduler.fail(lease.job, lease.frame, lease.attempt, "", "interrupted: server stopping", counts=False)
        except DistrenError:
            pass

    def _report_failure(self, lease: Lease, log_text: str, error: str) -> None:
        try:
            self.core.scheduler.fail(lease.job, lease.frame, lease.attempt, log_text, error)
        except Conflict:
            pass  # cancelled or superseded meanwhile

    async def _render(self, lease: Lease) -> None:
        core = self.core
        work = core.work_dir / f"{lease.job}-{lease.frame}-{lease.attempt}"
        out, deps = work / "out", work / "deps"
        try:
            out.mkdir(parents=True)
            deps.mkdir()
            scene = await asyncio.to_thread(core.scene, lease.seed_sha256)
            await asyncio.to_thread(self._fetch_deps, lease, deps)
            backend = core.backends[lease.backend]
            task = FrameTask(
                settings=lease.settings, scene=scene, frame=lease.frame, frame_ids=lease.frame_ids,
                out=out, deps=deps, timeout=core.config.frame_timeout, threads=core.config.threads(),
            )
            result = await backend.render(task)
            if not result.ok:
                self._report_failure(lease, result.log, result.error or "render failed")
                return
            blob: Blob = await asyncio.to_thread(core.put_output, result.outputs, out)
            try:
                core.scheduler.complete(lease.job, lease.frame, lease.attempt, blob, core.name, result.log)
            except Conflict:
                pass
        except DistrenError as exc:
            self._report_failure(lease, "", exc.message)
        except OSError as exc:
            self._report_failure(lease, "", f"cannot prepare or store the frame: {exc}")
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    def _fetch_deps(self, lease: Lease, deps: Path) -> None:
        """Dependency outputs unpacked at deps/<server>/<job>/<frame>/ (in the sandbox:
        /job/_distren/deps/<server>/<job>/<frame>/)."""
        for text in lease.depends:
            url = parse_url(text)
            if url.server != self.core.name:
                raise Conflict(f"dependency {url} is on another server")  # federation: later
            blob = self.core.scheduler.frame_output(url.job, url.frame)
            self.core.extract_output(blob, deps / url.server / str(url.job) / str(url.frame))

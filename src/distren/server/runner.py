"""Render slots. A free slot leases the best ready frame of its own server; when there is none
it claims one from a peer (federation). It prepares the frame's folders (scene, dependency
outputs, an empty output folder), has the backend render it in the sandbox, stores the output
tarball as a blob and reports the result to the frame's home server: its own scheduler, or the
peer that granted the lease (heartbeating while it renders)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

from .. import failpoints
from ..backends.base import FrameTask, RenderResult
from ..errors import Conflict, DistrenError
from ..scheduler import Lease
from ..store.blobs import Blob
from ..url import parse_url
from .core import Core

log = logging.getLogger("distren.runner")
IDLE_POLL = 1.0
EXPIRY_PERIOD = 0.5


class Runner:
    def __init__(self, core: Core, slots: int, federation=None):
        self.core = core
        self.slots = slots
        self.federation = federation
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._renders: dict[tuple[str, int, int], asyncio.Task] = {}
        core.scheduler.on_ready = self.wake

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self.core.scheduler.recover(self.core.lease_owner)
        self._tasks = [asyncio.create_task(self._slot(i), name=f"slot-{i}") for i in range(self.slots)]
        self._tasks.append(asyncio.create_task(self._expire_loop(), name="lease-expiry"))

    async def _expire_loop(self) -> None:
        """Leases this server granted to peers and that were not renewed: the frames are
        ready again. Runs with or without federation (leases outlive a restart)."""
        while True:
            await asyncio.sleep(EXPIRY_PERIOD)
            try:
                n = self.core.scheduler.expire_leases()
                if n:
                    log.warning("%d lease(s) expired; their frames are ready again", n)
            except Exception:
                log.exception("lease expiry failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def kill(self, job: int, frame: int, home: str | None = None) -> None:
        task = self._renders.get((home or self.core.name, job, frame))
        if task is not None:
            task.cancel()

    async def _next(self, backends: list[str]) -> tuple[str | None, Lease] | None:
        lease = self.core.scheduler.claim(self.core.lease_owner, backends)
        if lease is not None:
            return None, lease
        if self.federation is not None:
            return await self.federation.claim(backends)
        return None

    async def _slot(self, index: int) -> None:
        backends = self.core.available_backends()
        while True:
            self._wake.clear()
            try:
                got = await self._next(backends)
            except Exception:  # a bad peer answer or a database hiccup must not end the slot
                log.exception("slot %d: could not take work; trying again", index)
                await asyncio.sleep(IDLE_POLL)
                continue
            if got is None:
                idle = IDLE_POLL
                if self.federation is not None:
                    idle = min(IDLE_POLL, max(0.05, self.federation.next_claim_in()))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle)
                continue
            home, lease = got
            if home is not None:
                self.wake()  # a peer has work: the other idle slots ask it too, now
            key = (home or self.core.name, lease.job, lease.frame)
            render = asyncio.create_task(self._render(home, lease))
            self._renders[key] = render
            try:
                await asyncio.wait({render})
            except asyncio.CancelledError:
                render.cancel()
                await asyncio.gather(render, return_exceptions=True)
                await self._interrupted(home, lease)
                raise
            finally:
                self._renders.pop(key, None)
            if not render.cancelled() and render.exception() is not None:
                exc = render.exception()
                log.error("render of %s failed unexpectedly: %r", key, exc)
                if home is None:
                    self._local_failure(lease, "", f"internal error: {exc}")

    async def _interrupted(self, home: str | None, lease: Lease) -> None:
        """This server is stopping: give the frame back at once (not a failure of the frame)."""
        if home is None:
            self._local_failure(lease, "", "interrupted: server stopping", counts=False)
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.federation.report_failure(
                home, lease, "", f"interrupted: {self.core.name} stopping", interrupted=True), 5)

    def _local_failure(self, lease: Lease, log_text: str, error: str, counts: bool = True) -> None:
        try:
            self.core.scheduler.fail(lease.job, lease.frame, lease.attempt, log_text, error, counts=counts)
        except Conflict:
            pass  # cancelled or superseded meanwhile

    async def _render(self, home: str | None, lease: Lease) -> None:
        core = self.core
        work = core.work_dir / f"{home or core.name}-{lease.job}-{lease.frame}-{lease.attempt}"
        heart = asyncio.create_task(self._heartbeat(home, lease, asyncio.current_task())) if home else None
        try:
            result = await self._prepare_and_render(home, lease, work)
            blob = None
            if result.ok:
                try:
                    blob = await asyncio.to_thread(core.put_output, result.outputs, work / "out")
                except OSError as exc:  # a full disk fails the frame, not the server
                    result = RenderResult(False, result.log, f"cannot store the output: {exc.strerror or exc}", [])
            # the heartbeat goes on during the upload: a long upload must not lose the lease
            await self._report(home, lease, result, blob)
        finally:
            if heart is not None:
                heart.cancel()
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _prepare_and_render(self, home: str | None, lease: Lease, work: Path) -> RenderResult:
        core = self.core
        out, deps = work / "out", work / "deps"
        try:
            out.mkdir(parents=True)
            deps.mkdir()
            if home is not None:
                await self.federation.fetch_blob(home, lease.seed_sha256, lease.seed_size)
            scene = await asyncio.to_thread(core.scene, lease.seed_sha256)
            for dep in lease.depends:
                if home is not None:
                    await self.federation.fetch_blob(home, dep["sha256"], dep["size"])
                url = parse_url(dep["url"])
                dest = deps / url.server / str(url.job) / str(url.frame)
                await asyncio.to_thread(core.extract_output, Blob(dep["sha256"], dep["size"]), dest)
        except DistrenError as exc:
            return RenderResult(False, "", f"cannot prepare the frame: {exc.message}", [])
        except OSError as exc:
            return RenderResult(False, "", f"cannot prepare the frame: {exc}", [])
        task = FrameTask(
            settings=lease.settings, scene=scene, frame=lease.frame, frame_ids=lease.frame_ids,
            out=out, deps=deps, timeout=lease.timeout or core.config.frame_timeout, threads=core.config.threads(),
            limits=core.config.render_limits(lease.timeout),
            home=home or core.name, job=lease.job, depends=tuple(d["url"] for d in lease.depends),
        )
        return await core.backends[lease.backend].render(task)

    async def _report(self, home: str | None, lease: Lease, result: RenderResult, blob: Blob | None) -> None:
        core = self.core
        if home is None:
            if blob is not None:
                failpoints.hit("output")
                try:
                    core.scheduler.complete(lease.job, lease.frame, lease.attempt, blob, core.name, result.log)
                except Conflict:
                    pass
                if failpoints.armed("done") and core.scheduler.job(lease.job)["state"] == "done":
                    failpoints.hit("done")
            else:
                self._local_failure(lease, result.log, result.error or "render failed")
            return
        try:
            if blob is not None:
                await self.federation.upload_result(home, lease, blob, result.log)
            else:
                await self.federation.report_failure(home, lease, result.log, result.error or "render failed")
        except DistrenError as exc:
            # 409: our lease expired or was superseded; the home server has moved on
            log.warning("result of distren://%s/%d/%d attempt %d not taken: %s",
                        home, lease.job, lease.frame, lease.attempt, exc.message)

    async def _heartbeat(self, home: str, lease: Lease, render: asyncio.Task) -> None:
        """Renew the lease every third of its length; stop the render when the home server
        says the lease is gone (409)."""
        period = self.federation.settings.heartbeat(lease.lease_seconds)
        while True:
            await asyncio.sleep(period)
            try:
                await self.federation.heartbeat(home, lease)
            except DistrenError as exc:
                status = getattr(exc, "http_status", None)
                if status in (404, 409):
                    log.warning("lease of distren://%s/%d/%d lost: %s", home, lease.job, lease.frame, exc.message)
                    render.cancel()
                    return
                # unreachable: keep rendering, try again next period

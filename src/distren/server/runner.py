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
import time
from pathlib import Path

from .. import failpoints
from ..backends.base import FrameTask, RenderResult
from ..errors import Conflict, DistrenError
from ..liveness import FarmView, Liveness, RendererView
from ..scheduler import Lease, with_depends
from ..store.blobs import Blob
from ..url import parse_url
from .core import Core, run_steps

log = logging.getLogger("distren.runner")
IDLE_POLL = 1.0
EXPIRY_PERIOD = 0.5
LIVENESS_PERIOD = 2.0
# A slot that cannot record a result (a database error) tries again this often, this many
# times; after that the lease runs out and the frame is rendered again.
REPORT_RETRIES = 5


class Runner:
    def __init__(self, core: Core, slots: int, federation=None):
        self.core = core
        self.slots = slots
        self.federation = federation
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._renders: dict[tuple[str, int, int, int], asyncio.Task] = {}
        self.liveness = Liveness(core.scheduler, core.config.remote_dep_timeout)
        self.loop_lag_ms = {"last": 0.0, "max": 0.0}
        core.scheduler.on_ready = self.wake

    def wake(self) -> None:
        self._wake.set()
        if self.federation is not None:
            self.federation.work_appeared()

    async def start(self) -> None:
        self.core.scheduler.recover(self.core.lease_owner)
        # cancels and retries a stop interrupted are finished before anything is claimed
        await run_steps(self.core.scheduler.resume_steps())
        self._tasks = [asyncio.create_task(self._slot(i), name=f"slot-{i}") for i in range(self.slots)]
        self._tasks.append(asyncio.create_task(self._expire_loop(), name="lease-expiry"))
        self._tasks.append(asyncio.create_task(self._liveness_loop(), name="liveness"))
        self._tasks.append(asyncio.create_task(self._lag_loop(), name="loop-lag"))

    async def _lag_loop(self) -> None:
        """How late the event loop wakes a 0.1 s sleep: the longest delay that anything on the
        loop caused (`GET /api/v1/server` shows it as loop_lag_ms)."""
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.1)
            lag = (loop.time() - t0 - 0.1) * 1000
            self.loop_lag_ms["last"] = round(lag, 1)
            self.loop_lag_ms["max"] = round(max(self.loop_lag_ms["max"], lag), 1)

    async def _expire_loop(self) -> None:
        """Leases not renewed, this server's slots' and its peers': the frames are ready again.
        Runs with or without federation (leases outlive a restart)."""
        while True:
            await asyncio.sleep(EXPIRY_PERIOD)
            try:
                n = self.core.scheduler.expire_leases()
                if n:
                    log.warning("%d lease(s) expired; their frames are ready again", n)
            except Exception:
                log.exception("lease expiry failed")

    def farm_view(self) -> FarmView:
        """This server's slots and its peers, as the liveness check sees them."""
        own = frozenset(self.core.available_backends()) if self.slots > 0 else frozenset()
        renderers = [RendererView(self.core.lease_owner, own)]
        peers: frozenset[str] = frozenset()
        if self.federation is not None:
            renderers += self.federation.renderer_views()
            peers = frozenset(self.federation.peers.peers)
        return FarmView(tuple(renderers), peers, time.time())

    async def _liveness_loop(self) -> None:
        """Every few seconds: what can no longer run fails with its reason (liveness.py)."""
        while True:
            await asyncio.sleep(LIVENESS_PERIOD)
            try:
                view = self.farm_view()
                if self.federation is not None:
                    await self.federation.probe_peers(set(view.renderers[0].backends or ()))
                    view = self.farm_view()
                for _ in self.liveness.check_steps(view):
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("liveness check failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def kill(self, job: int, frame: int, attempt: int, home: str | None = None) -> None:
        task = self._renders.get((home or self.core.name, job, frame, attempt))
        if task is not None:
            task.cancel()

    def lease_seconds(self) -> float:
        return self.core.config.lease_seconds

    async def _next(self, backends: list[str]) -> tuple[str | None, Lease] | None:
        """A frame of this server's, else one claimed from a peer. While the peers are asked,
        work of this server's own that comes meanwhile (a wake) is taken at once; a peer's
        lease that arrives after that is handed back (interrupted: no failure of the frame)."""
        lease = await with_depends(self.core.scheduler, self.core.scheduler.claim(
            self.core.lease_owner, backends, self.lease_seconds()))
        if lease is not None:
            return None, lease
        if self.federation is None:
            return None
        asking = asyncio.create_task(self.federation.claim(backends))
        woken = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({asking, woken}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            asking.cancel()
            raise
        finally:
            woken.cancel()
        if asking.done():
            return asking.result()
        lease = await with_depends(self.core.scheduler, self.core.scheduler.claim(
            self.core.lease_owner, backends, self.lease_seconds()))
        if lease is None:
            return await asking
        asking.add_done_callback(self._hand_back)
        return None, lease

    def _hand_back(self, asking: asyncio.Task) -> None:
        if asking.cancelled() or asking.exception() is not None or asking.result() is None:
            return
        home, lease = asking.result()
        task = asyncio.ensure_future(self.federation.report_failure(
            home, lease, "", f"handed back: {self.core.name} took work of its own", interrupted=True))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # logged by the peer client

    async def _slot(self, index: int) -> None:
        """One render slot. It never ends on an error: whatever goes wrong is logged, the slot
        waits a moment and goes on; a lease it could not settle expires by itself."""
        backends = self.core.available_backends()
        while True:
            try:
                await self._slot_turn(backends)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("slot %d: unexpected error; going on", index)
                await asyncio.sleep(IDLE_POLL)

    async def _slot_turn(self, backends: list[str]) -> None:
        self._wake.clear()
        try:
            got = await self._next(backends)
        except Exception:  # a bad peer answer or a database hiccup must not end the slot
            log.exception("could not take work; trying again")
            await asyncio.sleep(IDLE_POLL)
            return
        if got is None:
            idle = IDLE_POLL
            if self.federation is not None:
                idle = min(IDLE_POLL, max(0.05, self.federation.next_claim_in()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle)
            return
        home, lease = got
        if home is not None:
            self._wake.set()  # a peer has work: the other idle slots ask it too, now
        key = (home or self.core.name, lease.job, lease.frame, lease.attempt)
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
                await self._local_failure(lease, "", f"internal error: {exc}")

    async def _interrupted(self, home: str | None, lease: Lease) -> None:
        """This server is stopping: give the frame back at once (not a failure of the frame)."""
        if home is None:
            await self._local_failure(lease, "", "interrupted: server stopping", counts=False)
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.federation.report_failure(
                home, lease, "", f"interrupted: {self.core.name} stopping", interrupted=True), 5)

    async def _local_failure(self, lease: Lease, log_text: str, error: str, counts: bool = True) -> None:
        await self._settle(lambda: self.core.scheduler.fail(
            lease.job, lease.frame, lease.attempt, log_text, error, counts=counts, owner=self.core.lease_owner))

    async def _settle(self, record) -> None:
        """Record a local result, retrying a database error a few times; Conflict means the
        frame moved on (cancelled, or the lease expired) and is not an error."""
        delay = 0.2
        for attempt in range(REPORT_RETRIES):
            try:
                record()
                return
            except Conflict:
                return
            except Exception:
                if attempt == REPORT_RETRIES - 1:
                    log.exception("cannot record a result; its lease will expire and the frame run again")
                    return
                log.warning("cannot record a result yet; trying again", exc_info=True)
                await asyncio.sleep(delay)
                delay *= 2

    async def _render(self, home: str | None, lease: Lease) -> None:
        core = self.core
        work = core.work_dir / f"{home or core.name}-{lease.job}-{lease.frame}-{lease.attempt}"
        heart = asyncio.create_task(self._heartbeat(home, lease, asyncio.current_task()))
        cleaned = False
        try:
            result = await self._prepare_and_render(home, lease, work)
            blob = None
            if result.ok:
                try:
                    # one trip to a thread: the output into the blob store, the work folder gone
                    blob = await asyncio.to_thread(_store_output, core, result.outputs, work)
                    cleaned = True
                except OSError as exc:  # a full disk fails the frame, not the server
                    result = RenderResult(False, result.log, f"cannot store the output: {exc.strerror or exc}", [])
            # the heartbeat goes on during the upload: a long upload must not lose the lease
            await self._report(home, lease, result, blob)
        finally:
            if heart is not None:
                heart.cancel()
            if not cleaned:
                await asyncio.to_thread(shutil.rmtree, work, True)

    async def _prepare_and_render(self, home: str | None, lease: Lease, work: Path) -> RenderResult:
        core = self.core
        out, deps = work / "out", work / "deps"
        try:
            if home is not None:
                await self.federation.fetch_blob(home, lease.seed_sha256, lease.seed_size)
            scene = await asyncio.to_thread(_prepare, core, out, deps, lease.seed_sha256)
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
            settings=lease.settings, scene=scene, frame=lease.frame,
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
                await self._settle(lambda: core.scheduler.complete(
                    lease.job, lease.frame, lease.attempt, blob, core.name, result.log, owner=core.lease_owner))
                if failpoints.armed("done") and core.scheduler.job(lease.job)["state"] == "done":
                    failpoints.hit("done")
            else:
                await self._local_failure(lease, result.log, result.error or "render failed")
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

    async def _heartbeat(self, home: str | None, lease: Lease, render: asyncio.Task) -> None:
        """Renew the lease every third of its length (a local slot's lease in the database, a
        peer's lease at its home server); stop the render when the lease is gone (cancelled,
        expired, superseded)."""
        if home is None:
            period = self.lease_seconds() / 3
        else:
            period = self.federation.settings.heartbeat(lease.lease_seconds)
        while True:
            await asyncio.sleep(period)
            try:
                if home is None:
                    self.core.scheduler.heartbeat(lease.job, lease.frame, lease.attempt, self.core.lease_owner,
                                                  self.lease_seconds())
                else:
                    await self.federation.heartbeat(home, lease)
            except DistrenError as exc:
                status = getattr(exc, "http_status", None) or exc.status
                if status in (404, 409):
                    log.warning("lease of distren://%s/%d/%d lost: %s", home or self.core.name, lease.job,
                                lease.frame, exc.message)
                    render.cancel()
                    return
                # unreachable: keep rendering, try again next period
            except Exception:
                log.warning("heartbeat failed; trying again", exc_info=True)


def _prepare(core: Core, out: Path, deps: Path, seed_sha256: str) -> Path:
    """A frame's work folders, and its scene (extracted again if missing)."""
    out.mkdir(parents=True)
    deps.mkdir()
    return core.scene(seed_sha256)


def _store_output(core: Core, outputs: list[Path], work: Path) -> Blob:
    """The frame's output into the blob store; then its work folder is removed."""
    blob = core.put_output(outputs, work / "out")
    shutil.rmtree(work, True)
    return blob

"""Render slots. A free slot leases the best ready frame of its own server; when there is none
it claims one from a peer (federation). It prepares the frame's folders (scene, dependency
outputs, an empty output folder), has the backend render it in the sandbox, stores the output
tarball as a blob and reports the result to the frame's home server: its own scheduler, or the
peer that granted the lease (heartbeating while it renders)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import failpoints, logs
from ..backends.base import Backend, ChunkControl, FrameTask, RenderResult
from ..chunks import FrameTimes, chunk_size, tail_to_release
from ..concurrency import Concurrency
from ..errors import Conflict, DistrenError, NotFound
from ..liveness import FarmView, Liveness, RendererView
from ..scheduler import Lease, with_depends
from ..store.blobs import Blob, finish_pinned
from ..url import parse_url
from .config import usable_cores
from .core import Core, run_steps

log = logging.getLogger("distren.runner")
IDLE_POLL = 1.0
EXPIRY_PERIOD = 0.5
LIVENESS_PERIOD = 2.0
# A slot that cannot record a result (a database error) tries again this often, this many
# times; after that the lease runs out and the frame is rendered again.
REPORT_RETRIES = 5
# a work folder holding more dependencies' outputs than this is removed by `rm -rf` (_remove_work)
MANY_DEPENDENCIES = 1000
DRAINING = "server draining"
# Splitting chunks (docs/architecture.md, "Splitting a chunk"): a renderer that found nothing
# makes this server look for chunks to split at most this often; a holder is asked to split
# its chunk of a job at most this often; a split chunk's outputs are looked at this often
# until its renderer has passed the frames it kept.
SPLIT_LOOK_PERIOD = 0.5
SPLIT_ASK_PERIOD = 1.0
SPLIT_WATCH_PERIOD = 0.1


@dataclass
class ChunkRun:
    """A chunk being rendered here: its leases, those not reported yet (`unsettled`), and what
    splitting it needs: the renderer's task (its outputs tell how far it got), the frames
    given back, the frames whose giving back is in doubt (the home's answer was lost: a lost
    lease of theirs stops nothing), the renderer's control (its output so far; stopped once
    it has passed the frames kept), and a lock held while it is split (one split at a time;
    the render's end waits for it, so that what was given back is known)."""

    home: str | None
    leases: list[Lease]
    unsettled: dict[int, Lease]
    threads: int = 1
    rendering: bool = True
    task: FrameTask | None = None
    released: set[int] = field(default_factory=set)
    uncertain: set[int] = field(default_factory=set)
    control: ChunkControl = field(default_factory=ChunkControl)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def held(self) -> list[int]:
        return [one.frame for one in self.leases if one.frame in self.unsettled and one.frame not in self.released]

    def begun(self, backend: Backend | None) -> int | None:
        """The frame the chunk's renderer has begun, as it says (`Backend.frame_begun`), or None."""
        if backend is None or self.task is None or not self.control.recent:
            return None
        return backend.frame_begun(self.task, self.control.recent.decode("utf-8", "replace"))

    def left(self, backend: Backend | None) -> float:
        """The frames still to render: those held that the renderer has not begun, and half
        the one it is on (as it says; when it does not say, all held)."""
        if not self.rendering:
            return 0.0
        held, begun = self.held(), self.begun(backend)
        if begun is None:
            return float(len(held))
        return sum(1.0 if f > begun else 0.5 for f in held if f >= begun)


class Runner:
    def __init__(self, core: Core, slots: int, federation=None):
        self.core = core
        self.slots = slots
        self.federation = federation
        self._wake = asyncio.Event()
        if federation is not None:   # a peer that tells of new work wakes the idle slots
            federation.on_announced = self._wake.set
            federation.on_hungry = self.hungry          # a peer found no work here
            federation.on_split = self._split_soon      # a home asks for a chunk's tail back
        self._tasks: list[asyncio.Task] = []
        self.frame_times = FrameTimes()
        auto = core.config.slots_auto and slots > 0
        self.concurrency = Concurrency(min(usable_cores(), slots) if auto else slots, slots)
        self._renders: dict[tuple[str, int, int, int], asyncio.Task] = {}
        self._chunk_runs: dict[tuple[str, int], list[ChunkRun]] = {}   # (home, job) -> its chunks here
        self._split_looked = 0.0
        self._split_asked: dict[tuple[int, str], float] = {}
        self._split_tasks: set[asyncio.Task] = set()
        self.liveness = Liveness(core.scheduler, core.config.remote_dep_timeout)
        # drained (`POST /server/drain`): the slots start nothing new, of this server or of peers
        self.draining = core.draining()
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
        self.concurrency.start()
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
                    self.core.metrics.lease_expiries.inc(n)
                    log.warning("%d lease(s) expired; their frames are ready again", n)
            except Exception:
                log.exception("lease expiry failed")

    def farm_view(self) -> FarmView:
        """This server's slots and its peers, as the liveness check sees them."""
        own = frozenset(self.core.available_backends()) if self.slots > 0 else frozenset()
        # a drained server's slots still count as its renderer (it comes back): its frames wait
        renderers = [RendererView(self.core.lease_owner, own, not self.draining,
                                  why="draining" if self.draining else None)]
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
        await self.concurrency.stop()
        tasks = self._tasks + list(self._split_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    def set_draining(self, on: bool) -> int:
        """Drain the server (or end the drain): its slots start nothing new, neither frames of
        its own nor frames claimed from peers; renders of peers' frames running here are
        stopped and their leases handed back at once (interrupted, not a failure of the frame);
        renders of its own frames finish. Kept across restarts. Returns how many peer leases
        are being handed back."""
        self.core.set_draining(on)
        self.draining = on
        if not on:
            self.wake()
            return 0
        peers = [(key, task) for key, task in self._renders.items() if key[0] != self.core.name]
        for _, task in peers:
            task.cancel()   # _run hands every lease of the render back
        return len(peers)

    def kill(self, job: int, frame: int, attempt: int, home: str | None = None) -> None:
        task = self._renders.get((home or self.core.name, job, frame, attempt))
        if task is not None:
            task.cancel()

    def lease_seconds(self) -> float:
        return self.core.config.lease_seconds

    # -- splitting chunks ----------------------------------------------------------------
    def hungry(self, claimer: str, backends) -> None:
        """A renderer (one of this server's slots, or a peer that claimed here) found no frame
        of this server's to lease: the chunks of this server's jobs that others are rendering
        are asked for their unstarted tails (docs/architecture.md, "Splitting a chunk"): a
        chunk of this server's slots at once, a peer's by `POST /peer/split`. A render-only
        worker's chunks are not split (it cannot be asked). This server's slots split each
        other's chunks only while a core is idle. Looked at most every SPLIT_LOOK_PERIOD s,
        each holder asked at most every SPLIT_ASK_PERIOD s per job; bounded work
        (Scheduler.split_candidates)."""
        now = time.monotonic()
        if now - self._split_looked < SPLIT_LOOK_PERIOD:
            return
        try:
            candidates = self.core.scheduler.split_candidates(claimer, backends)
        except Exception:
            log.exception("could not look for chunks to split")
            return
        if candidates:   # (a look that found nothing for this claimer does not hold back others)
            self._split_looked = now
        for key in [k for k, t in self._split_asked.items() if t < now - SPLIT_ASK_PERIOD]:
            del self._split_asked[key]
        for job, holder in candidates:
            if (job, holder) in self._split_asked:
                continue
            if holder == self.core.lease_owner:
                if claimer == holder and self.concurrency.rendering >= min(usable_cores(), self.concurrency.limit):
                    continue   # every core renders already: another renderer would only share them
                self._split_asked[(job, holder)] = now
                self._split_soon(None, job)
            elif self.federation is not None and holder in self.federation.peers.peers:
                self._split_asked[(job, holder)] = now
                self._spawn(self.federation.ask_split(holder, job))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._split_tasks.add(task)
        task.add_done_callback(self._split_done)

    def _split_done(self, task: asyncio.Task) -> None:
        self._split_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("splitting a chunk failed: %r", task.exception())

    def _split_soon(self, home: str | None, job: int) -> None:
        self._spawn(self.split(home, job))

    async def split(self, home: str | None, job: int) -> list[int]:
        """Give back the unstarted tail of each chunk of the job (`home`'s, None: this
        server's) rendering here: the chunks that render side by side share this server's
        cores, and each keeps what it can finish about when the other renderer finishes what
        it takes. A chunk's renderer is stopped once it has passed the frames it keeps.
        Returns the frames given back."""
        given: list[int] = []
        for run in list(self._chunk_runs.get((home or self.core.name, job), ())):
            if run.lock.locked():
                continue   # being split already
            async with run.lock:
                if run.task is not None and run.rendering:
                    given += await self._split_run(home, job, run)
        return given

    async def _split_run(self, home: str | None, job: int, run: ChunkRun) -> list[int]:
        first = run.leases[0]
        backend = self.core.backends[first.backend]
        key = (home or self.core.name, job)
        started = await asyncio.to_thread(_frames_with_output, backend, run.task)
        give = tail_to_release(run.held(), started, self.frame_times.get(key),
                               self.frame_times.startup(first.backend))
        if not give or not run.rendering:
            return []
        leases = [run.unsettled[f] for f in give]
        run.released.update(give)   # before asking: a heartbeat meanwhile must not stop the render
        try:
            if home is None:
                released = self.core.scheduler.release(job, [(one.frame, one.attempt) for one in leases],
                                                       self.core.lease_owner)
            else:
                released = await self.federation.release(home, job, leases)
        except Exception:
            # not known whether the home took them back: they render here as if kept, and a
            # lease of theirs found lost is only dropped (it was given back after all)
            run.released.difference_update(give)
            run.uncertain.update(give)
            raise
        run.released.difference_update(set(give) - set(released))
        for f in released:
            run.unsettled.pop(f, None)
        if released:
            self.core.metrics.chunk_splits.inc()
            log.info("gave back frames %s of distren://%s/%d (a chunk's unstarted tail) for another renderer",
                     _ranges(released), home or self.core.name, job,
                     extra=logs.about(home or self.core.name, job, released[0]))
            self._spawn(self._stop_after(run, backend, min(released)))
        return released

    async def _stop_after(self, run: ChunkRun, backend: Backend, first_given: int) -> None:
        """Stop the split chunk's renderer once it has begun a frame given back, as it says
        (Backend.frame_begun: the frames kept are then whole and are judged on their
        outputs), or, when it does not say, once it has written output for such a frame (the
        frames before that one are then whole: the chunk's usual verdicts)."""
        control = run.control
        kept = [one.frame for one in run.leases if one.frame < first_given]
        while run.rendering:
            begun = run.begun(backend)
            if begun is None or begun >= first_given:
                with_output = await asyncio.to_thread(_frames_with_output, backend, run.task)
                if begun is not None and all(f in with_output for f in kept):
                    # (what the renderer says is believed only when every frame kept has an
                    # output: a nested render's frame number must not stop it early)
                    control.whole_through = first_given - 1
                    control.stop.set()
                    return
                if any(f >= first_given for f in with_output):
                    control.stop.set()
                    return
            await asyncio.sleep(SPLIT_WATCH_PERIOD)

    async def _next(self, backends: list[str]) -> tuple[str | None, Lease] | None:
        """A frame of this server's, else one claimed from a peer. While the peers are asked,
        work of this server's own that comes meanwhile (a wake) is taken at once; a peer's
        lease that arrives after that is handed back (interrupted: no failure of the frame)."""
        lease = await with_depends(self.core.scheduler, self.core.scheduler.claim(
            self.core.lease_owner, backends, self.lease_seconds()))
        if lease is not None:
            return None, lease
        self.hungry(self.core.lease_owner, backends)
        if self.federation is None or self.core.storage.low:
            return None   # (below the free-space reserve: peers' frames need their seeds fetched)
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
        waits a moment and goes on; a lease it could not settle expires by itself. The renderers
        found are asked in a thread: at start-up their version probes may still run (Blender's
        takes a while), and the event loop does not wait for them."""
        backends = await asyncio.to_thread(self.core.available_backends)
        while True:
            try:
                await self._slot_turn(backends)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("slot %d: unexpected error; going on", index)
                await asyncio.sleep(IDLE_POLL)

    async def _slot_turn(self, backends: list[str]) -> None:
        """Take a frame (or a chunk) and render it, within the concurrency limit: a slot beyond
        it does not claim; a slot that found nothing waits without holding a place."""
        await self.concurrency.acquire()
        try:
            got = await self._take(backends)
            if got is not None:
                await self._run(*got)
                return
        finally:
            await self.concurrency.release()
        idle = IDLE_POLL
        if self.federation is not None:
            idle = min(IDLE_POLL, max(0.05, self.federation.next_claim_in()))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), idle)

    async def _take(self, backends: list[str]) -> tuple[str | None, Lease] | None:
        self._wake.clear()
        if self.draining:
            return None
        try:
            got = await self._next(backends)
        except Exception:  # a bad peer answer or a database hiccup must not end the slot
            log.exception("could not take work; trying again")
            await asyncio.sleep(IDLE_POLL)
            return None
        if got is not None and self.draining:   # drained while it was claiming: back at once
            await self._interrupted(got[0], got[1], DRAINING)
            return None
        return got

    async def _run(self, home: str | None, lease: Lease) -> None:
        if home is not None:
            self._wake.set()  # a peer has work: the other idle slots ask it too, now
        leases = [lease]
        left: int | None = None   # the job's ready frames left once this chunk is leased
        try:
            more, left = await self._chunk(home, lease)
            leases += more
        except Exception:  # a chunk is an optimisation: the first frame renders anyway
            log.exception("could not lease a chunk; rendering one frame")
        if self.draining:   # drained while the chunk was leased: nothing starts
            for one in leases:
                await self._interrupted(home, one, DRAINING)
            return
        keys = [(home or self.core.name, one.job, one.frame, one.attempt) for one in leases]
        render = asyncio.create_task(self._render(home, leases, self._threads(left)))
        for key in keys:
            self._renders[key] = render
        self.concurrency.rendering += 1
        try:
            await asyncio.wait({render})
        except asyncio.CancelledError:
            render.cancel()
            await asyncio.gather(render, return_exceptions=True)
            for one in leases:
                await self._interrupted(home, one)
            raise
        finally:
            self.concurrency.rendering -= 1
            for key in keys:
                self._renders.pop(key, None)
        if render.cancelled():
            # a lease was lost (cancel, expiry), the job was cancelled, or the server was
            # drained (a peer's frame): the frames go back at once, not a failure of theirs
            # (those that moved on refuse)
            why = DRAINING if home is not None and self.draining else \
                "its render was stopped (a lease of its chunk was lost)"
            for one in leases:
                await self._interrupted(home, one, why)
        elif render.exception() is not None:
            exc = render.exception()
            log.error("render of %s failed unexpectedly: %r", keys, exc)
            if home is None:
                for one in leases:
                    await self._local_failure(one, "", f"internal error: {exc}")

    async def _chunk(self, home: str | None, lease: Lease) -> tuple[list[Lease], int | None]:
        """More frames to render with `lease` in the same renderer process (chunks.py says how
        many, from what this server measured of the job): this server's own frames, or a
        peer's (asked of the home, which gave the job's <chunk> and ready count with the lease).
        Also the job's ready frames left after them, as far as known (None: not known)."""
        core = self.core
        backend = core.backends.get(lease.backend)
        key = (home or core.name, lease.job)
        if backend is None:
            return [], None
        if home is None:
            requested, ready, servers = core.scheduler.chunk_request(lease.job)
        else:
            requested, ready, servers = lease.chunk, lease.ready or 0, lease.servers or 1
        known = ready if home is None or lease.ready is not None else None
        if key in self.frame_times.alone or not backend.chunkable(lease.settings):
            return [], known
        # what is left of the job's chunks rendering here (bounded by the slots' chunks)
        in_flight = sum(run.left(backend) for run in self._chunk_runs.get(key, ()))
        size = chunk_size(requested=requested, chunkable=True, seconds_per_frame=self.frame_times.get(key),
                          ready=ready + 1, slots=self.concurrency.limit, in_flight=in_flight, servers=servers)
        if size <= 1:
            return [], known
        if home is not None:
            more = await self.federation.claim_more(home, lease, size - 1)
            return more, None if known is None else max(0, known - len(more))
        more = core.scheduler.claim_more(lease, size - 1)
        try:
            return [await with_depends(core.scheduler, one) for one in more], max(0, ready - len(more))
        except BaseException:
            for one in more:   # leased, never to be rendered: back at once
                await self._local_failure(one, "", "interrupted: its chunk could not start", counts=False)
            raise

    def _threads(self, left: int | None) -> int:
        """Threads for a render: its share of the usable cores (ServerConfig.threads), or all
        of them for one of a job's last renders (no ready frame of the job left once it is
        leased), unless --render-threads is set. The job's other renders end before it and
        free their cores, which would idle while it renders on its share; meanwhile the renders
        share the CPU, the work the same (docs/architecture.md, "How a frame flows", Chunk)."""
        config = self.core.config
        if config.render_threads or left is None or left > 0:
            return config.threads()
        return max(config.threads(), usable_cores())

    async def _interrupted(self, home: str | None, lease: Lease, why: str = "server stopping") -> None:
        """Give the frame back at once (not a failure of the frame): this server is stopping,
        or the render stopped for another frame's sake."""
        if home is None:
            await self._local_failure(lease, "", f"interrupted: {why}", counts=False)
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.federation.report_failure(
                home, lease, "", f"interrupted: {self.core.name}: {why}", interrupted=True), 5)

    async def _local_failure(self, lease: Lease, log_text: str, error: str, counts: bool = True) -> None:
        if counts:
            log.warning("distren://%s/%d/%d attempt %d failed: %s", self.core.name, lease.job, lease.frame,
                        lease.attempt, error, extra=logs.about(self.core.name, lease.job, lease.frame))
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
            except (Conflict, NotFound):   # the frame moved on, or its job was deleted
                return
            except Exception:
                if attempt == REPORT_RETRIES - 1:
                    log.exception("cannot record a result; its lease will expire and the frame run again")
                    return
                log.warning("cannot record a result yet; trying again", exc_info=True)
                await asyncio.sleep(delay)
                delay *= 2

    async def _render(self, home: str | None, leases: list[Lease], threads: int) -> None:
        """Render one frame, or a chunk of consecutive frames of one job in one renderer
        process; store each done frame's output and report each frame on its own."""
        core = self.core
        first = leases[0]
        job_key = (home or core.name, first.job)
        work = core.work_dir / f"{home or core.name}-{first.job}-{first.frame}-{first.attempt}"
        # the leases not reported yet (run.unsettled): the heartbeat renews these only; once
        # the renderer has ended, a lost lease no longer stops anything (the others are still
        # to be reported). Frames given back (a split: run.released) are neither renewed nor
        # reported, nor stored when the renderer got to them anyway.
        run = ChunkRun(home, leases, {one.frame: one for one in leases}, threads=threads)
        runs = self._chunk_runs.setdefault(job_key, [])
        runs.append(run)
        heart = asyncio.create_task(self._heartbeat(home, run, asyncio.current_task()))
        cleaned = False
        blobs: dict[int, Blob] = {}
        try:
            began: list[float] = []   # when the renderer started (wall clock), once prepared
            results = await self._prepare_and_render(home, leases, work, began, run)
            async with run.lock:   # a split under way settles first: what was given back is known
                run.rendering = False
            seconds = time.time() - began[0] if began else 0.0
            kept = [one for one in leases if one.frame not in run.released]
            results = {f: r for f, r in results.items() if f not in run.released}
            if began and kept and all(r.ok for r in results.values()):
                finished = await asyncio.to_thread(_finish_times, [results[one.frame].outputs for one in kept])
                self.frame_times.add(job_key, seconds, len(kept), backend=first.backend,
                                     started=began[0], finished=finished)
            for r in results.values():
                outcome = "done" if r.ok else "failed" if r.counts else "interrupted"
                core.metrics.render(first.backend, outcome, seconds / len(kept) if r.ok and seconds else None)
            if any(r.alone for r in results.values()):
                self.frame_times.render_alone(job_key)
            good = [one.frame for one in kept if results[one.frame].ok]
            if good:
                try:
                    # the outputs into the blob store (written by the output process, published
                    # in a thread: outputs.py), the files of frames that frames here wait for
                    # kept unpacked for them, the work folder gone; one that holds dependencies
                    # (maybe many) is removed after the results are recorded, not before
                    awaited = core.scheduler.awaited(first.job, good) \
                        if home is None and core.outputs.keeping() else set()
                    with_deps = any(one.depends for one in leases)
                    stored = await core.storage.written(core.outputs.store(
                        [results[f].outputs for f in good], work / "out", [f in awaited for f in good],
                        None if with_deps else work))
                    blobs, cleaned = dict(zip(good, stored)), not with_deps
                except OSError as exc:  # a full disk fails the frames, not the server
                    for f in good:
                        results[f] = RenderResult(False, results[f].log,
                                                  f"cannot store the output: {exc.strerror or exc}", [])
            if home is None and blobs:
                # this server's own chunk: every done frame in one transaction
                await self._complete_local([one for one in kept if one.frame in blobs], results, blobs)
                for f in blobs:
                    run.unsettled.pop(f, None)
            # the heartbeat goes on during the uploads: a long upload must not lose the lease
            for one in kept:
                if one.frame in run.unsettled:
                    await self._report(home, one, results[one.frame], blobs.get(one.frame))
                    run.unsettled.pop(one.frame, None)
                    await asyncio.sleep(0)   # one transaction (or upload) each, others run between
        finally:
            run.rendering = False
            runs.remove(run)
            if not runs:
                self._chunk_runs.pop(job_key, None)
            # the outputs are recorded here (referenced), or uploaded home (this copy is not
            # needed), or were refused: reclaimed unless referenced
            core.storage.release([b.sha256 for b in blobs.values()], written=True)
            if heart is not None:
                heart.cancel()
            if not cleaned:
                await _remove_work(work, sum(len(one.depends or ()) for one in leases) > MANY_DEPENDENCIES)

    async def _prepare_and_render(self, home: str | None, leases: list[Lease], work: Path,
                                  began: list[float], run: ChunkRun) -> dict[int, RenderResult]:
        """The seed and the dependencies' outputs are pinned while the frames render (a delete
        meanwhile does not take them away); a peer's are kept a while after (--keep-peer-copies).
        `began` gets the wall-clock time the renderer started at."""
        held: list[str] = []
        try:
            return await self._prepare_and_render_held(home, leases, work, held, began, run)
        finally:
            # (a video frame holds one pin per frame of its job: let go in a thread)
            self.core.storage.release_many(held, peer_copy=home is not None)

    async def _prepare_and_render_held(self, home: str | None, leases: list[Lease], work: Path,
                                       held: list[str], began: list[float],
                                       run: ChunkRun) -> dict[int, RenderResult]:
        core = self.core
        first = leases[0]
        frames = tuple(one.frame for one in leases)
        out, deps = work / "out", work / "deps"
        # (a video frame has one dependency per frame of its job: gathered in a thread)
        wanted = await asyncio.to_thread(_wanted, leases) if any(one.depends for one in leases) else {}
        try:
            if home is not None:   # a peer's lease, or chunk: the seed and dependencies, each once
                await self.federation.fetch_blob(home, first.seed_sha256, first.seed_size)
                held.append(first.seed_sha256)
                for sha256, size in wanted.items():
                    await self.federation.fetch_blob(home, sha256, size)
                    held.append(sha256)
            else:   # (those missing: the preparation below says so)
                held += await finish_pinned(asyncio.to_thread(_pin_all, core, [first.seed_sha256, *wanted]),
                                            core.storage.release_many)
            # the folders, the scene and every dependency's output: one trip to a thread (a
            # video frame has one dependency per frame of the job: nothing per dependency runs
            # on the event loop)
            scene, urls = await asyncio.to_thread(_prepare, core, out, deps, first.seed_sha256,
                                                  [one.depends for one in leases])
        except (DistrenError, OSError) as exc:
            why = exc.message if isinstance(exc, DistrenError) else str(exc)
            if len(frames) == 1:
                return {first.frame: RenderResult(False, "", f"cannot prepare the frame: {why}", [])}
            # which frame's dependency was at fault is not known: every frame goes back, and
            # the job's frames render one by one (the guilty one then fails by itself)
            return {f: RenderResult(False, "", f"cannot prepare its chunk: {why}", [], counts=False, alone=True)
                    for f in frames}
        timeout = first.timeout or core.config.frame_timeout
        if len(frames) > 1:
            # a chunk's time: the first frame's timeout, then for each further frame that timeout
            # or, when the job's frames were measured, at most ten times their time (at least
            # 60 s): a frame that hangs early in a long chunk is stopped long before N timeouts
            seconds = self.frame_times.get((home or core.name, first.job))
            extra = timeout if seconds is None else min(timeout, max(60.0, 10 * seconds))
            timeout = timeout + extra * (len(frames) - 1)
        task = FrameTask(
            settings=first.settings, scene=scene, frame=first.frame,
            out=out, deps=deps, timeout=timeout, threads=run.threads,
            limits=core.config.render_limits(first.timeout, len(frames), run.threads),
            home=home or core.name, job=first.job, depends=urls,
            frames=frames if len(frames) > 1 else (), control=run.control,
        )
        backend = core.backends[first.backend]
        began.append(time.time())
        if len(frames) == 1:
            return {first.frame: await backend.render(task)}
        run.task = task   # from now on the chunk can be split
        return await backend.render_chunk(task)

    async def _complete_local(self, leases: list[Lease], results: dict[int, RenderResult],
                              blobs: dict[int, Blob]) -> None:
        """Record the outputs of this server's own frames (one, or a chunk's) in one
        transaction; a frame that moved on meanwhile (cancelled) is left as it is."""
        core = self.core
        failpoints.hit("output")
        await self._settle(lambda: core.scheduler.complete_many(
            [(one.job, one.frame, one.attempt, blobs[one.frame], results[one.frame].log) for one in leases],
            core.name, owner=core.lease_owner))
        if failpoints.armed("done") and core.scheduler.job(leases[0].job)["state"] == "done":
            failpoints.hit("done")

    async def _report(self, home: str | None, lease: Lease, result: RenderResult, blob: Blob | None) -> None:
        if home is None:   # this server's own frame that did not render (the done ones: _complete_local)
            await self._local_failure(lease, result.log, result.error or "render failed", counts=result.counts)
            return
        try:
            if blob is not None:
                await self.federation.upload_result(home, lease, blob, result.log)
            else:
                # a failure that does not count here (stopped from outside, a chunk requeued)
                # does not count at the home either
                log.log(logging.WARNING if result.counts else logging.INFO,
                        "distren://%s/%d/%d attempt %d %s: %s", home, lease.job, lease.frame, lease.attempt,
                        "failed" if result.counts else "goes back", result.error or "render failed",
                        extra=logs.about(home, lease.job, lease.frame))
                await self.federation.report_failure(home, lease, result.log, result.error or "render failed",
                                                     interrupted=not result.counts)
        except DistrenError as exc:
            # 409: our lease expired or was superseded; the home server has moved on
            log.warning("result of distren://%s/%d/%d attempt %d not taken: %s",
                        home, lease.job, lease.frame, lease.attempt, exc.message,
                        extra=logs.about(home, lease.job, lease.frame))

    async def _heartbeat(self, home: str | None, run: ChunkRun, render: asyncio.Task) -> None:
        """Renew the leases not reported yet every third of their length (a local slot's in the
        database, a peer's at its home server). A lease gone while the renderer runs
        (cancelled, expired, superseded) stops the render: the chunk's other frames are then
        interrupted, not failed; after the renderer ended it is only dropped. A frame given
        back (run.released) is neither."""
        unsettled = run.unsettled
        if home is None:
            period = self.lease_seconds() / 3
        else:
            period = self.federation.settings.heartbeat(next(iter(unsettled.values())).lease_seconds)
        while unsettled:
            await asyncio.sleep(period)
            for lease in list(unsettled.values()):
                if lease.frame in run.released:
                    continue
                try:
                    if home is None:
                        self.core.scheduler.heartbeat(lease.job, lease.frame, lease.attempt, self.core.lease_owner,
                                                      self.lease_seconds())
                    else:
                        await self.federation.heartbeat(home, lease)
                except DistrenError as exc:
                    status = getattr(exc, "http_status", None) or exc.status
                    if lease.frame in run.released or (lease.frame in run.uncertain and status in (404, 409)):
                        unsettled.pop(lease.frame, None)   # given back
                        continue
                    if status in (404, 409):
                        log.warning("lease of distren://%s/%d/%d lost: %s", home or self.core.name, lease.job,
                                    lease.frame, exc.message,
                                    extra=logs.about(home or self.core.name, lease.job, lease.frame))
                        unsettled.pop(lease.frame, None)
                        if run.rendering:
                            render.cancel()
                            return
                    # unreachable: keep rendering, try again next period
                except Exception:
                    log.warning("heartbeat failed; trying again", exc_info=True)


def _prepare(core: Core, out: Path, deps: Path, seed_sha256: str,
             of_frames: list[tuple[dict, ...]]) -> tuple[Path, tuple[str, ...]]:
    """A render's work folders, the outputs of its frames' dependencies unpacked (each once),
    and its scene (extracted again if missing). Returns the scene and the dependency URLs."""
    out.mkdir(parents=True)
    deps.mkdir()
    unique: dict[str, dict] = {}
    for depends in of_frames:
        for dep in depends:
            unique.setdefault(dep["url"], dep)
    depends = list(unique.values())

    def extract(dep: dict) -> None:
        url = parse_url(dep["url"])
        core.extract_output(Blob(dep["sha256"], dep["size"]), deps / url.server / str(url.job) / str(url.frame))

    # one after the other: the work is a folder and files per dependency, and on this file
    # system (ext4) threads only contend for the parent folder and the GIL (10,000 small
    # outputs: 230-350 us each in one thread, 460-580 us with 2 or 4)
    for dep in depends:
        extract(dep)
    return core.scene(seed_sha256), tuple(unique)


async def _remove_work(work: Path, many: bool) -> None:
    """A render's work folder removed. One that holds many dependencies' outputs (a video
    frame's: a folder and a file each) is removed by `rm -rf` in a process of its own: in a
    thread, Python's rmtree of 100,000 folders held the interpreter lock for seconds, and the
    event loop waited for it (answers 250 ms late)."""
    if many:
        with contextlib.suppress(OSError):
            proc = await asyncio.create_subprocess_exec(
                "rm", "-rf", "--", str(work), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await proc.wait()
        if not os.path.lexists(work):
            return
    await asyncio.to_thread(shutil.rmtree, work, True)


def _wanted(leases: list[Lease]) -> dict[str, int]:
    """The dependencies' outputs of a render's frames, each once: sha256 -> size."""
    return {dep["sha256"]: dep["size"] for one in leases for dep in one.depends}


def _pin_all(core: Core, sha256s: list[str]) -> list[str]:
    """Pin the blobs that are there; returns those pinned."""
    return [s for s in sha256s if core.blobs.pin(s)]


def _finish_times(outputs: list[list[Path]]) -> list[float | None]:
    """When each frame's outputs were last written (wall clock), None when not known."""
    times: list[float | None] = []
    for files in outputs:
        try:
            times.append(max(f.stat().st_mtime for f in files) if files else None)
        except OSError:
            times.append(None)
    return times


def _frames_with_output(backend: Backend, task: FrameTask) -> set[int]:
    """The frames of a rendering chunk that have output files so far (in a thread)."""
    try:
        split = backend.split_outputs(task, backend.outputs(task.out))
    except Exception:   # files that belong to no frame: nothing is known
        return set()
    return {f for f, files in split.items() if files}


def _ranges(frames: list[int]) -> str:
    return f"{frames[0]}-{frames[-1]}" if len(frames) > 1 else str(frames[0])

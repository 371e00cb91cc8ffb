"""Federation at work: this server's slots claim frames from peers when its own queue is empty,
fetch seeds and dependency outputs by hash (resuming interrupted downloads), heartbeat, upload
results; it watches frames on peers that its own frames depend on, and chases the dependencies
that keep waiting for a cycle across servers; and it expires the leases it granted that were not
renewed."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass

from .. import logs
from ..errors import DistrenError, NotFound
from ..liveness import RendererView
from ..scheduler import Lease
from ..store.blobs import Blob, StreamWriter, finish_pinned, hashes
from ..url import DistrenURL, parse_url
from .auth import is_worker
from .pacing import Announcer, ClaimPacer, announce_spread, no_work_retry_after
from .peers import Peer, PeerClient, PeerError

log = logging.getLogger("distren.federation")


@dataclass
class FederationSettings:
    lease_seconds: float = 60.0
    heartbeat_seconds: float | None = None  # default: a third of the lease
    claim_backoff_max: float = 5.0
    watch_seconds: float = 2.0
    transfer_retries: int = 5
    # empty claims a second this server is willing to answer (pacing.py)
    idle_claims_per_second: float = 20.0
    # a peer not heard from for this long is asked who it is (health, backends)
    peer_timeout: float = 15.0

    def heartbeat(self, granted: float | None = None) -> float:
        """Heartbeat period for a lease of `granted` seconds (the home server's setting)."""
        period = self.heartbeat_seconds or self.lease_seconds / 3
        return min(period, granted / 3) if granted else period


# Frames of one peer checked at once by the dependency watcher.
WATCH_CONCURRENCY = 8
# A claim or a hello is a small request: a peer that does not answer it in this time is taken
# as unreachable for now (a slow or black-holed peer must not hold a render slot).
CLAIM_TIMEOUT = 3.0
# Dependency cycles across servers (docs/federation.md, "Dependency cycles"). A dependency that
# the peer has answered 'waiting' this many times (without another state between) is chased: a walk over the frontiers
# (Scheduler.frontier) of the frames it waits for, on every server, looking for a way back to it.
CHASE_AFTER_CHECKS = 3
# ... and chased again no sooner than this many watch periods later (2 minutes by default).
CHASE_EVERY_WATCHES = 60
# Frontiers asked (of peers, or walked here) in one chase of one dependency; a chase of a
# batch asks each frame's frontier once.
CHASE_FRONTIERS = 50
# Dependencies of one peer chased in one batch (the others are due at the next round).
CHASE_BATCH = 100
# URLs taken from one frontier answer.
FRONTIER_LIMIT = 2000
# A render-only worker (`worker:NAME`) not heard from for this long is forgotten.
WORKER_FORGET = 600.0


class Federation:
    def __init__(self, core, peers: PeerClient, settings: FederationSettings, verifier):
        self.core = core
        self.peers = peers
        self.settings = settings
        self.verifier = verifier  # checks the signed requests of peers that claim from us
        self.pacer = ClaimPacer(backoff_max=settings.claim_backoff_max)
        self.pacer.set_peers(peers.peers)
        self.announcer = Announcer()
        self.on_announced = None   # set by the Runner: wakes its idle slots
        # set by the Runner: a peer found no work here (claimer, backends); a home asks for the
        # unstarted tail of a chunk of its job rendering here (home, job)
        self.on_hungry = None
        self.on_split = None
        self._tasks: list[asyncio.Task] = []
        self._downloads: dict[str, list] = {}  # sha256 -> [lock, users]
        self._announce_task: asyncio.Task | None = None
        self._probed: dict[str, float] = {}
        self._watching: dict[str, asyncio.Task] = {}
        # dependency (server, job, frame) -> [checks answered 'waiting' in a row, last chase]
        self._waits: dict[tuple[str, int, int], list] = {}
        self._chasing: dict[str, asyncio.Task] = {}   # peer -> its chase batch
        # render-only workers that claimed from this server (no peer table entry): name ->
        # health as for a peer (last contact, backends), for liveness and GET /server
        self.workers: dict[str, WorkerPeer] = {}
        # renderers that are not peers nor workers yet, such as the Slurm executor's next
        # worker jobs (slurm.py): their views count for liveness
        self.extra_views: list = []
        # claims answered (any outcome) and when the last lease came: a worker's idleness
        self.claims_answered = 0
        self.last_lease = float("-inf")

    # -- background loops ----------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch_loop(), name="remote-deps")]

    async def stop(self) -> None:
        if self._announce_task is not None:
            self._tasks.append(self._announce_task)
        self._tasks += list(self._watching.values()) + list(self._chasing.values())
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.peers.close()

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_seconds)
            try:
                self.check_remote_deps()
            except Exception:
                log.exception("checking dependencies on peers failed")

    def check_remote_deps(self) -> list[asyncio.Task]:
        """Ask peers about the frames that frames here wait for: each peer in a task of its
        own (a few of its frames at a time); a peer whose last check has not ended yet (slow or
        black-holed) is skipped this round, and one that cannot be reached is asked again only
        after its claim back-off, so no peer delays the checks of another."""
        by_server: dict[str, list[tuple[int, int]]] = {}
        pending = self.core.scheduler.pending_remote_deps()
        for server, job, frame in pending:
            by_server.setdefault(server, []).append((job, frame))
        if len(self._waits) > len(pending):
            keep = set(pending)
            self._waits = {k: v for k, v in self._waits.items() if k in keep}
        now = time.monotonic()
        started = []
        for server, frames in by_server.items():
            running = self._watching.get(server)
            if running is not None and not running.done():
                continue
            task = asyncio.create_task(self._check_server(server, frames, now), name=f"watch-{server}")
            self._watching[server] = task
            started.append(task)
        return started

    async def _check_server(self, server: str, frames: list[tuple[int, int]], now: float) -> None:
        peer = self.peers.peers.get(server)
        if peer is None:
            return  # not (or no longer) a peer: the liveness check fails its dependents
        if peer.down_since is not None and self._probed.get(server, 0) > now - self.settings.claim_backoff_max:
            return
        self._probed[server] = now
        gate = asyncio.Semaphore(WATCH_CONCURRENCY)

        async def one(job: int, frame: int) -> None:
            async with gate:
                if peer.down_since is not None and peer.failures > 1:
                    return  # it went down meanwhile: the next round asks again
                try:
                    await self.check_remote_dep(server, job, frame)
                except PeerError as exc:
                    log.info("cannot check distren://%s/%d/%d yet: %s", server, job, frame, exc.message,
                             extra=logs.about(server, job, frame))
                except Exception:
                    log.exception("checking distren://%s/%d/%d failed", server, job, frame,
                                  extra=logs.about(server, job, frame))

        await asyncio.gather(*(one(j, f) for j, f in frames))
        self._start_chase(server, frames)

    async def check_remote_dep(self, server: str, job: int, frame: int) -> None:
        """Ask the peer about one frame; fetch its output once done."""
        self.peers.get(server)  # not (or no longer) a peer: keep waiting, the error is logged
        try:
            resp = await self.peers.request(server, "GET", f"/api/v1/jobs/{job}/frames/{frame}")
        except PeerError as exc:
            if exc.http_status == 404:
                self.core.scheduler.set_remote_dep(server, job, frame, "failed", error="does not exist")
                return
            raise
        try:
            info = resp.json()
            state = info["state"]
        except (ValueError, KeyError, TypeError):
            raise PeerError(f"peer {server} sent a malformed frame description") from None
        key = (server, job, frame)
        if state == "waiting":
            self._waits.setdefault(key, [0, None])[0] += 1
        else:
            self._waits.pop(key, None)
        if state == "done":
            out = info["output"]
            blob = await self.fetch_blob(server, out["sha256"], out["size"])
            try:
                self.core.scheduler.set_remote_dep(server, job, frame, "done", blob)
            finally:   # referenced by remote_deps now (or by nothing: reclaimed)
                self.core.storage.release([blob.sha256], written=True)
        elif state in ("failed", "cancelled"):
            self.core.scheduler.set_remote_dep(server, job, frame, state, error=info.get("error"))

    # -- dependency cycles ---------------------------------------------------------------
    def _start_chase(self, server: str, frames: list[tuple[int, int]]) -> asyncio.Task | None:
        """Chase the dependencies on `server` that are due (waiting at CHASE_AFTER_CHECKS checks,
        not chased for CHASE_EVERY_WATCHES watch periods), in a task; one at a time per peer."""
        running = self._chasing.get(server)
        if running is not None and not running.done():
            return None
        now = time.monotonic()
        every = CHASE_EVERY_WATCHES * self.settings.watch_seconds
        due = []
        for job, frame in frames:
            w = self._waits.get((server, job, frame))
            if w is not None and w[0] >= CHASE_AFTER_CHECKS and (w[1] is None or now - w[1] >= every):
                w[1] = now
                due.append((job, frame))
                if len(due) >= CHASE_BATCH:
                    break
        if not due:
            return None
        task = asyncio.create_task(self._chase_batch(server, due), name=f"chase-{server}")
        self._chasing[server] = task
        return task

    async def _chase_batch(self, server: str, frames: list[tuple[int, int]]) -> None:
        memo: dict[DistrenURL, list[DistrenURL] | None] = {}
        cycles = 0
        for job, frame in frames:
            try:
                cycle = await self.chase(DistrenURL(server, job, frame), memo)
            except Exception:
                log.exception("chasing distren://%s/%d/%d failed", server, job, frame,
                              extra=logs.about(server, job, frame))
                continue
            if cycle is not None:
                cycles += 1
                error = "dependency cycle: " + " → ".join(str(u) for u in cycle)
                log.warning("distren://%s/%d/%d: %s", server, job, frame, error, extra=logs.about(server, job, frame))
                self.core.scheduler.set_remote_dep(server, job, frame, "failed", error=error)
                self._waits.pop((server, job, frame), None)
        log.info("chased %d dependencies on %s: %d on a cycle (%d frontiers asked)",
                 len(frames), server, cycles, len(memo))

    async def chase(self, dep: DistrenURL, memo: dict | None = None) -> list[DistrenURL] | None:
        """Look for a dependency cycle through `dep`, a frame of a peer that frames here wait
        for: breadth first over frontiers (the frames of other servers a frame waits for), from
        dep's, asking each frame's server (this server's frames are walked here; frames of
        servers that are not peers or are down are not expanded), at most CHASE_FRONTIERS of
        them. Returns the path dep -> ... -> dep when the walk comes back to dep, else None
        (no cycle found: there may be none, or it lies beyond what was asked).

        Every edge followed is a dependency that exists, so a path back to dep is a real
        cycle: no frame on it can ever be done (each needs the one before it done first)."""
        memo = {} if memo is None else memo
        parent: dict[DistrenURL, DistrenURL | None] = {dep: None}
        queue = deque([dep])
        spent = 0
        while queue and spent < CHASE_FRONTIERS:
            node = queue.popleft()
            spent += 1   # every frontier walked counts, also one asked before (a bounded walk)
            if node not in memo:
                memo[node] = await self._frontier_of(node)
            for nxt in memo[node] or ():
                if nxt == dep:
                    path = [dep]
                    at: DistrenURL | None = node
                    while at is not None:
                        path.append(at)
                        at = parent[at]
                    return path[::-1]
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        return None

    async def _frontier_of(self, url: DistrenURL) -> list[DistrenURL] | None:
        """The frontier of a frame (this server's or a peer's); None when it cannot be known."""
        if url.server == self.core.name:
            try:
                waits_on, _ = await asyncio.to_thread(self.core.scheduler.frontier, url.job, url.frame)
            except NotFound:
                return None
            return waits_on
        peer = self.peers.peers.get(url.server)
        if peer is None or peer.down_since is not None:
            return None
        try:
            resp = await self.peers.request(url.server, "GET", f"/api/v1/peer/frontier/{url.job}/{url.frame}")
        except PeerError as exc:
            log.info("frontier of %s unknown: %s", url, exc.message)
            return None

        def parse() -> list[DistrenURL]:
            # up to FRONTIER_LIMIT URLs: parsed in a thread, off the event loop
            return [parse_url(u) for u in json.loads(resp.content)["waits_on"][:FRONTIER_LIMIT]]

        try:
            return await asyncio.to_thread(parse)
        except (ValueError, KeyError, TypeError, DistrenError):
            log.warning("peer %s sent a malformed frontier for %s", url.server, url)
            return None

    # -- health --------------------------------------------------------------------------
    def renderer_views(self) -> list[RendererView]:
        """The peers, the workers heard from (up when heard within `peer_timeout`) and the
        renderers still to come (extra_views), as the liveness check sees them."""
        now = time.time()
        views = [RendererView(p.name, p.backends, p.down_since is None, p.down_since)
                 for p in self.peers.peers.values()]
        for w in self.live_workers(now):
            up = (w.last_contact or 0) > now - self.settings.peer_timeout
            views.append(RendererView(w.name, w.backends, up, None if up else w.last_contact))
        return views + [view() for view in self.extra_views]

    def worker_heard(self, name: str, backends: list[str] | None = None, leased: bool = False) -> None:
        """A signed request of a render-only worker: remember it, what it renders and whether
        it was given a frame."""
        worker = self.workers.get(name)
        if worker is None:
            self.live_workers(time.time())   # forgets the long gone ones: the table does not grow
            worker = self.workers[name] = WorkerPeer(name, "", verified=True)
        worker.last_contact = time.time()
        worker.leases += leased
        if backends is not None:
            PeerClient.learn_backends(worker, backends)

    def live_workers(self, now: float) -> list["WorkerPeer"]:
        """The workers heard from within WORKER_FORGET; the others are forgotten."""
        gone = [n for n, w in self.workers.items() if (w.last_contact or 0) < now - WORKER_FORGET]
        for name in gone:
            del self.workers[name]
        return list(self.workers.values())

    async def probe_peers(self, local_backends: set[str]) -> None:
        """When this server has ready frames its own slots cannot render, the peers not heard
        from for `peer_timeout` are asked who they are: a peer that is gone shows as down (with
        since when), and a peer's backends become known. (Only then: a farm of idle servers
        probing each other would cost O(N^2) requests.)"""
        if not (self.core.scheduler.ready_backends() - local_backends):
            return
        now = time.time()
        quiet = [p.name for p in self.peers.peers.values()
                 if (p.last_contact or 0) < now - self.settings.peer_timeout
                 and self._probed.get("hello:" + p.name, 0) < now - self.settings.peer_timeout]
        for name in quiet:
            self._probed["hello:" + name] = now

        async def one(name: str) -> None:
            try:
                await self.peers.probe(name)
            except PeerError as exc:
                log.info("peer %s: %s", name, exc.message)

        await asyncio.gather(*(one(n) for n in quiet[:64]))

    # -- claiming ------------------------------------------------------------------------
    def next_claim_in(self) -> float:
        """Seconds until some peer may be asked for work again."""
        return self.pacer.next_in(time.monotonic())

    async def claim(self, backends: list[str]) -> tuple[str, Lease] | None:
        """Ask the peers that are due for a frame, round robin (pacing.py)."""
        if not backends:
            return None
        for name in self.pacer.due(time.monotonic()):
            if name not in self.peers.peers:
                continue
            try:
                resp = await self.peers.request(name, "POST", "/api/v1/peer/claim", json={"backends": backends},
                                                timeout=CLAIM_TIMEOUT)
            except PeerError as exc:
                self.claims_answered += 1
                self.pacer.failed(name, time.monotonic())
                log.debug("claim from %s failed: %s", name, exc.message)
                continue
            self.claims_answered += 1
            if resp.status_code == 204:
                self.pacer.no_work(name, time.monotonic(), _retry_after(resp))
                continue
            try:
                lease = lease_from_json(resp.json(), name)
            except (ValueError, PeerError) as exc:
                log.warning("bad lease from %s: %s", name, exc)
                self.pacer.no_work(name, time.monotonic())
                continue
            self.pacer.got_work(name)
            self.last_lease = time.monotonic()
            return name, lease
        return None

    async def claim_more(self, home: str, lease: Lease, limit: int) -> list[Lease]:
        """More frames of `lease`'s job for the same renderer run (a chunk); [] when the home
        has none, or does not lease chunks to peers (an older home: 404)."""
        try:
            resp = await self.peers.request(home, "POST", self._lease_path(lease, "more"), json={"limit": limit},
                                            ok=(200,), timeout=CLAIM_TIMEOUT)
        except PeerError as exc:
            if exc.http_status in (404, 405, 409):   # no such route (older home), or the lease moved on
                return []
            raise
        try:
            more = [lease_from_json(one, home) for one in resp.json()["leases"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise PeerError(f"malformed chunk from {home}: {exc!r}") from None
        if any(one.job != lease.job for one in more):
            raise PeerError(f"{home} answered a chunk with frames of another job")
        return more

    def no_work_answer(self, peer: str) -> float:
        """This server turns a claiming peer away: remember to tell it when work comes (not a
        worker: it serves nothing and is never asked for work); returns the wait to ask of it
        (seconds): the empty-claim budget shared by the peers and the workers."""
        if not is_worker(peer):
            self.announcer.turned_away(peer)
        return no_work_retry_after(len(self.peers.peers) + len(self.workers), self.settings.idle_claims_per_second)

    def work_appeared(self) -> None:
        """Frames became ready here: tell the peers that were turned away (at most once per
        announce period; the task is started on the event loop)."""
        if not self.announcer.waiting:
            return
        if self._announce_task is None or self._announce_task.done():
            try:
                self._announce_task = asyncio.get_running_loop().create_task(self._announce())
            except RuntimeError:
                pass  # no running loop (a test calling the scheduler directly)

    async def _announce(self) -> None:
        wait = self.announcer.last + self.announcer.announce_period - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if not self.core.scheduler.ready_backends():
            return  # a frame finished but nothing is claimable: no need to wake anybody
        names = self.announcer.due(time.monotonic())
        within = announce_spread(len(names), self.settings.idle_claims_per_second, self.pacer.announce_jitter)

        async def one(name: str) -> None:
            try:
                await self.peers.request(name, "POST", "/api/v1/peer/work", json={"within": round(within, 3)})
            except PeerError as exc:
                log.debug("announcing work to %s failed: %s", name, exc.message)

        gate = asyncio.Semaphore(32)

        async def gated(name: str) -> None:
            async with gate:
                await one(name)

        await asyncio.gather(*(gated(n) for n in names))

    def announced(self, peer: str, within: float | None = None) -> None:
        """A peer says it has work for us (to be asked within `within` seconds): the idle
        slots are woken to ask it (`on_announced`), not left to their next poll."""
        self.pacer.announced(peer, time.monotonic(), within)
        if self.on_announced is not None:
            self.on_announced()

    # -- transfers -----------------------------------------------------------------------
    async def fetch_blob(self, server: str, sha256: str, size: int | None) -> Blob:
        """A blob of a peer into our store, once: streamed to a part file, resumed with HTTP
        Range after an interruption, retried with back-off, verified by hash. Returned pinned
        (the caller releases it: `storage.release`)."""
        entry = self._downloads.setdefault(sha256, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            return await self._fetch_locked(entry[0], server, sha256, size)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._downloads[sha256]  # nobody else wants it: the table does not grow

    async def _fetch_locked(self, lock: asyncio.Lock, server: str, sha256: str, size: int | None) -> Blob:
        blobs = self.core.blobs
        async with lock:
            if blobs.pin(sha256):
                return Blob(sha256, blobs.path(sha256).stat().st_size)
            part = f"download-{sha256}.part"
            delay = 0.2
            for attempt in range(self.settings.transfer_retries):
                try:
                    writer = await self._download(server, sha256, part, size)
                    # verified against the hash it was asked by (computed as it arrived), then published
                    blob = await finish_pinned(asyncio.to_thread(writer.commit, sha256),
                                               lambda got: self.core.storage.release(hashes(got), written=True))
                    self.core.metrics.received.inc(blob.size)
                    return blob
                except ValueError as exc:  # hash mismatch (the part file is gone): start over
                    last = str(exc)
                except (PeerError, OSError) as exc:
                    last = getattr(exc, "message", str(exc))
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
            (blobs.tmp_dir / part).unlink(missing_ok=True)
            raise PeerError(f"cannot fetch blob {sha256} from {server}: {last}")

    async def _download(self, server: str, sha256: str, part: str, size: int | None):
        """Stream the blob into the part file (continuing what an interrupted attempt left,
        with HTTP Range), hashed and written in a thread as it arrives; returns the closed
        writer, to commit. An interruption leaves the part file for the next attempt."""
        import httpx

        blobs = self.core.blobs
        # the bytes an earlier attempt left are read once, to hash them (in a thread)
        writer = await asyncio.to_thread(blobs.resume, part)
        upload = StreamWriter(writer)
        try:
            headers = {"Range": f"bytes={writer.size}-"} if writer.size else {}
            try:
                async with await self.peers.stream(server, f"/api/v1/peer/blobs/{sha256}", headers) as resp:
                    if resp.status_code == 416:  # we already have all of it
                        await asyncio.to_thread(writer.close, False)
                        return writer
                    if resp.status_code not in (200, 206):
                        await resp.aread()
                        raise PeerError(f"HTTP {resp.status_code} for blob {sha256}", resp.status_code)
                    if resp.status_code == 200 and writer.size:  # the whole blob again: start over
                        await asyncio.to_thread(writer.restart)
                        upload.size = 0
                    async for chunk in resp.aiter_bytes():
                        if size is not None and upload.size + len(chunk) > size:
                            raise ValueError(f"blob {sha256} from {server} is larger than its {size} bytes")
                        await upload.write(chunk)
                    await upload.finish()
            except httpx.HTTPError as exc:
                raise PeerError(f"transfer from {server} interrupted: {exc}") from None
        except ValueError:
            upload.abort()   # too large: what we have is wrong
            raise
        except BaseException:
            # interrupted: keep what arrived for a resumed attempt (once the thread has written it)
            await _settle(upload)
            raise
        await asyncio.to_thread(writer.close, False)
        return writer

    # -- results -------------------------------------------------------------------------
    def _lease_path(self, lease: Lease, action: str) -> str:
        return f"/api/v1/peer/leases/{lease.job}/{lease.frame}/{lease.attempt}/{action}"

    async def heartbeat(self, home: str, lease: Lease) -> None:
        await self.peers.request(home, "POST", self._lease_path(lease, "heartbeat"), json={})

    async def ask_split(self, holder: str, job: int) -> None:
        """Ask a peer that renders a chunk of this server's job to give back its unstarted
        tail (another renderer has nothing to do; docs/architecture.md, "Splitting a chunk")."""
        try:
            await self.peers.request(holder, "POST", "/api/v1/peer/split", json={"job": job}, timeout=CLAIM_TIMEOUT)
        except PeerError as exc:
            log.debug("asking %s to split its chunk of job %d failed: %s", holder, job, exc.message)

    async def release(self, home: str, job: int, leases: list[Lease]) -> list[int]:
        """Give frames of a chunk leased from `home` back to it (not started here); returns
        those it took back (the others had moved on)."""
        # (asked again when the answer is lost: the home counts frames given back already)
        resp = await self._with_retries(lambda: self.peers.request(
            home, "POST", "/api/v1/peer/release", ok=(200,), timeout=CLAIM_TIMEOUT,
            json={"job": job, "frames": [[one.frame, one.attempt] for one in leases]}))
        try:
            released = resp.json()["released"]
            wanted = {one.frame for one in leases}
            if not all(isinstance(f, int) and f in wanted for f in released):
                raise ValueError(released)
        except (ValueError, KeyError, TypeError) as exc:
            raise PeerError(f"malformed answer to a release from {home}: {exc!r}") from None
        return sorted(released)

    async def upload_result(self, home: str, lease: Lease, blob: Blob, log_text: str) -> None:
        path = self.core.blobs.path(blob.sha256)
        await self._with_retries(lambda: self.peers.request(
            home, "PUT", self._lease_path(lease, "output"), file=path, file_sha256=blob.sha256,
            headers={"Content-Type": "application/x-tar"}))
        self.core.metrics.sent.inc(blob.size)
        await self._with_retries(lambda: self.peers.request(
            home, "POST", self._lease_path(lease, "complete"),
            json={"sha256": blob.sha256, "size": blob.size, "log": log_text}))

    async def report_failure(self, home: str, lease: Lease, log_text: str, error: str, interrupted: bool = False) -> None:
        """`interrupted`: this server is stopping; the attempt does not count as the frame's failure."""
        await self._with_retries(lambda: self.peers.request(
            home, "POST", self._lease_path(lease, "fail"),
            json={"log": log_text, "error": error, "interrupted": interrupted}))

    async def _with_retries(self, call):
        delay = 0.2
        for attempt in range(self.settings.transfer_retries):
            try:
                return await call()
            except PeerError as exc:
                if exc.http_status is not None and exc.http_status < 500:
                    raise  # 409 (lease gone) and the like: retrying does not help
                if attempt == self.settings.transfer_retries - 1:
                    raise
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)


@dataclass
class WorkerPeer(Peer):
    """A render-only worker as its home knows it: a peer's health, and the leases it was given."""

    leases: int = 0

    def to_json(self) -> dict:
        return {"name": self.name, "last_contact": self.last_contact, "leases": self.leases,
                "backends": None if self.backends is None else sorted(self.backends)}


def lease_from_json(data: dict, owner: str) -> Lease:
    try:
        return Lease(
            job=int(data["job"]), frame=int(data["frame"]), attempt=int(data["attempt"]),
            backend=str(data["backend"]), settings=dict(data["settings"]),
            seed_sha256=str(data["seed"]["sha256"]), seed_size=int(data["seed"]["size"]),
            depends=tuple({"url": str(d["url"]), "sha256": str(d["sha256"]), "size": int(d["size"])}
                          for d in data["depends"]),
            expires=None, owner=owner, lease_seconds=float(data["lease_seconds"]),
            timeout=None if data.get("timeout") is None else float(data["timeout"]),
            chunk=_hint(data.get("chunk")), ready=_hint(data.get("ready")), servers=_hint(data.get("servers")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PeerError(f"malformed lease from {owner}: {exc!r}") from None


def _hint(value) -> int | None:
    """A home's chunk hint: a whole number >= 0, else None (an older home sends none)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _retry_after(resp) -> float | None:
    try:
        value = float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if 0 <= value <= 3600 else None


async def _settle(upload: StreamWriter) -> None:
    """Write out what a stream received before it was interrupted and close its file (kept:
    a resumed download continues it); errors of that are the interruption's, not raised."""
    try:
        writer = await upload.finish()
        await asyncio.to_thread(writer.close, False)
    except BaseException:
        upload.writer.close(False)

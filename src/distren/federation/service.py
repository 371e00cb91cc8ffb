"""Federation at work: this server's slots claim frames from peers when its own queue is empty,
fetch seeds and dependency outputs by hash (resuming interrupted downloads), heartbeat, upload
results; it watches frames on peers that its own frames depend on; and it expires the leases it
granted that were not renewed."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..scheduler import Lease
from ..store.blobs import Blob
from .peers import PeerClient, PeerError

log = logging.getLogger("distren.federation")


@dataclass
class FederationSettings:
    lease_seconds: float = 60.0
    heartbeat_seconds: float | None = None  # default: a third of the lease
    claim_backoff_max: float = 5.0
    watch_seconds: float = 2.0
    transfer_retries: int = 5

    def heartbeat(self, granted: float | None = None) -> float:
        """Heartbeat period for a lease of `granted` seconds (the home server's setting)."""
        period = self.heartbeat_seconds or self.lease_seconds / 3
        return min(period, granted / 3) if granted else period


class Federation:
    def __init__(self, core, peers: PeerClient, settings: FederationSettings, verifier):
        self.core = core
        self.peers = peers
        self.settings = settings
        self.verifier = verifier  # checks the signed requests of peers that claim from us
        self._rr = 0
        self._tasks: list[asyncio.Task] = []
        self._downloads: dict[str, asyncio.Lock] = {}

    # -- background loops ----------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch_loop(), name="remote-deps")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.peers.close()

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_seconds)
            for server, job, frame in self.core.scheduler.pending_remote_deps():
                try:
                    await self.check_remote_dep(server, job, frame)
                except PeerError as exc:
                    log.info("cannot check distren://%s/%d/%d yet: %s", server, job, frame, exc.message)
                except Exception:
                    log.exception("checking distren://%s/%d/%d failed", server, job, frame)

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
        if state == "done":
            out = info["output"]
            blob = await self.fetch_blob(server, out["sha256"], out["size"])
            self.core.scheduler.set_remote_dep(server, job, frame, "done", blob)
        elif state in ("failed", "cancelled"):
            self.core.scheduler.set_remote_dep(server, job, frame, state, error=info.get("error"))

    # -- claiming ------------------------------------------------------------------------
    def next_claim_in(self) -> float:
        """Seconds until some peer may be asked for work again."""
        now = time.monotonic()
        waits = [max(0.0, p.next_claim - now) for p in self.peers.peers.values()]
        return min(waits) if waits else float("inf")

    async def claim(self, backends: list[str]) -> tuple[str, Lease] | None:
        """Ask peers for a frame, round robin, skipping peers in back-off."""
        peers = list(self.peers.peers.values())
        if not peers or not backends:
            return None
        now = time.monotonic()
        for i in range(len(peers)):
            peer = peers[(self._rr + i) % len(peers)]
            if peer.next_claim > now:
                continue
            try:
                resp = await self.peers.request(peer.name, "POST", "/api/v1/peer/claim", json={"backends": backends})
            except PeerError as exc:
                self._back_off(peer)
                log.debug("claim from %s failed: %s", peer.name, exc.message)
                continue
            if resp.status_code == 204:
                self._back_off(peer)
                continue
            peer.backoff = 0.0
            self._rr = (self._rr + i + 1) % len(peers)
            try:
                data = resp.json()
            except ValueError:
                self._back_off(peer)
                continue
            try:
                return peer.name, lease_from_json(data, peer.name)
            except PeerError as exc:
                log.warning("%s", exc.message)
                self._back_off(peer)
        return None

    def _back_off(self, peer) -> None:
        peer.backoff = min(self.settings.claim_backoff_max, max(0.1, peer.backoff * 2))
        peer.next_claim = time.monotonic() + peer.backoff * random.uniform(0.8, 1.2)

    # -- transfers -----------------------------------------------------------------------
    async def fetch_blob(self, server: str, sha256: str, size: int | None) -> Blob:
        """A blob of a peer into our store, once: streamed to a part file, resumed with HTTP
        Range after an interruption, retried with back-off, verified by hash."""
        blobs = self.core.blobs
        lock = self._downloads.setdefault(sha256, asyncio.Lock())
        async with lock:
            if blobs.has(sha256):
                return Blob(sha256, blobs.path(sha256).stat().st_size)
            part = blobs.tmp_dir / f"download-{sha256}.part"
            delay = 0.2
            for attempt in range(self.settings.transfer_retries):
                try:
                    await self._download(server, sha256, part, size)
                    return await asyncio.to_thread(blobs.adopt, part, sha256)
                except ValueError as exc:  # hash mismatch: start over
                    last = str(exc)
                    part.unlink(missing_ok=True)
                except (PeerError, OSError) as exc:
                    last = getattr(exc, "message", str(exc))
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
            part.unlink(missing_ok=True)
            raise PeerError(f"cannot fetch blob {sha256} from {server}: {last}")

    async def _download(self, server: str, sha256: str, part: Path, size: int | None) -> None:
        import httpx

        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            async with await self.peers.stream(server, f"/api/v1/peer/blobs/{sha256}", headers) as resp:
                if resp.status_code == 416:  # we already have all of it
                    return
                if resp.status_code not in (200, 206):
                    await resp.aread()
                    raise PeerError(f"HTTP {resp.status_code} for blob {sha256}", resp.status_code)
                mode = "ab" if resp.status_code == 206 else "wb"
                written = have if mode == "ab" else 0
                with open(part, mode) as f:
                    async for chunk in resp.aiter_bytes(1024 * 1024):
                        written += len(chunk)
                        if size is not None and written > size:
                            raise ValueError(f"blob {sha256} from {server} is larger than its {size} bytes")
                        f.write(chunk)
        except httpx.HTTPError as exc:
            raise PeerError(f"transfer from {server} interrupted: {exc}") from None

    # -- results -------------------------------------------------------------------------
    def _lease_path(self, lease: Lease, action: str) -> str:
        return f"/api/v1/peer/leases/{lease.job}/{lease.frame}/{lease.attempt}/{action}"

    async def heartbeat(self, home: str, lease: Lease) -> None:
        await self.peers.request(home, "POST", self._lease_path(lease, "heartbeat"), json={})

    async def upload_result(self, home: str, lease: Lease, blob: Blob, log_text: str) -> None:
        path = self.core.blobs.path(blob.sha256)
        await self._with_retries(lambda: self.peers.request(
            home, "PUT", self._lease_path(lease, "output"), file=path, file_sha256=blob.sha256,
            headers={"Content-Type": "application/x-tar"}))
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


def lease_from_json(data: dict, owner: str) -> Lease:
    try:
        return Lease(
            job=int(data["job"]), frame=int(data["frame"]), attempt=int(data["attempt"]),
            backend=str(data["backend"]), settings=dict(data["settings"]),
            seed_sha256=str(data["seed"]["sha256"]), seed_size=int(data["seed"]["size"]),
            frame_ids=tuple(int(f) for f in data["frame_ids"]),
            depends=tuple({"url": str(d["url"]), "sha256": str(d["sha256"]), "size": int(d["size"])}
                          for d in data["depends"]),
            expires=None, owner=owner, lease_seconds=float(data["lease_seconds"]),
            timeout=None if data.get("timeout") is None else float(data["timeout"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PeerError(f"malformed lease from {owner}: {exc!r}") from None

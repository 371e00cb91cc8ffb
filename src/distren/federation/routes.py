"""The peer API under /api/v1/peer: every route needs a signed request (auth.py). A
render-only worker (signed as `worker:NAME`) may use hello, claim, more, heartbeat, output,
complete, fail and blobs; the others answer it 403.

    GET  /peer/hello                                   this server's name, backends and slots
    POST /peer/claim             {"backends": [...]}   200 a lease, or 204 no work (Retry-After)
    POST /peer/work                                    the caller has work: ask it within {"within": s}
    POST /peer/split             {"job": id}           the caller (a home) asks for the unstarted tail of
                                                       a chunk of its job rendering here
    POST /peer/release   {"job": id, "frames": [[frame, attempt], ...]}   the caller gives back frames
                                                       of a chunk it holds (not started): {"released": [...]}
    POST /peer/leases/{job}/{frame}/{attempt}/heartbeat   renew; 409 when the lease is gone
    PUT  /peer/leases/{job}/{frame}/{attempt}/output      the frame tarball (body hash signed)
    POST /peer/leases/{job}/{frame}/{attempt}/complete {"sha256", "size", "log"}
    POST /peer/leases/{job}/{frame}/{attempt}/fail     {"log", "error"}
    POST /peer/leases/{job}/{frame}/{attempt}/more     more frames for the same renderer run (a chunk)
    GET  /peer/blobs/{sha256}                          a seed or output blob (HTTP Range)
    GET  /peer/frontier/{job}/{frame}                  the frames of other servers it waits for
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Callable

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from starlette.requests import ClientDisconnect

from ..errors import BadJob, Conflict, Forbidden, NotFound, Unauthorized
from ..chunks import MAX_CHUNK
from ..scheduler import with_depends
from ..server.bodies import body_chunks, small_body
from ..store.blobs import StreamWriter
from ..url import MAX_ID, format_url
from . import auth

MAX_JSON_BYTES = 4 * 1024 * 1024


class BlobFileResponse(FileResponse):
    """A file (with HTTP Range) read in 1 MiB pieces, each in a thread: a 1 GB seed is a
    thousand trips to a thread, not sixteen thousand (starlette reads 64 KiB). `on_close` is
    called once the response ended, however it ended (a blob's pin released)."""

    chunk_size = 1024 * 1024

    def __init__(self, *args, on_close: Callable[[], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()


def pinned_blob_response(core, sha256: str, **kwargs) -> BlobFileResponse:
    """A blob as a response, pinned while it is sent (a delete meanwhile does not take it
    away); NotFound when it is not there."""
    if not core.blobs.pin(sha256):
        raise NotFound(f"no blob {sha256}")
    return BlobFileResponse(core.blobs.path(sha256), on_close=lambda: core.storage.release([sha256]), **kwargs)


def _target(request: Request) -> str:
    q = request.url.query
    return request.url.path + (f"?{q}" if q else "")


def verify_peer(fed, me: str, request: Request, known_only: bool = True, workers: bool = False) -> tuple[str, str]:
    """The signed peer's name and body hash; only servers in the peer table are served (hello
    answers any holder of the secret, so that it can learn a mismatch). 401 otherwise. A
    render-only worker (`worker:NAME`, any holder of the secret, no peer table entry) is served
    only by the routes that say `workers=True`: claim, more, heartbeat, output, complete, fail
    and blobs (and hello); the others (and reads behind --protect-reads) answer 403."""
    if fed is None:
        raise Unauthorized("this server has no federation secret: peer requests are refused")
    receiver = None if known_only else auth.ANY_RECEIVER
    peer, body_sha = fed.verifier.verify(request.method, _target(request), request.headers, receiver)
    if auth.is_worker(peer):
        if known_only and not workers:
            raise Forbidden(f"{peer} is a render-only worker: workers may only claim, heartbeat, fetch blobs"
                            " and upload results")
        fed.worker_heard(peer)
        return peer, body_sha
    if known_only and peer not in fed.peers.peers:
        raise Unauthorized(f"server {peer!r} is not a peer of {me!r}")
    fed.peers.heard_from(peer)
    return peer, body_sha


def create_peer_router(get_core: Callable, get_fed: Callable) -> APIRouter:
    router = APIRouter(prefix="/api/v1/peer", tags=["peer"])

    def verify(request: Request, known_only: bool = True, workers: bool = False) -> tuple[str, str]:
        return verify_peer(get_fed(), get_core().name, request, known_only, workers)

    async def signed_json(request: Request, workers: bool = False) -> tuple[str, dict]:
        peer, body_sha = verify(request, workers=workers)
        try:
            body = await small_body(request, MAX_JSON_BYTES, get_core().config.body_timeout, "peer request body")
        except ClientDisconnect:
            raise BadJob("the peer went away before its request body arrived") from None
        auth.check_body(body_sha, hashlib.sha256(body).hexdigest())
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            raise BadJob("peer request body is not JSON") from None
        if not isinstance(data, dict):
            raise BadJob("peer request body must be a JSON object")
        return peer, data

    def check_ids(job: int, frame: int, attempt: int) -> None:
        for v in (job, frame, attempt):
            if not 0 <= v <= MAX_ID:
                raise BadJob("ids must be integers >= 0")

    @router.get("/hello")
    async def hello(request: Request) -> dict:
        verify(request, known_only=False)
        core = get_core()
        return {"name": core.name, "slots": core.config.slots,
                "backends": core.available_backends() if core.config.slots > 0 else []}

    @router.post("/work")
    async def work(request: Request) -> dict:
        peer, data = await signed_json(request)
        within = data.get("within")
        if within is not None and (isinstance(within, bool) or not isinstance(within, (int, float))
                                   or not 0 <= within <= 3600):
            raise BadJob("\"within\" must be a number of seconds from 0 to 3600")
        get_fed().announced(peer, within)
        return {}

    @router.post("/claim", responses={204: {"description": "no work"}})
    async def claim(request: Request):
        peer, data = await signed_json(request, workers=True)
        backends = data.get("backends")
        if not isinstance(backends, list) or not all(isinstance(b, str) for b in backends):
            raise BadJob("claim needs {\"backends\": [names]}")
        core, fed = get_core(), get_fed()
        if auth.is_worker(peer):
            fed.worker_heard(peer, backends)
        else:
            fed.peers.learn_backends(fed.peers.get(peer), backends)
        lease = await with_depends(core.scheduler, core.scheduler.claim(peer, backends, fed.settings.lease_seconds))
        if lease is None:
            if fed.on_hungry is not None:   # chunks others render here may be split for it
                fed.on_hungry(peer, backends)
            wait = fed.no_work_answer(peer)
            return Response(status_code=204, headers={"Retry-After": f"{wait:.1f}"})
        fed.announcer.served(peer)
        if auth.is_worker(peer):
            fed.worker_heard(peer, leased=True)
        data = lease.to_json(fed.settings.lease_seconds)
        data["chunk"], data["ready"], data["servers"] = core.scheduler.chunk_request(lease.job)   # chunk hints
        # an encode frame's lease names every frame's output: encoded in a thread
        body = await asyncio.to_thread(json.dumps, data)
        return Response(body, media_type="application/json")

    @router.post("/split")
    async def split(request: Request) -> dict:
        """A home asks for the unstarted tail of a chunk of its job that renders here (one of
        its renderers has nothing to do): answered at once, the tail is given back (release)
        by this server when its renderer has not reached it."""
        peer, data = await signed_json(request)
        job = data.get("job")
        if isinstance(job, bool) or not isinstance(job, int) or not 0 <= job <= MAX_ID:
            raise BadJob("split needs {\"job\": id}")
        fed = get_fed()
        if fed.on_split is not None:
            fed.on_split(peer, job)
        return {}

    @router.post("/release")
    async def release(request: Request) -> dict:
        """The caller gives back frames of a chunk it holds that its renderer has not started:
        ready again at once (Scheduler.release). Frames no longer leased to it are skipped."""
        peer, data = await signed_json(request, workers=True)
        job, frames = data.get("job"), data.get("frames")
        if (isinstance(job, bool) or not isinstance(job, int) or not isinstance(frames, list)
                or not 1 <= len(frames) <= MAX_CHUNK
                or not all(isinstance(f, list) and len(f) == 2 and all(type(v) is int and 0 <= v <= MAX_ID for v in f)
                           for f in frames)):
            raise BadJob(f"release needs {{\"job\": id, \"frames\": [[frame, attempt], ...]}} (1..{MAX_CHUNK})")
        check_ids(job, 0, 0)
        released = get_core().scheduler.release(job, [(f, a) for f, a in frames], peer)
        return {"released": released}

    @router.post("/leases/{job}/{frame}/{attempt}/more")
    async def more(job: int, frame: int, attempt: int, request: Request):
        """A chunk: the peer that holds this lease asks for up to `limit` more frames of the
        job, the consecutive ready ones after it, to render in the same renderer process."""
        peer, data = await signed_json(request, workers=True)
        check_ids(job, frame, attempt)
        limit = data.get("limit")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CHUNK:
            raise BadJob(f"more needs {{\"limit\": 1..{MAX_CHUNK}}}")
        core, fed = get_core(), get_fed()
        leases = core.scheduler.claim_more_for(job, frame, attempt, peer, limit, fed.settings.lease_seconds)
        leases = [await with_depends(core.scheduler, one) for one in leases]
        body = await asyncio.to_thread(json.dumps, {"leases": [one.to_json(fed.settings.lease_seconds)
                                                               for one in leases]})
        return Response(body, media_type="application/json")

    @router.post("/leases/{job}/{frame}/{attempt}/heartbeat")
    async def heartbeat(job: int, frame: int, attempt: int, request: Request) -> dict:
        peer, _ = await signed_json(request, workers=True)
        check_ids(job, frame, attempt)
        fed = get_fed()
        expires = get_core().scheduler.heartbeat(job, frame, attempt, peer, fed.settings.lease_seconds)
        return {"lease_seconds": fed.settings.lease_seconds, "expires": expires}

    @router.put("/leases/{job}/{frame}/{attempt}/output")
    async def put_output(job: int, frame: int, attempt: int, request: Request) -> dict:
        peer, body_sha = verify(request, workers=True)
        check_ids(job, frame, attempt)
        core = get_core()
        if not core.scheduler.is_running(job, frame, attempt, peer):
            raise Conflict(f"attempt {attempt} of frame {frame} of job {job} is not leased to {peer}")
        # hashed and written in a thread a batch at a time while the next batch arrives (and the
        # fsync in a thread): the event loop serves everyone else meanwhile. (No free-space
        # reserve here: the reserve is kept for the outputs of the jobs already taken.)
        upload = StreamWriter(await asyncio.to_thread(core.blobs.writer, core.config.max_job_bytes))
        try:
            async for chunk in body_chunks(request, core.config.body_timeout):
                await upload.write(chunk)
            writer = await upload.finish()
        except BaseException:
            upload.abort()
            raise
        try:
            blob = await core.storage.written(asyncio.to_thread(writer.commit, expect_sha256=body_sha))
        except ValueError:
            raise Unauthorized("body does not match its signed hash (tampered?)") from None
        except BaseException:
            writer.abort()
            raise
        # recorded with the lease (fenced by the attempt): nothing to forget when it ends
        try:
            core.scheduler.record_upload(job, frame, attempt, peer, blob)
        finally:   # referenced by the frame now, or (a lease gone meanwhile) reclaimed
            core.storage.release([blob.sha256], written=True)
        return {"sha256": blob.sha256, "size": blob.size}

    @router.post("/leases/{job}/{frame}/{attempt}/complete")
    async def complete(job: int, frame: int, attempt: int, request: Request) -> dict:
        peer, data = await signed_json(request, workers=True)
        check_ids(job, frame, attempt)
        core = get_core()
        sha, log = data.get("sha256"), data.get("log", "")
        if not isinstance(sha, str) or not isinstance(log, str):
            raise BadJob("complete needs {\"sha256\": str, \"log\": str}")
        blob = core.scheduler.uploaded(job, frame, attempt, peer)
        if blob is None or blob.sha256 != sha:
            raise Conflict(f"output {sha} was not uploaded for this lease")
        core.scheduler.complete(job, frame, attempt, blob, peer, log, owner=peer)
        return {"state": "done"}

    @router.post("/leases/{job}/{frame}/{attempt}/fail")
    async def fail(job: int, frame: int, attempt: int, request: Request) -> dict:
        peer, data = await signed_json(request, workers=True)
        check_ids(job, frame, attempt)
        log, error = data.get("log", ""), data.get("error", "render failed")
        interrupted = data.get("interrupted", False)
        if not isinstance(log, str) or not isinstance(error, str) or not isinstance(interrupted, bool):
            raise BadJob("fail needs {\"log\": str, \"error\": str, \"interrupted\": bool}")
        state = get_core().scheduler.fail(job, frame, attempt, log, f"{error} (on {peer})",
                                          counts=not interrupted, owner=peer)
        return {"state": state}

    @router.get("/frontier/{job}/{frame}")
    async def frontier(job: int, frame: int, request: Request):
        """The frames of other servers that this frame waits for, through this server's
        unfinished frames (Scheduler.frontier): what a peer chasing a dependency cycle asks."""
        verify(request)
        check_ids(job, frame, 0)
        sched = get_core().scheduler
        page = sched.frames(job, after=frame - 1, limit=1)   # NotFound for an unknown job
        if not page or page[0]["frame"] != frame:
            raise NotFound(f"no frame {format_url(sched.server, job, frame)}")

        def answer() -> bytes:
            # the walk and the encoding of up to 2,000 URLs run in a thread, off the event loop
            waits_on, complete = sched.frontier(job, frame)
            return json.dumps({"state": page[0]["state"], "waits_on": [str(u) for u in waits_on],
                               "complete": complete}).encode()

        return Response(await asyncio.to_thread(answer), media_type="application/json")

    @router.get("/blobs/{sha256}")
    async def blob(sha256: str, request: Request):
        verify(request, workers=True)
        return pinned_blob_response(get_core(), sha256, media_type="application/octet-stream")

    return router

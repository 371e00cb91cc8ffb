"""The HTTP API, under /api/v1 (OpenAPI document at /api/v1/openapi.json).

Errors are JSON: `{"error": {"code": "...", "message": "..."}}` with a 4xx status naming the
problem; one handler turns every DistrenError into such a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from pathlib import Path
from urllib.parse import unquote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, logs
from ..errors import BadRequest, DistrenError, NotFound, StorageFull, TooLarge, Unauthorized
from ..federation.auth import (H_SIG, TOKEN_COOKIE, Verifier, bearer_token, check_client_token, load_secret,
                              token_matches)
from ..federation.peers import PeerClient, PeerError
from ..federation.routes import BlobFileResponse, create_peer_router, pinned_blob_response, verify_peer
from ..federation.service import Federation, FederationSettings
from ..events import EventBus
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..metrics import ByteCounter
from ..store.blobs import StreamWriter
from ..url import MAX_ID, format_url
from ..web import add_dashboard
from .bodies import body_chunks, small_body
from .config import ServerConfig
from ..scheduler import MAX_PAGE, PAGE
from .core import Core
from .runner import Runner
from .slurm import SlurmExecutor

log = logging.getLogger("distren.server")

JobId = PathParam(ge=0, le=MAX_ID, description="job id")
FrameId = PathParam(ge=0, le=MAX_ID, description="frame id")

TARBALL_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
TARBALL_RESPONSE = {200: {"content": {"application/x-tar": {}}, "description": "a tarball"}}
PATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "required": ["priority"],
            "properties": {"priority": {"type": "integer", "minimum": -1000, "maximum": 1000}},
        }}},
    }
}
# The largest JSON body of a client request (PATCH /jobs/{id}).
MAX_JSON_BODY = 64 * 1024


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(config: ServerConfig, core: Core | None = None) -> FastAPI:
    state: dict = {}

    token = load_token(config.client_token_file)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        c = core or Core(config)
        fed = make_federation(c, config)
        runner = Runner(c, config.slots, fed)
        if config.slurm and fed is None:
            raise DistrenError("--slurm needs --federation-secret-file")
        executor = SlurmExecutor(c, runner, fed, config) if config.slurm else None
        state["core"], state["runner"], state["fed"], state["slurm"] = c, runner, fed, executor
        c.metrics.snapshot = lambda: _metrics_snapshot(c, runner, fed)
        events = EventBus(c.scheduler.job_signatures, c.scheduler.job)
        c.scheduler.on_frame = events.frame
        state["events"] = app.state.events = events
        events.start()
        # what start-up made (modules, the app, the settings) lives as long as the server: out
        # of the collector's sight, whose full passes it made some 30-50 ms longer each, on the
        # event loop, with a 100,000-frame job running (done before the loop-lag watch starts:
        # this collection takes 100-200 ms once)
        gc.collect()
        gc.freeze()
        # the start-up sweep (orphans of a crash) before anything renders or is taken in
        await c.storage.start()
        await runner.start()
        if fed is not None:
            fed.start()
        if executor is not None:
            executor.start()
        try:
            yield
        finally:
            if executor is not None:
                await executor.stop()   # scancel of the worker jobs
            await events.stop()
            await runner.stop()
            if fed is not None:
                await fed.stop()
            await c.storage.stop()
            if core is None:
                c.close()

    app = FastAPI(
        title="distren",
        version=__version__,
        description="A distributed render farm. See docs/api.md.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )

    @app.exception_handler(DistrenError)
    async def distren_error(request: Request, exc: DistrenError):
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg')}")
        return error_response(400, "bad_request", "; ".join(parts) or "bad request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    def core_() -> Core:
        return state["core"]

    def fed_():
        return state.get("fed")

    def client_auth(request: Request) -> None:
        check_client_token(token, request.headers.get("authorization"))

    def may_read(request: Request) -> bool:
        """Whether the request may read: always, unless --protect-reads; then with the client
        token (header, or the dashboard's cookie: browsers send no header with page loads,
        images and event streams), or signed by a peer (a query it forwards for a client)."""
        if not config.protect_reads or token is None:
            return True
        if token_matches(token, bearer_token(request.headers.get("authorization"))):
            return True
        if token_matches(token, unquote(request.cookies[TOKEN_COOKIE]) if TOKEN_COOKIE in request.cookies else None):
            return True
        if H_SIG in request.headers:
            verify_peer(fed_(), core_().name, request)  # 401 unless a peer signed it
            return True
        return False

    def read_auth(request: Request) -> None:
        if not may_read(request):
            raise Unauthorized("this server needs a client token for reads too (--protect-reads): "
                               "Authorization: Bearer <token>")

    api = APIRouter(prefix="/api/v1", dependencies=[Depends(read_auth)])

    def peers_json() -> list[dict]:
        fed = fed_()
        return [p.to_json() for p in fed.peers.peers.values()] if fed else []

    @api.get("/server", summary="This server: name, version, backends, slots, peers")
    async def server_info() -> dict:
        # (in a thread: at start-up the renderers' version probes may still run, and the event
        # loop does not wait for them)
        info = await asyncio.to_thread(core_().server_info)
        info["peers"] = peers_json()
        info["loop_lag_ms"] = dict(state["runner"].loop_lag_ms)
        conc = state["runner"].concurrency
        info["renders"] = {"limit": conc.limit, "running": conc.running, "rendering": conc.rendering,
                           "auto": conc.adaptive}
        info["draining"] = state["runner"].draining
        fed = fed_()
        info["workers"] = [w.to_json() for w in fed.live_workers(time.time())] if fed else []
        if state.get("slurm") is not None:
            info["slurm"] = state["slurm"].to_json()
        info["storage"] = await core_().storage.usage()
        return info

    @api.post("/server/drain", summary="Drain this server: it starts nothing new and hands its peers' frames back")
    async def drain(request: Request) -> dict:
        client_auth(request)
        handed_back = state["runner"].set_draining(True)
        return {**await server_info(), "handed_back": handed_back}

    @api.post("/server/undrain", summary="End a drain: this server renders again")
    async def undrain(request: Request) -> dict:
        client_auth(request)
        state["runner"].set_draining(False)
        return await server_info()

    @api.get("/peers", summary="This server's peers and their health")
    async def peers() -> list[dict]:
        return peers_json()

    @api.get("/servers/{server}/{rest:path}", summary="Query a peer's jobs and frames through this server")
    async def proxy(server: str, rest: str, request: Request):
        c = core_()
        if server == c.name:
            raise NotFound(f"use /api/v1/{rest} for this server's own jobs")
        fed = fed_()
        if fed is None or server not in fed.peers.peers:
            raise NotFound(f"server {server!r} is not a peer of {c.name!r}")
        parts = rest.split("/")
        if parts[0] != "jobs" or any(p in ("", ".", "..") for p in parts[1:]):
            raise NotFound(f"only jobs, frames, outputs and bundles of peers can be queried: {rest!r}")
        query = f"?{request.url.query}" if request.url.query else ""
        headers = {"Range": request.headers["range"]} if "range" in request.headers else None
        return await proxy_get(fed.peers, server, f"/api/v1/{rest}{query}", headers)

    @api.post("/jobs", status_code=201, openapi_extra=TARBALL_BODY, summary="Submit a job package (raw tarball body)")
    async def submit(request: Request) -> dict:
        client_auth(request)
        c = core_()
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(400, "bad_request", "Content-Length must be a number")
            if int(length) > c.config.max_job_bytes:
                raise TooLarge(f"package of {length} bytes exceeds the limit of {c.config.max_job_bytes} bytes")
        c.storage.refuse_if_low(int(length or 0))   # 507 while the free space is below the reserve
        upload: StreamWriter | None = None
        try:
            async for chunk in body_chunks(request, c.config.body_timeout):
                if upload is None:  # no file for a client that sends nothing
                    upload = StreamWriter(await asyncio.to_thread(c.new_upload))
                # hashed and written in a thread, a batch at a time, while the next batch arrives
                await upload.write(chunk)
            if upload is None:
                return error_response(400, "bad_package", "empty body: send the job tarball as the request body")
            writer = await upload.finish()
        except OSError as exc:
            if upload is not None:
                upload.abort()
            raise StorageFull(f"cannot store the package: {exc.strerror or exc}") from None
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
        job = await c.submit(writer)
        log.info("job %s submitted (%d frames)", job["url"], job["total_frames"], extra=logs.about(c.name, job["id"]))
        return job

    @api.get("/events", summary="Server-sent events: job and frame changes (text/event-stream); see docs/api.md",
             responses={200: {"content": {"text/event-stream": {}}, "description": "the stream"}})
    async def events_stream(
        request: Request,
        job: int | None = Query(None, ge=0, le=MAX_ID, description="also the frame events of this job"),
        last_event_id: int | None = Query(None, ge=0, description="resume after this event id (as Last-Event-ID)"),
    ):
        after = last_event_id
        header = request.headers.get("last-event-id")
        if header is not None:
            if not header.strip().isdigit() or len(header.strip()) > 19:
                return error_response(400, "bad_request", "Last-Event-ID must be an event id (a whole number)")
            after = int(header)
        return StreamingResponse(state["events"].stream(after, job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.get("/jobs", summary="Every job of this server")
    async def list_jobs() -> JSONResponse:
        return JSONResponse(core_().scheduler.jobs())

    @api.get("/jobs/{job}", summary="One job: state, frame counts by state, timings")
    async def get_job(job: int = JobId) -> JSONResponse:
        return JSONResponse(core_().scheduler.job(job))

    @api.get("/jobs/{job}/frames", summary="A page of a job's frames, in id order (Link header: the next page)")
    async def get_frames(
        request: Request, job: int = JobId,
        after: int | None = Query(None, ge=-1, le=MAX_ID, description="only frames with ids above this one"),
        limit: int = Query(PAGE, ge=1, le=MAX_PAGE, description=f"frames per page (default {PAGE})"),
        state: str | None = Query(None, pattern="^(waiting|ready|running|done|failed|cancelled)$",
                                  description="only frames in this state"),
    ) -> JSONResponse:
        frames = core_().scheduler.frames(job, after, limit, state)
        headers = {}
        if len(frames) == limit:
            nxt = f"{request.url.path}?after={frames[-1]['frame']}&limit={limit}" + (f"&state={state}" if state else "")
            headers["Link"] = f'<{nxt}>; rel="next"'
        return JSONResponse(frames, headers=headers)

    @api.get("/jobs/{job}/frames/{frame}", summary="One frame: state, attempts, timings, log")
    async def get_frame(job: int = JobId, frame: int = FrameId) -> JSONResponse:
        return JSONResponse(core_().scheduler.frame(job, frame))

    @api.get("/jobs/{job}/frames/{frame}/output", responses=TARBALL_RESPONSE, summary="A done frame's tarball")
    async def get_output(job: int = JobId, frame: int = FrameId):
        c = core_()
        blob = c.scheduler.frame_output(job, frame)
        return pinned_blob_response(
            c, blob.sha256,
            media_type="application/x-tar",
            filename=f"{c.name}-{job}-{frame}.tar",
            headers={"X-Distren-SHA256": blob.sha256},
        )

    @api.get("/jobs/{job}/frames/{frame}/preview", summary="A done frame's image, at most 256 px on its long side (PNG)",
             responses={200: {"content": {"image/png": {}}, "description": "the preview"},
                        304: {"description": "not modified (If-None-Match)"},
                        404: {"description": "no such frame, or `no_preview`: the output has no image one can read"},
                        409: {"description": "the frame is not done"}})
    async def get_preview(request: Request, job: int = JobId, frame: int = FrameId):
        path, etag = await core_().preview(job, frame)
        # a retried frame gets a new output: same URL, new ETag; browsers revalidate (no-cache)
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        # a preview is small (256 px): read whole, so that a delete while it is sent cannot
        # fail the response half-way
        try:
            content = await asyncio.to_thread(Path(path).read_bytes)
        except FileNotFoundError:
            raise NotFound(f"frame {frame} of job {job} has no preview any more (deleted)") from None
        return Response(content, media_type="image/png", headers=headers)

    @api.get("/jobs/{job}/bundle", responses=TARBALL_RESPONSE, summary="The job's finished frames as one tarball")
    async def get_bundle(job: int = JobId):
        c = core_()
        blob = await c.bundle(job)   # pinned: released once sent
        return BlobFileResponse(
            c.blobs.path(blob.sha256),
            media_type="application/x-tar",
            filename=f"{c.name}-{job}-bundle.tar",
            headers={"X-Distren-SHA256": blob.sha256},
            on_close=lambda: c.storage.release([blob.sha256]),
        )

    @api.patch("/jobs/{job}", openapi_extra=PATCH_BODY, summary="Change a job's priority")
    async def patch_job(request: Request, job: int = JobId) -> dict:
        client_auth(request)
        body = await small_json(request, core_().config.body_timeout)
        unknown = sorted(set(body) - {"priority"})
        if unknown or "priority" not in body:
            raise BadRequest("PATCH takes {\"priority\": -1000..1000}" +
                             (f"; {', '.join(map(repr, unknown))} cannot be changed" if unknown else ""))
        c = core_()
        c.scheduler.set_priority(job, body["priority"])
        return c.scheduler.job(job)

    def job_switch(request: Request, job: int, switch) -> dict:
        """Pause or resume (one transaction): the job as it is then."""
        client_auth(request)
        sched = core_().scheduler
        switch(sched)(job)
        return sched.job(job)

    @api.post("/jobs/{job}/pause", summary="Pause a job: none of its frames starts; running ones finish")
    async def pause(request: Request, job: int = JobId) -> dict:
        return job_switch(request, job, lambda sched: sched.pause)

    @api.post("/jobs/{job}/resume", summary="Resume a paused job")
    async def resume(request: Request, job: int = JobId) -> dict:
        return job_switch(request, job, lambda sched: sched.resume)

    @api.post("/jobs/{job}/cancel", summary="Cancel a job: unfinished frames are cancelled")
    async def cancel(request: Request, job: int = JobId) -> dict:
        client_auth(request)
        c = core_()
        for j, f, a in await c.job_operations.run(job, c.scheduler.cancel_steps(job)):
            state["runner"].kill(j, f, a)
        log.info("job %s cancelled", format_url(c.name, job), extra=logs.about(c.name, job))
        return c.scheduler.job(job)

    @api.post("/jobs/{job}/retry", summary="Requeue a job's failed and cancelled frames")
    async def retry(request: Request, job: int = JobId) -> dict:
        client_auth(request)
        c = core_()
        n = await c.job_operations.run(job, c.scheduler.retry_steps(job))
        out = c.scheduler.job(job)
        out["requeued"] = n
        return out

    @api.delete("/jobs/{job}", summary="Delete a job (its id is never reused)")
    async def delete(request: Request, job: int = JobId) -> dict:
        client_auth(request)
        c = core_()
        for j, f, a in await c.job_operations.run(job, c.scheduler.delete_steps(job)):
            state["runner"].kill(j, f, a)
        log.info("job %s deleted", format_url(c.name, job), extra=logs.about(c.name, job))
        return {"deleted": format_url(c.name, job)}

    @app.get("/metrics", summary="Prometheus metrics (text format); see docs/api.md", tags=["metrics"],
             responses={200: {"content": {"text/plain": {}}, "description": "the metrics"}},
             dependencies=[Depends(read_auth)])
    async def metrics() -> Response:
        body = await asyncio.to_thread(core_().metrics.exposition)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    app.include_router(api)
    app.include_router(create_peer_router(core_, fed_))
    add_dashboard(app, core_, fed_, may_read)
    app.add_middleware(ByteCounter, metrics=lambda: state["core"].metrics if "core" in state else None)
    return app


def _metrics_snapshot(core: Core, runner: Runner, fed) -> dict:
    peers = list(fed.peers.peers.values()) if fed is not None else []
    return {"frames": core.scheduler.frame_totals(), "slots": runner.concurrency.limit if runner.slots else 0,
            "slots_busy": runner.concurrency.rendering, "peers": len(peers),
            "peers_up": sum(1 for p in peers if p.healthy)}


async def small_json(request: Request, stall: float) -> dict:
    """A client's JSON object body, at most MAX_JSON_BODY bytes; 400 (413 beyond, 408 when it
    stalls for `stall` seconds) otherwise."""
    body = await small_body(request, MAX_JSON_BODY, stall)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the request body must be JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def load_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise DistrenError(f"cannot read the client token file {path}: {exc.strerror}") from None
    if not token:
        raise DistrenError(f"the client token file {path} is empty")
    return token


def make_federation(core: Core, config: ServerConfig):
    """The federation service, when a secret is configured. Only servers in the peer table
    may claim this server's frames."""
    if config.federation_secret_file is None:
        if config.peers:
            raise DistrenError("--peer needs --federation-secret-file")
        return None
    secret = load_secret(config.federation_secret_file)
    settings = FederationSettings(
        lease_seconds=config.lease_seconds, heartbeat_seconds=config.heartbeat_seconds,
        claim_backoff_max=config.claim_backoff_max, watch_seconds=config.watch_seconds,
        idle_claims_per_second=config.idle_claims_per_second, peer_timeout=config.peer_timeout,
    )
    peers = PeerClient(core.name, secret, config.peers, ca_file=config.ca_file)
    return Federation(core, peers, settings, Verifier(secret, core.name))


async def proxy_get(peers, server: str, path: str, headers: dict | None = None):
    """Forward a GET to a peer; stream its answer back (downloads are never held in memory)."""
    from starlette.responses import StreamingResponse

    try:
        cm = await peers.stream(server, path, headers)
        resp = await cm.__aenter__()
    except PeerError:
        raise
    except Exception as exc:
        raise PeerError(f"peer {server} unreachable: {exc}") from None
    headers = {k: v for k, v in resp.headers.items()
               if k.lower() in ("content-type", "content-disposition", "x-distren-sha256", "content-length",
                                "content-range", "accept-ranges")}

    async def body():
        try:
            async for chunk in resp.aiter_raw(1024 * 1024):
                yield chunk
        finally:
            await cm.__aexit__(None, None, None)

    return StreamingResponse(body(), status_code=resp.status_code, headers=headers)

"""The HTTP API, under /api/v1 (OpenAPI document at /api/v1/openapi.json).

Errors are JSON: `{"error": {"code": "...", "message": "..."}}` with a 4xx status naming the
problem; one handler turns every DistrenError into such a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import DistrenError, TooLarge
from ..url import MAX_ID, format_url
from .config import ServerConfig
from .core import Core
from .runner import Runner

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


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app(config: ServerConfig, core: Core | None = None) -> FastAPI:
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        c = core or Core(config)
        runner = Runner(c, config.slots)
        state["core"], state["runner"] = c, runner
        await runner.start()
        try:
            yield
        finally:
            await runner.stop()
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

    api = APIRouter(prefix="/api/v1")

    def core_() -> Core:
        return state["core"]

    @api.get("/server", summary="This server: name, version, backends, slots")
    async def server_info() -> dict:
        return core_().server_info()

    @api.post("/jobs", status_code=201, openapi_extra=TARBALL_BODY, summary="Submit a job package (raw tarball body)")
    async def submit(request: Request) -> dict:
        c = core_()
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return error_response(400, "bad_request", "Content-Length must be a number")
            if int(length) > c.config.max_job_bytes:
                raise TooLarge(f"package of {length} bytes exceeds the limit of {c.config.max_job_bytes} bytes")
        upload = c.new_upload()
        try:
            async for chunk in request.stream():
                upload.write(chunk)
        except BaseException:
            upload.abort()
            raise
        if upload.size == 0:
            upload.abort()
            return error_response(400, "bad_package", "empty body: send the job tarball as the request body")
        return await c.submit(upload)

    @api.get("/jobs", summary="Every job of this server")
    async def list_jobs() -> list[dict]:
        return core_().scheduler.jobs()

    @api.get("/jobs/{job}", summary="One job: state, frame counts by state, timings")
    async def get_job(job: int = JobId) -> dict:
        return core_().scheduler.job(job)

    @api.get("/jobs/{job}/frames", summary="The frames of a job")
    async def get_frames(job: int = JobId) -> list[dict]:
        return core_().scheduler.frames(job)

    @api.get("/jobs/{job}/frames/{frame}", summary="One frame: state, attempts, timings, log")
    async def get_frame(job: int = JobId, frame: int = FrameId) -> dict:
        return core_().scheduler.frame(job, frame)

    @api.get("/jobs/{job}/frames/{frame}/output", responses=TARBALL_RESPONSE, summary="A done frame's tarball")
    async def get_output(job: int = JobId, frame: int = FrameId):
        c = core_()
        blob = c.scheduler.frame_output(job, frame)
        return FileResponse(
            c.blobs.path(blob.sha256),
            media_type="application/x-tar",
            filename=f"{c.name}-{job}-{frame}.tar",
            headers={"X-Distren-SHA256": blob.sha256},
        )

    @api.get("/jobs/{job}/bundle", responses=TARBALL_RESPONSE, summary="The job's finished frames as one tarball")
    async def get_bundle(job: int = JobId):
        c = core_()
        path, temporary = await asyncio.to_thread(c.bundle, job)
        return FileResponse(
            path,
            media_type="application/x-tar",
            filename=f"{c.name}-{job}-bundle.tar",
            background=BackgroundTask(path.unlink, missing_ok=True) if temporary else None,
        )

    @api.post("/jobs/{job}/cancel", summary="Cancel a job: unfinished frames are cancelled")
    async def cancel(job: int = JobId) -> dict:
        c = core_()
        for j, f, _ in c.scheduler.cancel(job):
            state["runner"].kill(j, f)
        return c.scheduler.job(job)

    @api.post("/jobs/{job}/retry", summary="Requeue a job's failed and cancelled frames")
    async def retry(job: int = JobId) -> dict:
        c = core_()
        n = c.scheduler.retry(job)
        out = c.scheduler.job(job)
        out["requeued"] = n
        return out

    @api.delete("/jobs/{job}", summary="Delete a job (its id is never reused)")
    async def delete(job: int = JobId) -> dict:
        c = core_()
        for j, f, _ in c.scheduler.delete(job):
            state["runner"].kill(j, f)
        return {"deleted": format_url(c.name, job)}

    app.include_router(api)
    return app

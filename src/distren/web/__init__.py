"""The dashboard every server serves: server-rendered HTML pages, a little plain JavaScript
(`static/dashboard.js`, no build step, nothing loaded from the internet) that follows the
server's event stream (`GET /api/v1/events`) and calls the JSON API.

Pages:
  /                             this server's jobs (state, progress bar, ETA) and its peers
  /jobs/{id}                    a job: counts, ETA, controls (cancel, retry, pause, resume,
                                priority; the client token is kept in the browser), a page of
                                frame previews that fill in as frames finish, a frame's details
                                and log
  /servers/{name}               a peer's jobs, read through this server (updated every 2 s)
  /servers/{name}/jobs/{id}     a peer's job, read-only
  /static/...                   the script and the style sheet
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import NotFound
from ..url import MAX_ID, check_server_name

STATIC = Path(__file__).parent / "static"


def _page(title: str, server: str, attrs: dict[str, str], content: str) -> HTMLResponse:
    data = " ".join(f'data-{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
    return HTMLResponse(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - distren</title><link rel="stylesheet" href="/static/dashboard.css"></head>
<body {data}>
<header><a href="/">distren</a><span class="server">{html.escape(server)} &middot; {html.escape(__version__)}</span>
<span id="live" class="live"></span>
<label class="token">client token <input id="token" type="password" autocomplete="off" placeholder="(none)"></label>
</header>
<main>{content}</main>
<script src="/static/dashboard.js"></script>
</body></html>""")


def _jobs_page(title: str, server: str, api: str, live: bool, job_base: str, jobs: list[dict] | None,
               peers: bool) -> HTMLResponse:
    rows = ""
    for job in jobs or []:
        f = job["frames"]
        rows += (f'<tr data-job="{job["id"]}"><td>{job["id"]}</td><td><a href="{job_base}{job["id"]}">'
                 f'{html.escape(job["name"] or "job " + str(job["id"]))}</a></td>'
                 f'<td class="state {html.escape(job["state"])}">{html.escape(job["state"])}</td><td></td>'
                 f'<td>{f["done"]}/{job["total_frames"]}</td><td></td><td>{job["priority"]}</td></tr>')
    peers_html = """<h2>Peers</h2><table><thead><tr><th>name</th><th>url</th><th>health</th><th>last error</th>
</tr></thead><tbody id="peers-body"></tbody></table><p id="no-peers" class="muted">No peers.</p>""" if peers else ""
    content = f"""<h1>{html.escape(title)}</h1><p id="message" class="message"></p>
<table><thead><tr><th>id</th><th>name</th><th>state</th><th>progress</th><th>frames</th><th>ETA</th><th>priority</th>
</tr></thead><tbody id="jobs-body">{rows}</tbody></table>
<p id="no-jobs" class="muted"{" hidden" if jobs else ""}>No jobs yet: <code>distren submit PACKAGE</code>.</p>
{peers_html}"""
    return _page(title, server, {"page": "jobs", "api": api, "live": "1" if live else "0", "job-base": job_base},
                 content)


def _job_page(server: str, api: str, live: bool, job: int, controls: bool) -> HTMLResponse:
    buttons = """<div class="controls">
<button id="cancel">Cancel</button><button id="retry">Retry</button>
<button id="pause">Pause</button><button id="resume">Resume</button>
<label>priority <input id="priority" type="number" min="-1000" max="1000" step="1"></label>
<button id="set-priority">Set</button></div>""" if controls else ""
    content = f"""<h1><span id="job-name">job {job}</span> <span id="job-state" class="state"></span></h1>
<div class="summary"><div id="job-progress"></div><span id="job-counts"></span><span id="job-eta" class="muted"></span>
<span id="job-waiting" class="muted"></span></div>
{buttons}<p id="message" class="message"></p>
<div class="layout"><section>
<div class="pager"><button id="prev">&larr; previous</button><span id="page-info" class="muted"></span>
<button id="next">next &rarr;</button><label>go to frame <input id="goto" type="number" min="0"></label></div>
<div id="grid" class="grid"></div></section>
<aside id="details" class="details"><p class="muted">Click a frame for its details and log.</p></aside></div>"""
    return _page(f"job {job}", server, {"page": "job", "api": api, "live": "1" if live else "0", "job": str(job)},
                 content)


def add_dashboard(app: FastAPI, get_core: Callable, get_fed: Callable,
                  may_read: Callable[[Request], bool] = lambda request: True) -> None:
    """The pages (not part of the API's OpenAPI document) and the static files. A request that
    may not read (`may_read`: --protect-reads without the client token) gets the page without
    any data in it, so that the token can be entered; the script then reads through the API."""
    router = APIRouter(include_in_schema=False)

    def check_job(job: int) -> None:
        if not 0 <= job <= MAX_ID:
            raise NotFound(f"no job {job}")

    def peer(name: str) -> str:
        fed = get_fed()
        if fed is None or name not in fed.peers.peers:
            raise NotFound(f"server {name!r} is not a peer of {get_core().name!r}")
        return check_server_name(name)

    @router.get("/", response_class=HTMLResponse)
    async def jobs_page(request: Request) -> HTMLResponse:
        core = get_core()
        jobs = core.scheduler.jobs() if may_read(request) else None
        return _jobs_page(f"Jobs of {core.name}", core.name, "/api/v1", True, "/jobs/", jobs, True)

    @router.get("/jobs/{job}", response_class=HTMLResponse)
    async def job_page(request: Request, job: int) -> HTMLResponse:
        check_job(job)
        core = get_core()
        if may_read(request):
            core.scheduler.job(job)   # 404 for no such job
        return _job_page(core.name, "/api/v1", True, job, True)

    @router.get("/servers/{name}", response_class=HTMLResponse)
    async def peer_jobs_page(request: Request, name: str) -> HTMLResponse:
        name = peer(name) if may_read(request) else check_server_name(name)
        return _jobs_page(f"Jobs of {name} (a peer)", get_core().name, f"/api/v1/servers/{name}", False,
                          f"/servers/{name}/jobs/", None, False)

    @router.get("/servers/{name}/jobs/{job}", response_class=HTMLResponse)
    async def peer_job_page(request: Request, name: str, job: int) -> HTMLResponse:
        check_job(job)
        name = peer(name) if may_read(request) else check_server_name(name)
        return _job_page(get_core().name, f"/api/v1/servers/{name}", False, job, False)

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

"""The distren client: submit packages, query jobs and frames, download outputs and bundles,
control jobs (priority, pause, resume, cancel, retry, delete) and drain a server.

One module serves the CLI, the embedded renderer and the tests. It talks HTTP to one server
(`DISTREN_SERVER`, default http://127.0.0.1:7780, or an https:// URL: its certificate is checked
against the CA file given or `DISTREN_CA_FILE`, tls.py); `distren://` URLs name jobs and frames.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx

from . import tls
from .errors import (
    BadPackage, Conflict, DistrenError, NotFound, ServerError, ServerUnreachable, TooLarge, Unauthorized,
)
from .url import DistrenURL, parse_url

DEFAULT_SERVER = "http://127.0.0.1:7780"
# reads retried while the server is unreachable: the first wait, then twice as long up to the last
RETRY_FIRST, RETRY_MAX = 0.25, 5.0
CHUNK = 1024 * 1024
_BY_STATUS = {401: Unauthorized, 404: NotFound, 409: Conflict, 413: TooLarge}


class ClientError(DistrenError):
    """Raised when the server refuses a request (4xx); carries its status and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


def _file_chunks(path: Path, on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            if on_bytes is not None:
                on_bytes(len(chunk))
            yield chunk


class Client:
    def __init__(
        self,
        server: str | None = None,
        *,
        token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 60.0,
        ca_file: Path | str | None = None,
        retry_seconds: float = 0.0,
        on_unreachable: Callable[[str | None], None] | None = None,
    ):
        """`retry_seconds`: how long reads (GET) keep being tried again while the server cannot
        be reached (a restart), with growing waits; then ServerUnreachable. `on_unreachable` is
        told when an outage starts (the reason) and when the server answers again (None)."""
        self.base = (server or os.environ.get("DISTREN_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = token or os.environ.get("DISTREN_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify = True if transport is not None else tls.client_verify(ca_file)
        self.http = httpx.Client(base_url=self.base, transport=transport, timeout=timeout, headers=headers,
                                 verify=verify)
        self._name: str | None = None
        self.retry_seconds = retry_seconds
        self.on_unreachable = on_unreachable

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        if method == "GET" and self.retry_seconds > 0:
            resp = self._retrying(lambda: self._send(method, path, **kw))
        else:
            resp = self._send(method, path, **kw)
        self._check(resp)
        return resp

    def _send(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            try:
                return self.http.request(method, "/api/v1" + path, **kw)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                if method != "GET":
                    raise
                # a kept-alive connection that the server closed as we reused it: a GET is
                # safe to send again, once, on a new connection
                return self.http.request(method, "/api/v1" + path, **kw)
        except (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError) as exc:
            # a certificate not trusted is not cured by waiting: not tried again
            problem = tls.tls_problem(exc)
            if problem is not None:
                raise ServerError(f"cannot reach the server at {self.base}: {problem}") from None
            raise ServerUnreachable(f"cannot reach the server at {self.base}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the server at {self.base}: {exc}") from None

    def _retrying(self, send: Callable[[], httpx.Response]) -> httpx.Response:
        """send(), tried again while the server is unreachable, for up to retry_seconds."""
        deadline, wait = None, RETRY_FIRST
        while True:
            try:
                resp = send()
            except ServerUnreachable as exc:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_seconds
                    if self.on_unreachable is not None:
                        self.on_unreachable(exc.message)
                if now >= deadline:
                    raise ServerUnreachable(f"{exc.message} (tried for {self.retry_seconds:g} s)") from None
                time.sleep(min(wait, deadline - now))
                wait = min(wait * 2, RETRY_MAX)
                continue
            if deadline is not None and self.on_unreachable is not None:
                self.on_unreachable(None)
            return resp

    @staticmethod
    def _check(resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            body = resp.json()["error"]
            code, message = body["code"], body["message"]
        except Exception:
            code, message = "http_error", f"HTTP {resp.status_code}: {resp.text[:200]}"
        if resp.status_code >= 500:
            raise ServerError(f"server error: {message}")
        raise ClientError(resp.status_code, code, message)

    def _json(self, method: str, path: str, **kw):
        return self._request(method, path, **kw).json()

    @property
    def server_name(self) -> str:
        if self._name is None:
            self._name = self.server_info()["name"]
        return self._name

    def _route(self, url: DistrenURL | str) -> tuple[DistrenURL, str]:
        """The URL and the path prefix that reaches it: this server's own jobs directly, a
        peer's through this server (`/servers/<name>`)."""
        if isinstance(url, str):
            url = parse_url(url)
        prefix = "" if url.server == self.server_name else f"/servers/{url.server}"
        return url, prefix

    def _own(self, url: DistrenURL | str) -> DistrenURL:
        """The URL, checked to name a job of this server (for actions that change things)."""
        u, prefix = self._route(url)
        if prefix:
            raise ClientError(400, "bad_url", f"{u} is on server {u.server!r}; send this to that server")
        if u.kind != "job":
            raise ClientError(400, "bad_url", f"{u} is not a job URL (distren://server/job)")
        return u

    # -- API -------------------------------------------------------------------------------
    def server_info(self) -> dict:
        return self._json("GET", "/server")

    def peers(self) -> list[dict]:
        return self._json("GET", "/peers")

    def submit(self, package: Path, on_bytes: Callable[[int], None] | None = None) -> dict:
        """Upload a package; `on_bytes(n)` is told each chunk sent."""
        package = Path(package)
        if not package.is_file():
            raise BadPackage(f"no such package file: {package}")
        return self._json(
            "POST", "/jobs", content=_file_chunks(package, on_bytes),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(package.stat().st_size)},
        )

    def jobs(self) -> list[dict]:
        return self._json("GET", "/jobs")

    def job(self, url: DistrenURL | str) -> dict:
        u, prefix = self._route(url)
        return self._json("GET", f"{prefix}/jobs/{u.job}")

    def frames(self, url: DistrenURL | str, state: str | None = None, page: int = 1000) -> list[dict]:
        """Every frame of a job (optionally in one state), page by page."""
        return list(self.iter_frames(url, state, page))

    def iter_frames(self, url: DistrenURL | str, state: str | None = None, page: int = 1000) -> Iterator[dict]:
        u, prefix = self._route(url)
        after = -1
        while True:
            params: dict = {"after": after, "limit": page}
            if state:
                params["state"] = state
            batch = self._json("GET", f"{prefix}/jobs/{u.job}/frames", params=params)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1]["frame"]

    def frame(self, url: DistrenURL | str) -> dict:
        u, prefix = self._route(url)
        return self._json("GET", f"{prefix}/jobs/{u.job}/frames/{u.frame}")

    def status(self, url: DistrenURL | str) -> dict | list:
        """What `distren status` shows: server (with its jobs), job or frame."""
        u = parse_url(url) if isinstance(url, str) else url
        if u.kind == "server":
            _, prefix = self._route(u)
            if prefix:
                return {"server": {"url": str(u), "name": u.server}, "jobs": self._json("GET", f"{prefix}/jobs")}
            return {"server": self.server_info(), "jobs": self.jobs()}
        return self.job(u) if u.kind == "job" else self.frame(u)

    def _job_post(self, url: DistrenURL | str, action: str) -> dict:
        return self._json("POST", f"/jobs/{self._own(url).job}/{action}")

    def cancel(self, url: DistrenURL | str) -> dict:
        return self._job_post(url, "cancel")

    def retry(self, url: DistrenURL | str) -> dict:
        return self._job_post(url, "retry")

    def set_priority(self, url: DistrenURL | str, priority: int) -> dict:
        u = self._own(url)
        return self._json("PATCH", f"/jobs/{u.job}", json={"priority": priority})

    def pause(self, url: DistrenURL | str) -> dict:
        return self._job_post(url, "pause")

    def resume(self, url: DistrenURL | str) -> dict:
        return self._job_post(url, "resume")

    def drain(self, on: bool = True) -> dict:
        """Drain the server (on=False: end the drain); answers the server as GET /server."""
        return self._json("POST", "/server/drain" if on else "/server/undrain")

    def delete(self, url: DistrenURL | str) -> dict:
        u = self._own(url)
        return self._json("DELETE", f"/jobs/{u.job}")

    def download(self, url: DistrenURL | str, dest: Path,
                 on_bytes: Callable[[int, int | None], None] | None = None) -> Path:
        """A job URL downloads the bundle, a frame URL the frame's tarball. Streams to a
        temporary file beside dest, then renames it: dest is never half-written.
        `on_bytes(n, total)` is told each chunk received (total: the Content-Length, or None)."""
        u, prefix = self._route(url)
        if u.kind == "server":
            raise ClientError(400, "bad_url", f"{u} names a server; give a job or frame URL")
        path = prefix + (f"/jobs/{u.job}/bundle" if u.kind == "job" else f"/jobs/{u.job}/frames/{u.frame}/output")
        dest = Path(dest)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self.http.stream("GET", "/api/v1" + path) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp)
                length = resp.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
                with open(tmp, "wb") as f:
                    for chunk in resp.iter_bytes(CHUNK):
                        f.write(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk), total)
        except httpx.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise ServerError(f"download from {self.base} failed: {tls.connection_problem(exc)}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)
        return dest

    def wait(
        self, url: DistrenURL | str, *, interval: float = 0.5, on_update: Callable[[dict], None] | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Poll a job until it is done, failed or cancelled; returns its last state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.job(url)
            if on_update:
                on_update(info)
            if info["state"] in ("done", "failed", "cancelled"):
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise ServerError(f"timed out waiting for {info['url']} ({info['state']})")
            time.sleep(interval)

"""The peer table: which servers this one shares work with, how to reach them, how they are.

A peer is a name and a base URL. On first contact the server asks the peer's name
(`GET /api/v1/peer/hello`) and refuses to work with a peer whose answer differs. Every request
is signed (auth.py). Health: last contact, consecutive failures, last error.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

from .. import tls
from ..errors import DistrenError
from ..url import check_server_name
from . import auth

CHUNK = 1024 * 1024

# httpcore reads a response 64 KiB per trip through its (Python) HTTP/1.1 layers by default; a
# 1 GB seed from a peer was 16,000 trips, 2.1 s of the event loop's time on this project's
# machine. Reads of up to 256 KiB (asyncio's own read size) take 1.0 s. READ_NUM_BYTES is a
# class attribute of httpcore's HTTP/1.1 connection, used for nothing but the read size.
try:
    from httpcore._async.http11 import AsyncHTTP11Connection

    AsyncHTTP11Connection.READ_NUM_BYTES = max(AsyncHTTP11Connection.READ_NUM_BYTES, 256 * 1024)
except (ImportError, AttributeError):   # another httpcore: its own read size
    pass
# `hello` is tiny: a peer that does not answer it in this time is taken as unreachable for now
HELLO_TIMEOUT = 3.0


class PeerError(DistrenError):
    """Raised when a peer cannot be reached, answers with an error, or sends bad data."""

    status = 502
    code = "peer_error"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.http_status = status


@dataclass
class Peer:
    name: str
    url: str
    verified: bool = False
    last_contact: float | None = None
    failures: int = 0
    last_error: str | None = None
    # unreachable since (the first failure of the current run of failures), None when up
    down_since: float | None = None
    # the backends it renders, as it last said (claims, hello); None: not known yet
    backends: frozenset[str] | None = None

    @property
    def healthy(self) -> bool:
        """Verified, and its last request succeeded (`GET /peers`, `distren_peers_up`)."""
        return self.verified and self.failures == 0

    def to_json(self) -> dict:
        return {
            "name": self.name, "url": self.url, "verified": self.verified,
            "last_contact": self.last_contact, "failures": self.failures, "last_error": self.last_error,
            "healthy": self.healthy, "down_since": self.down_since,
            "backends": None if self.backends is None else sorted(self.backends),
        }


def parse_peer(text: str) -> tuple[str, str]:
    """`NAME=URL` as given to --peer."""
    name, sep, url = text.partition("=")
    if not sep or not url.startswith(("http://", "https://")):
        raise DistrenError(f"--peer {text!r}: expected NAME=http://HOST:PORT or NAME=https://HOST:PORT")
    return check_server_name(name), url.rstrip("/")


class PeerClient:
    """Signed HTTP requests from this server to its peers."""

    def __init__(self, me: str, secret: bytes, peers: dict[str, str], timeout: float = 10.0,
                 ca_file: Path | None = None):
        self.me = me
        self.secret = secret
        self.peers = {name: Peer(name, url) for name, url in peers.items()}
        # https:// peers: their certificates are checked as the CLI's are (tls.py); the
        # signatures (auth.py) are checked as over plain HTTP
        self.http = httpx.AsyncClient(timeout=timeout, verify=tls.client_verify(ca_file))

    async def close(self) -> None:
        await self.http.aclose()

    def get(self, name: str) -> Peer:
        peer = self.peers.get(name)
        if peer is None:
            raise PeerError(f"server {name!r} is not a peer of {self.me!r}")
        return peer

    def heard_from(self, name: str) -> None:
        """A verified request from a peer counts as contact."""
        peer = self.peers.get(name)
        if peer is not None:
            self._ok(peer)

    def _ok(self, peer: Peer) -> None:
        peer.last_contact = time.time()
        peer.failures = 0
        peer.last_error = None
        peer.down_since = None

    def _failed(self, peer: Peer, error: str) -> None:
        peer.failures += 1
        peer.last_error = error
        if peer.down_since is None:
            peer.down_since = time.time()

    async def ensure_verified(self, peer: Peer, timeout: float | None = None) -> None:
        if peer.verified:
            return
        resp = await self._send(peer, "GET", "/api/v1/peer/hello", receiver=auth.ANY_RECEIVER,
                                timeout=timeout or HELLO_TIMEOUT)
        try:
            info = resp.json()
            name = info.get("name")
            self.learn_backends(peer, info.get("backends"))
        except (ValueError, AttributeError):
            self._failed(peer, "does not answer as a distren server")
            raise PeerError(f"peer at {peer.url} does not answer as a distren server") from None
        if name != peer.name:
            self._failed(peer, f"answers as {name!r}, not {peer.name!r}")
            raise PeerError(f"peer at {peer.url} answers as {name!r}, not {peer.name!r}")
        peer.verified = True

    @staticmethod
    def learn_backends(peer: Peer, backends) -> None:
        """What a peer said it renders (a list of names), if it said it well."""
        if isinstance(backends, list) and all(isinstance(b, str) for b in backends) and len(backends) < 100:
            peer.backends = frozenset(backends)

    async def discover(self, url: str) -> str:
        """The name of the server at `url`, as its signed hello says (a worker given only
        the URL of a home learns its name this way)."""
        resp = await self._send(Peer("unknown", url.rstrip("/")), "GET", "/api/v1/peer/hello",
                                receiver=auth.ANY_RECEIVER, timeout=HELLO_TIMEOUT)
        try:
            return check_server_name(resp.json()["name"])
        except (ValueError, KeyError, TypeError, DistrenError):
            raise PeerError(f"{url} does not answer as a distren server") from None

    async def probe(self, name: str) -> None:
        """Ask a peer who it is and what it renders (health and backends)."""
        peer = self.get(name)
        peer.verified = False
        await self.ensure_verified(peer)

    async def request(
        self, name: str, method: str, path: str, *, json: Any = None, content: bytes | None = None,
        file: Path | None = None, file_sha256: str | None = None, headers: dict | None = None,
        ok: tuple[int, ...] = (200, 201, 204), timeout: float | None = None,
    ) -> httpx.Response:
        peer = self.get(name)
        await self.ensure_verified(peer, timeout)
        return await self._send(peer, method, path, json=json, content=content, file=file,
                                file_sha256=file_sha256, headers=headers, ok=ok, timeout=timeout)

    async def _send(
        self, peer: Peer, method: str, path: str, *, json: Any = None, content: bytes | None = None,
        file: Path | None = None, file_sha256: str | None = None, headers: dict | None = None,
        ok: tuple[int, ...] = (200, 201, 204), receiver: str | None = None, timeout: float | None = None,
    ) -> httpx.Response:
        import json as _json

        body: Any = None
        hdrs = dict(headers or {})
        if json is not None:
            content = _json.dumps(json).encode()
            hdrs["Content-Type"] = "application/json"
        if file is not None:
            body_sha = file_sha256 or _file_sha256(file)
            body = _file_chunks(file)
            hdrs["Content-Length"] = str(file.stat().st_size)
        else:
            body = content
            body_sha = hashlib.sha256(content or b"").hexdigest()
        hdrs.update(auth.sign(self.secret, self.me, receiver or peer.name, method, path, body_sha))
        try:
            extra = {} if timeout is None else {"timeout": timeout}
            resp = await self.http.request(method, peer.url + path, content=body, headers=hdrs, **extra)
        except httpx.HTTPError as exc:
            problem = tls.connection_problem(exc)
            self._failed(peer, f"{type(exc).__name__}: {problem}")
            raise PeerError(f"peer {peer.name} at {peer.url} unreachable: {problem}") from None
        if resp.status_code not in ok:
            message = _error_message(resp)
            if resp.status_code >= 500 or resp.status_code == 401:
                self._failed(peer, message)
            else:
                self._ok(peer)
            raise PeerError(f"peer {peer.name}: {message}", resp.status_code)
        self._ok(peer)
        return resp

    async def stream(self, name: str, path: str, headers: dict | None = None) -> AsyncIterator[httpx.Response]:
        """A signed streaming GET; use as `async with client.stream(...) as resp`."""
        peer = self.get(name)
        await self.ensure_verified(peer)
        hdrs = dict(headers or {})
        hdrs.update(auth.sign(self.secret, self.me, peer.name, "GET", path))
        return self.http.stream("GET", peer.url + path, headers=hdrs)


def _error_message(resp: httpx.Response) -> str:
    try:
        return f"HTTP {resp.status_code}: {resp.json()['error']['message']}"
    except Exception:
        return f"HTTP {resp.status_code}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


async def _file_chunks(path: Path):
    """The file in pieces, each read in a thread (no disk read on the event loop)."""
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()

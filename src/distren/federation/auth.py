"""Signed peer requests.

Every request between servers carries:

    X-Distren-Peer            the sender's server name (a render-only worker: worker:NAME)
    X-Distren-Timestamp       Unix seconds (integer)
    X-Distren-Nonce           32 random hex digits, never used twice
    X-Distren-Content-SHA256  SHA-256 of the body (of the empty string for no body)
    X-Distren-Signature       hex HMAC-SHA256 over the canonical string below, keyed with the
                              federation secret

canonical = METHOD \\n PATH?QUERY \\n PEER \\n RECEIVER \\n TIMESTAMP \\n NONCE \\n CONTENT-SHA256

(RECEIVER: the name of the server the request is for, so that a captured request is no good
against any other server of the farm; `*` only for GET /api/v1/peer/hello, which asks a server
its name and so cannot know it.)

A receiver accepts a request only when the signature matches, the timestamp is within
+-`window` seconds of its clock, the nonce was not seen within the window (replay cache), and
the body's actual hash equals the signed one, and the request was not signed before the receiver
started (its replay cache is in memory: this keeps requests captured before a restart out).
Anything else: 401 and nothing done.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from pathlib import Path
from typing import Callable, Mapping

from ..errors import DistrenError, Unauthorized
from ..url import check_server_name

H_PEER = "X-Distren-Peer"
H_TIME = "X-Distren-Timestamp"
H_NONCE = "X-Distren-Nonce"
H_BODY = "X-Distren-Content-SHA256"
H_SIG = "X-Distren-Signature"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
DEFAULT_WINDOW = 300
ANY_RECEIVER = "*"
MIN_SECRET_BYTES = 16
# A render-only worker (`distren worker`) signs as `worker:NAME`: the role is part of the signed
# sender, so a worker's request cannot pass for a peer's. Its NAME may hold - . _ (slurm-42).
WORKER_PREFIX = "worker:"
_WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_sender(sender: str) -> str:
    """A signed sender: a server name, or `worker:NAME`; else DistrenError."""
    if sender.startswith(WORKER_PREFIX):
        if not _WORKER_NAME.fullmatch(sender[len(WORKER_PREFIX):]):
            raise DistrenError(f"worker name {sender[len(WORKER_PREFIX):]!r} must match [A-Za-z0-9][A-Za-z0-9._-]*"
                               " (1-64 characters)")
        return sender
    return check_server_name(sender)


def is_worker(sender: str) -> bool:
    """Whether a signed sender is a render-only worker (not a server)."""
    return sender.startswith(WORKER_PREFIX)


def load_secret(path: Path) -> bytes:
    """The federation secret: the file's content, stripped; at least 16 bytes."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise DistrenError(f"cannot read the federation secret file {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise DistrenError(f"the federation secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def canonical(method: str, target: str, peer: str, receiver: str, timestamp: str, nonce: str,
              body_sha256: str) -> bytes:
    return "\n".join([method.upper(), target, peer, receiver, timestamp, nonce, body_sha256]).encode()


def sign(
    secret: bytes, peer: str, receiver: str, method: str, target: str, body_sha256: str = EMPTY_SHA256,
    *, timestamp: int | None = None, nonce: str | None = None,
) -> dict[str, str]:
    """Headers that sign a request from `peer` to server `receiver` for `target` (path with
    query string)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    mac = hmac.new(secret, canonical(method, target, peer, receiver, ts, nonce, body_sha256), hashlib.sha256)
    return {H_PEER: peer, H_TIME: ts, H_NONCE: nonce, H_BODY: body_sha256, H_SIG: mac.hexdigest()}


class Verifier:
    """Checks signed requests; keeps the nonces seen within the window."""

    def __init__(self, secret: bytes, me: str, window: float = DEFAULT_WINDOW,
                 clock: Callable[[], float] = time.time):
        self.secret = secret
        self.me = me
        self.window = window
        self.clock = clock
        self.started = int(clock())
        self._seen: dict[str, float] = {}

    def verify(self, method: str, target: str, headers: Mapping[str, str], receiver: str | None = None) -> tuple[str, str]:
        """Check the signature, time and nonce; returns (peer name, signed body hash). The
        caller must still check that the body it reads has that hash (`check_body`)."""
        try:
            peer, ts, nonce = headers[H_PEER], headers[H_TIME], headers[H_NONCE]
            body_sha, sig = headers[H_BODY], headers[H_SIG]
        except KeyError as exc:
            raise Unauthorized(f"unsigned peer request: header {exc.args[0]} missing") from None
        try:
            check_sender(peer)
        except DistrenError:
            raise Unauthorized("bad peer name in signature") from None
        if not ts.isdigit() or len(nonce) != 32 or len(body_sha) != 64:
            raise Unauthorized("malformed signature headers")
        expected = hmac.new(self.secret, canonical(method, target, peer, receiver or self.me, ts, nonce, body_sha),
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig):
            raise Unauthorized("bad signature")
        now = self.clock()
        if abs(now - int(ts)) > self.window:
            raise Unauthorized(f"stale request: timestamp is {int(now - int(ts))} s off (window {self.window:g} s)")
        if int(ts) < self.started:
            raise Unauthorized("request signed before this server started (replay?)")
        self._prune(now)
        if nonce in self._seen:
            raise Unauthorized("replayed request (nonce seen before)")
        self._seen[nonce] = now + self.window
        return peer, body_sha

    def _prune(self, now: float) -> None:
        if len(self._seen) > 1000:
            self._seen = {n: exp for n, exp in self._seen.items() if exp > now - self.window}


def check_body(signed_sha256: str, actual_sha256: str) -> None:
    if not hmac.compare_digest(signed_sha256, actual_sha256):
        raise Unauthorized("body does not match its signed hash (tampered?)")


# The dashboard keeps the client token in this cookie too (set by its script, SameSite=Strict):
# browsers send no Authorization header with page loads, images and event streams. Only reads
# (--protect-reads) accept it; changes need the header, which another site cannot make a browser send.
TOKEN_COOKIE = "distren_token"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def token_matches(expected: str, presented: str | None) -> bool:
    """Whether `presented` is the client token (compared in constant time)."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def check_client_token(expected: str | None, authorization: str | None) -> None:
    """Routes that change things need `Authorization: Bearer <token>` when a token is set."""
    if expected is not None and not token_matches(expected, bearer_token(authorization)):
        raise Unauthorized("this server needs a client token: Authorization: Bearer <token>")

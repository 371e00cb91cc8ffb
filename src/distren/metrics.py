"""Prometheus metrics of a server, served at `GET /metrics` (text format; docs/api.md lists
each). prometheus-client does the bookkeeping and the format; each server (also each embedded
one) has a registry of its own.

Counted as things happen: renders and their seconds (the runner), lease expiries (the expiry
loop), bytes in and out (an ASGI middleware on every request and response body, plus the
federation client's blob downloads and result uploads), intake refusals (the middleware reads
the error code of a refused `POST /api/v1/jobs`). Read at scrape time: frames by state (the
jobs' counters, one SQL sum), slots, peers.
"""

from __future__ import annotations

import json
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

FRAME_STATES = ("waiting", "ready", "running", "done", "failed", "cancelled")
RENDER_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SUBMIT_PATH = "/api/v1/jobs"
MAX_ERROR_BODY = 64 * 1024


class Metrics:
    """A server's metrics. `snapshot` is called at each scrape and returns
    {"frames": {state: n}, "slots": n, "slots_busy": n, "peers": n, "peers_up": n}."""

    def __init__(self, snapshot: Callable[[], dict] | None = None):
        self.registry = CollectorRegistry()
        r = self.registry
        self.renders = Counter("distren_renders", "Frames rendered by this server's slots, by backend and outcome "
                               "(done, failed, interrupted)", ["backend", "outcome"], registry=r)
        self.render_seconds = Histogram("distren_render_seconds", "Wall seconds of one frame's render on this "
                                        "server (a chunk's time divided by its frames), by backend", ["backend"],
                                        buckets=RENDER_BUCKETS, registry=r)
        self.lease_expiries = Counter("distren_lease_expiries", "Leases granted by this server that expired "
                                      "(the frame was ready again)", registry=r)
        self.received = Counter("distren_received_bytes", "Bytes received: request bodies, and blobs downloaded "
                                "from peers", registry=r)
        self.sent = Counter("distren_sent_bytes", "Bytes sent: response bodies, and results uploaded to peers",
                            registry=r)
        self.bundles = Counter("distren_bundles_built", "Bundles made (a job's bundle is made again only once more "
                               "of its frames are done)", registry=r)
        self.refusals = Counter("distren_intake_refusals", "Packages refused at POST /api/v1/jobs, by error code",
                                ["code"], registry=r)
        self.chunk_splits = Counter("distren_chunk_splits", "Chunks rendering here whose unstarted tail was given "
                                    "back for another renderer that had nothing to do (docs/architecture.md, "
                                    "\"Splitting a chunk\")", registry=r)
        self.dependencies = Counter("distren_dependencies_prepared", "Dependencies' outputs put into renders' work "
                                    "folders, by how: kept (moved from the outputs kept unpacked) or unpacked "
                                    "(from the output tarball)", ["how"], registry=r)
        self.snapshot = snapshot
        r.register(_Collector(self))

    def render(self, backend: str, outcome: str, seconds: float | None = None) -> None:
        self.renders.labels(backend, outcome).inc()
        if seconds is not None:
            self.render_seconds.labels(backend).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    """The gauges read at scrape time."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []

    def collect(self):
        if self.metrics.snapshot is None:
            return
        now = self.metrics.snapshot()
        frames = GaugeMetricFamily("distren_frames", "Frames of this server's jobs, by state", labels=["state"])
        for state in FRAME_STATES:
            frames.add_metric([state], now["frames"].get(state, 0))
        yield frames
        yield GaugeMetricFamily("distren_slots", "Renders this server may run at once now", value=now["slots"])
        yield GaugeMetricFamily("distren_slots_busy", "Renders running on this server", value=now["slots_busy"])
        yield GaugeMetricFamily("distren_peers", "Peers in this server's peer table", value=now["peers"])
        yield GaugeMetricFamily("distren_peers_up", "Peers that answer and are verified", value=now["peers_up"])


class ByteCounter:
    """ASGI middleware: counts request and response body bytes, and the error code of each
    refused package (POST /api/v1/jobs answered 4xx/5xx)."""

    def __init__(self, app, metrics: Callable[[], Metrics | None]):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        metrics = self.metrics()
        if scope["type"] != "http" or metrics is None:
            return await self.app(scope, receive, send)
        submit = scope["method"] == "POST" and scope["path"] == SUBMIT_PATH
        refused: list[bytes] | None = None

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                metrics.received.inc(len(message.get("body", b"")))
            return message

        async def counted_send(message):
            nonlocal refused
            if message["type"] == "http.response.start" and submit and message["status"] >= 400:
                refused = []
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                metrics.sent.inc(len(body))
                if refused is not None:
                    if sum(map(len, refused)) < MAX_ERROR_BODY:
                        refused.append(body)
                    if not message.get("more_body"):
                        metrics.refusals.labels(_error_code(b"".join(refused))).inc()
                        refused = None
            await send(message)

        await self.app(scope, counted_receive, counted_send)


def _error_code(body: bytes) -> str:
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "unknown"
    return code if isinstance(code, str) and code.isidentifier() and len(code) <= 40 else "unknown"

"""Server-sent events (GET /api/v1/events) on real servers: frame and job events as a job
renders, resuming with Last-Event-ID, bulk changes, deletion, a server that stops with streams
open; the bus's own bookkeeping in process."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import httpx
import pytest

from conftest import ROOT, make_scene, run_cli
from distren import events as events_mod
from distren.events import EVENT_TYPES, EventBus


class Listener:
    """Reads an event stream in a thread; `events` is every (id, type, data) so far."""

    def __init__(self, url: str, params: dict | None = None, headers: dict | None = None):
        self.events: list[tuple[int, str, dict]] = []
        self.status = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, params, headers), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while self.status is None and time.monotonic() < deadline:
            time.sleep(0.02)

    def _run(self, url, params, headers):
        try:
            with httpx.stream("GET", url + "/api/v1/events", params=params, headers=headers, timeout=60) as r:
                self.status = r.status_code
                current: dict = {}
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("id: "):
                        current["id"] = int(line[4:])
                    elif line.startswith("event: "):
                        current["type"] = line[7:]
                    elif line.startswith("data: "):
                        current["data"] = json.loads(line[6:])
                    elif line == "" and "type" in current:
                        self.events.append((current.get("id", 0), current["type"], current.get("data")))
                        current = {}
        except httpx.HTTPError:
            pass

    def wait_for(self, what: str, ok, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok(self.events):
                return
            time.sleep(0.05)
        pytest.fail(f"no {what} after {timeout} s: {self.events[-5:]}")

    def stop(self):
        self._stop.set()


def package(tmp_path, final=3):
    pkg = tmp_path / f"p{final}.tar.gz"
    assert run_cli("pack", str(make_scene(tmp_path / f"scene{final}", final=final)), "-o", str(pkg)).returncode == 0
    return pkg


def test_frame_and_job_events_follow_a_render_and_resume_after_an_id(server, tmp_path):
    client = server.client()
    everything = Listener(server.url, {"job": 1})
    jobs_only = Listener(server.url)
    assert everything.status == jobs_only.status == 200
    job = client.submit(package(tmp_path))
    assert job["url"].endswith("/1")
    client.wait(job["url"], interval=0.2, timeout=120)
    everything.wait_for("the job done", lambda ev: any(t == "job" and d["state"] == "done" for _, t, d in ev))
    ids = [i for i, _, _ in everything.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    frames = {}
    for _, kind, data in everything.events:
        if kind == "frame":
            frames.setdefault(data["frame"], []).append(data["state"])
    assert frames == {f: ["running", "done"] for f in range(4)}
    done = [d for _, t, d in everything.events if t == "frame" and d["state"] == "done"]
    assert all(d["rendered_by"] == "alpha" and d["attempts"] == 1 for d in done)
    jobs_only.wait_for("the job done", lambda ev: any(t == "job" and d["state"] == "done" for _, t, d in ev))
    assert {t for _, t, _ in jobs_only.events} == {"job"}         # no frame events without ?job=
    # resuming: everything after a given id, in order
    middle = ids[len(ids) // 2]
    again = Listener(server.url, {"job": 1}, {"Last-Event-ID": str(middle)})
    again.wait_for("the replay", lambda ev: ev and ev[-1][0] >= ids[-1], timeout=20)
    assert [i for i, _, _ in again.events] == [i for i in ids if i > middle]
    # an id from an earlier run of the server (higher than any now): reset first
    later = Listener(server.url, headers={"Last-Event-ID": str(ids[-1] + 1000)})
    later.wait_for("a reset", lambda ev: ev and ev[0][1] == "reset", timeout=20)
    bad = httpx.get(server.url + "/api/v1/events", headers={"Last-Event-ID": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    for listener in (everything, jobs_only, again, later):
        listener.stop()


def test_bulk_changes_and_deletion_are_told_as_job_events(server_factory, tmp_path):
    server = server_factory(slots=0)                       # nothing renders: the frames stay ready
    client = server.client()
    listener = Listener(server.url)
    job = client.submit(package(tmp_path, final=5))
    jid = job["id"]
    listener.wait_for("the new job", lambda ev: any(t == "job" and d["id"] == jid for _, t, d in ev), timeout=20)
    client.cancel(job["url"])
    listener.wait_for("the cancel", lambda ev: any(t == "job" and d["state"] == "cancelled" for _, t, d in ev),
                      timeout=20)
    cancelled = [d for _, t, d in listener.events if t == "job" and d["state"] == "cancelled"][0]
    assert cancelled["bulk"] is True and cancelled["frames"]["cancelled"] == 6
    client.delete(job["url"])
    listener.wait_for("the removal", lambda ev: any(t == "job_removed" and d["id"] == jid for _, t, d in ev),
                      timeout=20)
    listener.stop()


def test_a_server_with_open_streams_stops_at_once(server_factory, tmp_path):
    server = server_factory(slots=0)
    listeners = [Listener(server.url), Listener(server.url, {"job": 1})]
    assert all(one.status == 200 for one in listeners)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)     # uvicorn would wait for the streams for ever
    # (uvicorn ends a graceful stop by raising the signal again: -15)
    assert time.monotonic() - started < 30 and server.proc.returncode in (0, -signal.SIGTERM)


def test_the_bus_tells_a_reset_when_a_client_asks_for_events_no_longer_kept(monkeypatch):
    monkeypatch.setattr(events_mod, "KEEP", 5)

    async def run():
        bus = EventBus(lambda: {}, lambda job: {})
        bus.start()
        for frame in range(12):
            bus.frame(1, frame, "running", 1)
        stream = bus.stream(2, None)
        assert await stream.__anext__() == "retry: 2000\n\n"
        first = await stream.__anext__()
        assert "event: reset" in first and '"last_id": 12' in first
        events, lost = bus.since(8, 1)
        assert [i for i, _, _ in events] == [9, 10, 11, 12] and not lost
        assert bus.since(1, 1)[1]
        await bus.stop()
        assert [chunk async for chunk in stream] == []          # a closed bus ends its streams

    asyncio.run(run())


def test_every_event_type_is_documented():
    api = (ROOT / "docs" / "api.md").read_text()
    missing = [t for t in EVENT_TYPES if f"`{t}`" not in api]
    assert not missing, f"event types missing from docs/api.md: {missing}"

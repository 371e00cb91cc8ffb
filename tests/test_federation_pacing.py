"""Pacing between real servers: an idle peer told to wait long (Retry-After) still starts new
work at once, because the home server announces it."""

from __future__ import annotations

import time

import httpx

from test_federation import pack


def test_an_idle_peer_told_to_wait_is_told_when_work_comes(farm, tmp_path):
    # A answers 0.02 empty claims a second: its one peer is told to wait 50 s
    a = farm.add("A", 0, ["B"], extra=["--idle-claims-per-second", "0.02"])
    farm.add("B", 1, ["A"], extra=["--claim-backoff-max", "60"])
    farm.start()
    # B asks A, hears "no work, ask again in 50 s"
    deadline = time.monotonic() + 30
    while True:
        peers = httpx.get(a.url + "/api/v1/peers").json()
        if peers[0]["backends"] is not None:  # B's claim reached A
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(1.5)
    client = a.client()
    t0 = time.monotonic()
    job = client.submit(pack(tmp_path, final=1))
    info = client.wait(job["url"], interval=0.2, timeout=45)
    took = time.monotonic() - t0
    assert info["state"] == "done", info
    # without the announcement B would come back only after ~50 s
    assert took < 40, took
    assert {f["rendered_by"] for f in client.frames(job["url"])} == {"B"}


def test_an_announcements_spread_must_be_a_number_of_seconds(farm):
    import json

    from test_federation import signed

    a = farm.add("A", 0, ["B"])
    farm.start()
    secret = farm.secret.read_bytes().strip()
    path = "/api/v1/peer/work"
    for within, status in ((0.05, 200), (None, 200), ("soon", 400), (-1, 400), (1e9, 400), (True, 400)):
        body = json.dumps({} if within is None else {"within": within}).encode()
        r = httpx.post(a.url + path, content=body, headers=signed(secret, "POST", path, body))
        assert r.status_code == status, (within, r.text)
        if status == 400:
            assert "within" in r.json()["error"]["message"]

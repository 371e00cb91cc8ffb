"""--protect-reads: with a client token, reads need it too (the Authorization header, or the
dashboard's cookie), except for peers, which read through their signatures. Off by default:
reads stay open (docs/security.md says why)."""

from __future__ import annotations

import httpx

from conftest import run_cli
from distren.client import Client
from test_federation import pack

TOKEN = "a token for reads"


def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


READS = ["/api/v1/server", "/api/v1/peers", "/api/v1/jobs", "/api/v1/jobs/1", "/api/v1/jobs/1/frames",
         "/api/v1/jobs/1/frames/0", "/api/v1/jobs/1/frames/0/output", "/api/v1/jobs/1/frames/0/preview",
         "/api/v1/jobs/1/bundle", "/api/v1/events", "/metrics"]


def status(url: str, **kw) -> int:
    """The status of a GET (an event stream is not read to its end)."""
    with httpx.stream("GET", url, timeout=30, **kw) as r:
        if r.status_code >= 400:
            r.read()
            assert r.json()["error"]["code"] == "unauthorized", r.text
        return r.status_code


def test_reads_need_the_token(server_factory, tmp_path):
    s = server_factory("alpha", slots=1, extra=["--client-token-file", str(token_file(tmp_path)), "--protect-reads"])
    with Client(s.url, token=TOKEN) as client:
        job = client.submit(pack(tmp_path, final=0))
        assert client.wait(job["url"], interval=0.2, timeout=60)["state"] == "done"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    cookie = {"distren_token": "a%20token%20for%20reads"}   # as the dashboard's script writes it
    for path in READS:
        assert status(s.url + path) == 401, path
        assert status(s.url + path, headers={"Authorization": "Bearer wrong"}) == 401, path
        assert status(s.url + path, headers=bearer) in (200, 206), path
        assert status(s.url + path, cookies=cookie) == 200, path
    # the cookie is for reads: a change still needs the header
    r = httpx.post(s.url + "/api/v1/jobs/1/retry", cookies=cookie)
    assert r.status_code == 401
    # the dashboard's page: without the token, the page (to enter it) but no job in it
    assert "scene" not in httpx.get(s.url + "/").text.split("<main>")[1]
    assert "scene" in httpx.get(s.url + "/", cookies=cookie).text.split("<main>")[1]
    # the CLI sends $DISTREN_TOKEN with every request
    r = run_cli("status", job["url"], "--server", s.url)
    assert r.returncode == 3 and "client token for reads" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("status", job["url"], "--server", s.url, env={"DISTREN_TOKEN": TOKEN})
    assert r.returncode == 0 and "done" in r.stdout, r.stderr


def test_reads_stay_open_by_default(server_factory, tmp_path):
    s = server_factory("alpha", slots=0, extra=["--client-token-file", str(token_file(tmp_path))])
    for path in ("/api/v1/server", "/api/v1/jobs", "/metrics", "/"):
        assert httpx.get(s.url + path).status_code == 200, path


def test_protect_reads_needs_a_token(tmp_path):
    r = run_cli("serve", "--name", "alpha", "--data", str(tmp_path / "d"), "--protect-reads", timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--protect-reads" in r.stderr and "needs a client token (--client-token-file)" in r.stderr, r.stderr


def test_a_peer_reads_with_its_signature(farm, tmp_path):
    """A forwards a client's query to B (/servers/B/...), signed as a peer: B, which protects
    its reads, answers it; an anonymous client asking B itself gets 401."""
    a = farm.add("A", 0, ["B"])
    b = farm.add("B", 0, ["A"], extra=["--client-token-file", str(token_file(tmp_path)), "--protect-reads"])
    farm.start()
    with Client(b.url, token=TOKEN) as client:
        job = client.submit(pack(tmp_path, final=1))
    assert httpx.get(b.url + "/api/v1/jobs/1").status_code == 401
    assert a.client().job(job["url"])["state"] in ("queued", "waiting", "running")
    r = httpx.get(a.url + "/api/v1/servers/B/jobs/1/frames")
    assert r.status_code == 200 and [f["frame"] for f in r.json()] == [0, 1]

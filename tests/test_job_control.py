"""Job control (priority, pause, resume) and draining a server: the scheduler's rules on a real
SQLite file, then real `distren serve` processes driven over HTTP and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from distren.errors import BadRequest, NotFound
from distren.liveness import FarmView, Liveness, RendererView
from distren.scheduler import PAUSED, Lease

from conftest import ServerProcess, make_scene, renders_of, run_cli
from test_liveness import poll, spin, start, summary, wait_state
from test_scheduler import OUT, add_job, sched  # noqa: F401  (the fixture)


# -- the scheduler -------------------------------------------------------------------------

def test_a_paused_job_leases_nothing_its_running_frame_finishes_and_resume_goes_on(sched):  # noqa: F811
    woken = []
    sched.on_ready = lambda: woken.append(1)
    paused = add_job(sched, {0: [], 1: [], 2: []}, priority=5)
    other = add_job(sched, {0: []})
    first = sched.claim("local:me", ["povray"], 60)
    assert (first.job, first.frame) == (paused, 0)
    sched.pause(paused)
    info = sched.job(paused)
    assert info["paused"] and info["state"] == "paused"
    assert info["waiting_for"].startswith(PAUSED) and "1 running" in info["waiting_for"]
    # neither a local slot nor a peer gets its frames, nor a chunk after the running one
    assert sched.claim_more(first, 5) == []
    assert sched.claim("beta", ["povray"], 60) is not None   # the other job's frame
    assert sched.claim("local:me", ["povray"], 60) is None
    assert sched.ready_backends() == set()
    assert sched.frame(paused, 1)["waiting_for"] == [PAUSED]
    # the frame that was running at the pause finishes and is recorded
    sched.complete(paused, 0, first.attempt, OUT, "me", "")
    assert sched.job(paused)["frames"]["done"] == 1 and sched.job(paused)["state"] == "paused"
    sched.resume(paused)
    assert woken and not sched.job(paused)["paused"] and sched.job(paused)["state"] == "running"
    assert sched.ready_backends() == {"povray"}
    assert sched.claim("local:me", ["povray"], 60).job == paused
    assert sched.job(paused)["frames"]["running"] == 1 and sched.job(other)["frames"]["running"] == 1


def test_a_frame_of_another_job_waits_for_a_paused_jobs_frame_and_says_so(sched):  # noqa: F811
    from distren.url import DistrenURL

    first = add_job(sched, {0: []})
    sched.pause(first)
    second = add_job(sched, {0: [DistrenURL("me", first, 0)]})
    assert sched.frame(second, 0)["waiting_for"] == [f"dependency distren://me/{first}/0 (ready; its job is paused)"]
    assert sched.claim("local:me", ["povray"], 60) is None
    sched.resume(first)
    lease = sched.claim("local:me", ["povray"], 60)
    sched.complete(lease.job, lease.frame, lease.attempt, OUT, "me", "")
    assert sched.frame(second, 0)["state"] == "ready"


def test_priority_changes_the_next_claim_and_bad_values_are_refused(sched):  # noqa: F811
    low = add_job(sched, {0: [], 1: []})
    high = add_job(sched, {0: [], 1: []})
    assert sched.claim("local:me", ["povray"], 60).job == low
    sched.set_priority(high, 1000)
    assert sched.job(high)["priority"] == 1000
    assert [sched.claim("local:me", ["povray"], 60).job for _ in range(2)] == [high, high]
    sched.set_priority(high, -1000)
    for bad in (1001, -1001, True, 1.5, "3", None):
        with pytest.raises(BadRequest, match="priority must be a whole number from -1000 to 1000"):
            sched.set_priority(low, bad)
    for action in (lambda: sched.set_priority(99, 1), lambda: sched.pause(99), lambda: sched.resume(99)):
        with pytest.raises(NotFound):
            action()


def test_liveness_does_not_fail_a_paused_jobs_frames_and_does_after_resume(sched):  # noqa: F811
    job = add_job(sched, {0: [], 1: []})
    sched.conn.execute("INSERT INTO blocklist(job_id, renderer, since) VALUES (?, 'beta', 0)", (job,))
    farm = FarmView((RendererView("beta", frozenset({"povray"})),), frozenset({"beta"}), 1000.0)
    live = Liveness(sched)
    sched.pause(job)
    assert live.check(farm) == 0
    assert sched.job(job)["frames"]["ready"] == 2 and sched.job(job)["waiting_for"].startswith(PAUSED)
    sched.resume(job)
    assert live.check(farm) == 1
    assert sched.job(job)["state"] == "failed"


def test_cancel_retry_and_delete_of_a_paused_job(sched):  # noqa: F811
    job = add_job(sched, {0: [], 1: []})
    lease = sched.claim("local:me", ["povray"], 60)
    sched.pause(job)
    assert sched.cancel(job) == [(job, 0, lease.attempt)]
    assert sched.job(job)["state"] == "cancelled" and sched.job(job)["paused"]
    assert sched.retry(job) == 2
    # requeued, still paused: a person resumes it
    assert sched.job(job)["state"] == "paused" and sched.claim("local:me", ["povray"], 60) is None
    sched.resume(job)
    assert isinstance(sched.claim("local:me", ["povray"], 60), Lease)
    sched.pause(job)
    sched.delete(job)
    with pytest.raises(NotFound):
        sched.job(job)


# -- real servers ----------------------------------------------------------------------------

def package(tmp: Path, name: str, final: int, spin_n: int = 0) -> Path:
    """The test scene as a package of frames 0..final, one frame per renderer run (so that what
    starts next is decided frame by frame), each parsing a while when `spin_n`."""
    scene = tmp / name
    ini = make_scene(scene, final=final)
    if spin_n:
        (scene / "scene.pov").write_text((scene / "scene.pov").read_text() + spin(spin_n))
    pkg = tmp / f"{name}.tar.gz"
    r = run_cli("pack", str(ini), "-o", str(pkg), "--chunk", "1")
    assert r.returncode == 0, r.stderr
    return pkg


def frames_of(client, url: str) -> dict[int, dict]:
    return {f["frame"]: f for f in client.frames(url)}


def last_outcome(client, url: str) -> str | None:
    history = client.frame(url)["history"]
    return history[-1]["outcome"] if history else None


def test_priority_reorders_what_renders_next(server_factory, tmp_path):
    """One slot, two jobs: the later job renders after the earlier one, unless its priority is
    raised; then its frames start before the earlier job's frames still ready."""
    s = server_factory(slots=1)
    client = s.client()
    first = client.submit(package(tmp_path, "first", 4, 400_000))
    second = client.submit(package(tmp_path, "second", 1, 400_000))
    poll("the first job renders", lambda: client.job(first["url"])["frames"]["running"], lambda n: n == 1)
    assert client.set_priority(second["url"], 10)["priority"] == 10
    for job in (first, second):
        assert wait_state(client, job["url"], timeout=90)["state"] == "done", summary(client, job["url"])
    order = sorted((f["started"], name, f["frame"]) for name, job in (("first", first), ("second", second))
                   for f in client.frames(job["url"]))
    names = [name for _, name, _ in order]
    at = names.index("second")
    # once the second job's first frame started, its other frame came next; the first job's
    # frames still ready waited for them
    assert names[at:at + 2] == ["second", "second"] and "first" in names[at + 2:], order


def test_pause_starts_nothing_new_lets_the_running_frame_finish_and_resume_finishes(server_factory, tmp_path):
    s = server_factory(slots=1)
    client = s.client()
    job = client.submit(package(tmp_path, "paused", 3, 600_000))
    url = job["url"]
    poll("frame 0 renders", lambda: client.job(url)["frames"]["running"], lambda n: n == 1)
    info = client.pause(url)
    assert info["paused"] and info["state"] == "paused", info
    other = client.submit(package(tmp_path, "other", 1))
    assert wait_state(client, other["url"], timeout=60)["state"] == "done"
    # the frame that was running finished and was recorded; nothing else of the job started
    info = poll("the running frame finishes", lambda: client.job(url), lambda j: j["frames"]["running"] == 0)
    assert info["state"] == "paused" and info["frames"]["done"] == 1 and info["frames"]["ready"] == 3, info
    assert info["waiting_for"].startswith("the job is paused"), info
    frames = frames_of(client, url)
    assert [frames[f]["attempts"] for f in (1, 2, 3)] == [0, 0, 0], frames
    assert client.frame(f"{url}/2")["waiting_for"] == ["the job is paused: resume it to render its frames"]
    # the pause outlives a restart
    s.stop()
    s.start()
    time.sleep(1.5)
    info = client.job(url)
    assert info["state"] == "paused" and info["frames"]["ready"] == 3, info
    r = run_cli("resume", url, "--server", s.url, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["paused"] is False, r.stderr
    assert wait_state(client, url, timeout=90)["state"] == "done", summary(client, url)


def test_a_paused_jobs_frames_are_not_claimed_by_a_peer(farm, tmp_path):
    """A renders nothing; its peer B renders what it claims from A: the other job, not the
    paused one, until it is resumed."""
    a = farm.add("A", 0, ["B"])
    b = farm.add("B", 1, ["A"])
    start(farm, "A")
    client = a.client()
    paused = client.submit(package(tmp_path, "paused", 2))
    assert client.pause(paused["url"])["state"] == "paused"
    other = client.submit(package(tmp_path, "other", 1))
    start(farm, "B")
    assert wait_state(client, other["url"], timeout=60)["state"] == "done"
    assert {f["rendered_by"] for f in client.frames(other["url"])} == {"B"}
    time.sleep(1)   # B asks again (its back-off is at most 0.3 s)
    info = client.job(paused["url"])
    assert info["frames"]["ready"] == 3 and info["waiting_for"].startswith("the job is paused"), info
    assert all(f["attempts"] == 0 for f in client.frames(paused["url"]))
    client.resume(paused["url"])
    assert wait_state(client, paused["url"], timeout=60)["state"] == "done"
    assert {f["rendered_by"] for f in client.frames(paused["url"])} == {"B"}
    assert b.client().server_info()["draining"] is False


def test_drain_hands_a_peers_lease_back_starts_nothing_new_and_undrain_resumes(farm, tmp_path):
    a = farm.add("A", 0, ["B"])
    b = farm.add("B", 1, ["A"])
    start(farm)
    ca, cb = a.client(), b.client()
    job = ca.submit(package(tmp_path, "theirs", 3, 1_500_000))
    url = job["url"]
    held = poll("B renders a frame of A", lambda: [f for f in ca.frames(url) if f["state"] == "running"],
                lambda v: len(v) == 1, timeout=30)[0]
    r = run_cli("drain", "--server", b.url, "--json")
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert answer["draining"] is True and answer["handed_back"] == 1, answer
    # handed back at once, as on a graceful stop: not a failure of the frame
    poll("the frame is back at A", lambda: ca.frame(held["url"]),
         lambda f: f["state"] == "ready" and f["history"][-1]["outcome"] == "interrupted", timeout=5)
    assert ca.frame(held["url"])["failures"] == 0
    poll("B's render is stopped", lambda: renders_of(b.data), lambda pids: not pids, timeout=5)
    time.sleep(1.5)
    assert ca.job(url)["frames"]["running"] == 0 and cb.server_info()["draining"] is True
    # a drained server stays drained across a restart
    b.stop()
    b.start()
    time.sleep(1.5)
    assert cb.server_info()["draining"] is True and ca.job(url)["frames"]["running"] == 0
    r = run_cli("drain", "--off", "--server", b.url)
    assert r.returncode == 0 and "not draining" in r.stdout, r.stderr
    assert wait_state(ca, url, timeout=90)["state"] == "done", summary(ca, url)

    # B's own job: the frame running at the drain finishes; the next does not start
    own = cb.submit(package(tmp_path, "own", 1, 1_500_000))["url"]
    poll("B renders its own frame", lambda: cb.job(own)["frames"]["running"], lambda n: n == 1, timeout=30)
    assert cb.drain()["handed_back"] == 0
    info = poll("its running frame finishes", lambda: cb.job(own), lambda j: j["frames"]["running"] == 0, timeout=30)
    assert info["frames"]["done"] == 1 and info["frames"]["ready"] == 1, info
    assert "draining" in info["waiting_for"], info
    time.sleep(1)
    assert cb.job(own)["frames"]["ready"] == 1
    cb.drain(False)
    assert wait_state(cb, own, timeout=60)["state"] == "done"


def test_job_control_needs_the_token_and_refuses_bad_input(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    s = ServerProcess(tmp_path / "data", "alpha", 0, ["--client-token-file", str(token)]).start()
    auth = {"Authorization": "Bearer s3cret-token"}
    env = {"DISTREN_TOKEN": "s3cret-token"}
    try:
        r = run_cli("submit", str(package(tmp_path, "job", 1)), "--server", s.url, env=env)
        assert r.returncode == 0, r.stderr
        url, api = r.stdout.strip(), f"{s.url}/api/v1"
        changes = [("PATCH", "/jobs/1", {"priority": 3}), ("POST", "/jobs/1/pause", None),
                   ("POST", "/jobs/1/resume", None), ("POST", "/server/drain", None),
                   ("POST", "/server/undrain", None)]
        for method, path, body in changes:
            r = httpx.request(method, api + path, json=body)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", (path, r.text)
            r = httpx.request(method, api + path, json=body, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, path
            assert httpx.request(method, api + path, json=body, headers=auth).status_code == 200, path
        assert httpx.get(f"{api}/jobs/1").json()["priority"] == 3   # queries stay open
        assert httpx.get(f"{api}/server").json()["draining"] is False
        bad = [({"priority": 1001}, "priority must be a whole number from -1000 to 1000, not 1001"),
               ({"priority": -1001}, "not -1001"), ({"priority": True}, "not true"),
               ({"priority": 1.5}, "not 1.5"), ({"priority": "5"}, 'not "5"'), ({"priority": None}, "not null"),
               ({}, 'PATCH takes {"priority": -1000..1000}'), ({"priority": 1, "name": "x"}, "'name' cannot be changed"),
               ([1], "must be a JSON object")]
        for body, message in bad:
            r = httpx.patch(f"{api}/jobs/1", json=body, headers=auth)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["code"] == "bad_request" and message in r.json()["error"]["message"], (body, r.text)
        r = httpx.patch(f"{api}/jobs/1", content=b"{oops", headers=auth)
        assert r.status_code == 400 and "must be JSON" in r.json()["error"]["message"]
        r = httpx.patch(f"{api}/jobs/1", content=b"[" * 50_000, headers=auth)
        assert r.status_code == 400, r.text
        for method, path in (("PATCH", "/jobs/9"), ("POST", "/jobs/9/pause"), ("POST", "/jobs/9/resume")):
            r = httpx.request(method, api + path, json={"priority": 1}, headers=auth)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
        assert httpx.post(f"{api}/jobs/x/pause", headers=auth).status_code == 400
        # the CLI: the token from $DISTREN_TOKEN, one-line errors, exit codes, --json
        r = run_cli("pause", url, "--server", s.url)
        assert r.returncode == 3 and "token" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        r = run_cli("priority", url, "-7", "--server", s.url, "--json", env=env)
        assert r.returncode == 0 and json.loads(r.stdout)["priority"] == -7, r.stderr
        r = run_cli("priority", url, "1001", "--server", s.url, env=env)
        assert r.returncode == 2 and "-1000 to 1000" in r.stderr, r.stderr
        r = run_cli("pause", url.replace("/1", "/9"), "--server", s.url, env=env)
        assert r.returncode == 3 and r.stderr.strip() == "distren: refused (404): no job distren://alpha/9", r.stderr
        r = run_cli("pause", url, "--server", s.url, env=env)
        assert r.returncode == 0 and "paused" in r.stdout, r.stderr
        r = run_cli("drain", "--server", s.url, env=env)
        assert r.returncode == 0 and "draining" in r.stdout, r.stderr
        r = run_cli("drain", "--off", "--server", s.url, "--json", env=env)
        assert r.returncode == 0 and json.loads(r.stdout)["draining"] is False, r.stderr
    finally:
        s.stop()

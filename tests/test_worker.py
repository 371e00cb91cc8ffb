"""Render-only workers (`distren worker`): the worker role at a home server (what it may and
may not do, fencing as for peers) and a real worker process rendering a job and exiting idle."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import httpx

from conftest import DISTREN, ServerProcess, make_scene, pixels, povray_direct, run_cli
from distren.federation import auth
from distren.federation.peers import PeerClient
from distren.federation.service import Federation, FederationSettings

SECRET = "a federation secret of enough length"


def signed_call(s: ServerProcess, method: str, path: str, sender: str, body: bytes = b"", **kw) -> httpx.Response:
    headers = auth.sign(SECRET.encode(), sender, s.name, method, path, hashlib.sha256(body).hexdigest())
    return httpx.request(method, s.url + path, content=body, headers={**headers, **kw.pop("headers", {})}, **kw)


def home(tmp_path: Path, extra: list[str] = ()) -> ServerProcess:
    (tmp_path / "secret").write_text(SECRET + "\n")
    return ServerProcess(tmp_path / "data", "alpha", 0, ["--federation-secret-file", str(tmp_path / "secret"),
                                                         "--lease-seconds", "30", *extra]).start()


def package(tmp_path: Path, final: int) -> tuple[Path, Path]:
    ini = make_scene(tmp_path / "scene", final=final)
    pkg = tmp_path / "scene.tar.gz"
    r = run_cli("pack", str(ini), "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    return ini.parent, pkg


def test_worker_role_may_claim_heartbeat_and_report_and_nothing_else(tmp_path):
    (tmp_path / "token").write_text("client-token\n")
    s = home(tmp_path, ["--client-token-file", str(tmp_path / "token")])
    try:
        claim = json.dumps({"backends": ["povray"]}).encode()
        assert signed_call(s, "GET", "/api/v1/peer/hello", "worker:w1").status_code == 401  # hello is signed for *
        hello = auth.sign(SECRET.encode(), "worker:w1", auth.ANY_RECEIVER, "GET", "/api/v1/peer/hello")
        assert httpx.get(s.url + "/api/v1/peer/hello", headers=hello).json()["name"] == "alpha"
        assert signed_call(s, "POST", "/api/v1/peer/claim", "worker:w1", claim).status_code == 204
        # a server name is not a worker: it needs a peer-table entry
        r = signed_call(s, "POST", "/api/v1/peer/claim", "w1", claim)
        assert r.status_code == 401 and "not a peer" in r.json()["error"]["message"]
        assert signed_call(s, "POST", "/api/v1/peer/claim", "worker:bad name", claim).status_code == 401
        # never asked for work, never told of work, never asks frontiers
        for method, path in (("POST", "/api/v1/peer/work"), ("GET", "/api/v1/peer/frontier/1/0")):
            r = signed_call(s, method, path, "worker:w1", b"{}" if method == "POST" else b"")
            assert r.status_code == 403, path
            assert r.json()["error"]["code"] == "forbidden" and "render-only worker" in r.json()["error"]["message"]
        # never submits: a signed package without the client token is refused
        scene, pkg = package(tmp_path, final=2)
        r = signed_call(s, "POST", "/api/v1/jobs", "worker:w1", pkg.read_bytes())
        assert r.status_code == 401 and "client token" in r.json()["error"]["message"]
        assert httpx.get(s.url + "/api/v1/jobs").json() == []
        r = run_cli("submit", str(pkg), "--server", s.url, env={"DISTREN_TOKEN": "client-token"})
        assert r.returncode == 0, r.stderr

        lease = signed_call(s, "POST", "/api/v1/peer/claim", "worker:w1", claim).json()
        base = f"/api/v1/peer/leases/{lease['job']}/{lease['frame']}/{lease['attempt']}"
        r = signed_call(s, "GET", f"/api/v1/peer/blobs/{lease['seed']['sha256']}", "worker:w1")
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == lease["seed"]["sha256"]
        # fencing as for peers: another worker's heartbeat, upload or result is refused
        assert signed_call(s, "POST", base + "/heartbeat", "worker:w2", b"{}").status_code == 409
        out = b"not a real tarball"
        assert signed_call(s, "PUT", base + "/output", "worker:w2", out).status_code == 409
        assert signed_call(s, "POST", base + "/heartbeat", "worker:w1", b"{}").status_code == 200
        r = signed_call(s, "POST", base + "/fail", "worker:w1", json.dumps({"error": "boom"}).encode())
        assert r.status_code == 200 and r.json()["state"] == "ready"
        frame = httpx.get(f"{s.url}/api/v1/jobs/{lease['job']}/frames/{lease['frame']}").json()
        assert frame["history"][-1]["renderer"] == "worker:w1" and "(on worker:w1)" in frame["error"]
        workers = {w["name"]: w for w in httpx.get(s.url + "/api/v1/server").json()["workers"]}
        assert workers["worker:w1"]["leases"] == 1 and workers["worker:w1"]["backends"] == ["povray"]
    finally:
        s.stop()


def test_a_worker_is_never_told_of_work():
    fed = Federation(None, PeerClient("alpha", SECRET.encode(), {"beta": "http://127.0.0.1:9"}),
                     FederationSettings(), verifier=None)
    fed.no_work_answer("worker:w1")
    fed.no_work_answer("beta")
    assert fed.announcer.waiting == {"beta"}


def test_worker_renders_a_job_and_exits_when_idle(tmp_path):
    s = home(tmp_path)
    try:
        scene, pkg = package(tmp_path, final=5)
        r = run_cli("submit", str(pkg), "--server", s.url)
        assert r.returncode == 0, r.stderr
        worker = subprocess.Popen(DISTREN + ["worker", "--home", s.url, "--secret-file", str(tmp_path / "secret"),
                                             "--name", "w1", "--idle-exit", "2", "--slots", "2",
                                             "--claim-backoff-max", "0.3"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            job = s.client().wait("distren://alpha/1", timeout=120)
            done = time.monotonic()
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
        log = worker.stdout.read()
        assert job["state"] == "done", log
        assert time.monotonic() - done >= 1.0, "the worker left before it was idle for --idle-exit"
        assert "idle for 2 s, exiting" in log
        frames = httpx.get(f"{s.url}/api/v1/jobs/1/frames").json()
        assert {f["rendered_by"] for f in frames} == {"worker:w1"}
        for frame in (0, 5):
            out = tmp_path / f"out{frame}"
            out.mkdir()
            s.client().download(f"distren://alpha/1/{frame}", out / "f.tar")
            subprocess.run(["tar", "-xf", "f.tar"], cwd=out, check=True)
            mine = next(p for p in out.iterdir() if p.suffix == ".png")
            assert pixels(mine) == pixels(povray_direct(scene, frame, tmp_path / f"direct{frame}"))
    finally:
        s.stop()


def test_worker_bad_input_is_one_line(tmp_path):
    (tmp_path / "secret").write_text(SECRET)
    cases = [
        (["--home", "ftp://x", "--secret-file", str(tmp_path / "secret")], "--home"),
        (["--home", "http://127.0.0.1:9", "--secret-file", str(tmp_path / "nothing")], "secret file"),
        (["--home", "http://127.0.0.1:9", "--secret-file", str(tmp_path / "secret"), "--name", "a b"], "worker name"),
        (["--home", "http://127.0.0.1:9", "--secret-file", str(tmp_path / "secret"), "--idle-exit", "0.5"],
         "no home server could be reached"),
    ]
    for args, text in cases:
        r = run_cli("worker", *args, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("distren: error:") and text in last and "Traceback" not in r.stderr, r.stderr


def test_worker_over_tls_with_the_farm_ca(tmp_path, tls_files):
    """A home serving HTTPS with a certificate of the farm's own CA: the worker renders its
    frames with --ca-file; without the CA it cannot reach the home and says why."""
    (tmp_path / "secret").write_text(SECRET + "\n")
    s = ServerProcess(tmp_path / "data", "alpha", 0, ["--federation-secret-file", str(tmp_path / "secret"),
                                                      "--lease-seconds", "30"], tls=tls_files).start()
    try:
        _, pkg = package(tmp_path, final=1)
        assert run_cli("submit", str(pkg), "--server", s.url, "--ca-file", str(tls_files.ca)).returncode == 0
        base = ["worker", "--home", s.url, "--secret-file", str(tmp_path / "secret"), "--name", "w1",
                "--idle-exit", "1", "--claim-backoff-max", "0.3"]
        untrusted = run_cli(*base, timeout=120)
        assert untrusted.returncode != 0 and "not trusted" in untrusted.stderr, untrusted.stderr
        r = run_cli(*base, "--ca-file", str(tls_files.ca), timeout=120)
        assert r.returncode == 0, r.stderr
        job = s.client().wait("distren://alpha/1", timeout=60)
        assert job["state"] == "done"
        frames = s.client().frames("distren://alpha/1")
        assert {f["rendered_by"] for f in frames} == {"worker:w1"}
    finally:
        s.stop()

"""Several real server processes on loopback ports, separate data folders, one farm."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tarfile
import time
from pathlib import Path

import httpx

from conftest import ServerProcess, dependent_package, make_scene, run_cli
from distren.federation import auth

def pack(tmp: Path, final: int, name: str = "scene", pov_extra: str = "") -> Path:
    scene = tmp / name
    ini = make_scene(scene, final=final)
    if pov_extra:
        (scene / "scene.pov").write_text((scene / "scene.pov").read_text() + pov_extra)
    pkg = tmp / f"{name}.tar.gz"
    r = run_cli("pack", str(ini), "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    return pkg


def png_pixels(data: bytes):
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size, im.mode, im.tobytes()


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def test_job_on_a_rendering_server_less_home_is_rendered_by_peers(farm, tmp_path):
    a = farm.add("A", 0, ["B", "C"])
    farm.add("B", 2, ["A"])
    farm.add("C", 2, ["A"])
    solo = ServerProcess(tmp_path / "data-solo", "solo", 2)
    farm.start()
    pkg = pack(tmp_path, final=29)
    client = a.client()
    job = client.submit(pkg)
    info = client.wait(job["url"], interval=0.2, timeout=240)
    assert info["state"] == "done", info
    frames = client.frames(job["url"])
    assert len(frames) == 30
    by = {f["rendered_by"] for f in frames}
    assert by <= {"B", "C"} and by, by
    bundle = tmp_path / "fed.tar"
    client.download(job["url"], bundle)
    solo.start()
    try:
        sc = solo.client()
        sjob = sc.submit(pkg)
        assert sc.wait(sjob["url"], interval=0.2, timeout=240)["state"] == "done"
        ref = tmp_path / "solo.tar"
        sc.download(sjob["url"], ref)
    finally:
        solo.stop()
    fed_m, ref_m = members(bundle), members(ref)
    assert sorted(fed_m) == sorted(ref_m) and len(fed_m) == 30
    # POV-Ray stamps the render time into each PNG (tIME chunk): compare the images
    for name in ref_m:
        assert png_pixels(fed_m[name]) == png_pixels(ref_m[name]), name
    # any server of the farm answers for A's job, and the CLI pointed at B downloads it
    b = farm.servers["B"]
    assert b.client().job(job["url"])["state"] == "done"
    via_b = tmp_path / "via-b.tar"
    r = run_cli("download", job["url"], "-o", str(via_b), "--server", b.url)
    assert r.returncode == 0, r.stderr
    assert via_b.read_bytes() == bundle.read_bytes()
    r = run_cli("peers", "--server", a.url, "--json")
    peers = {p["name"]: p for p in json.loads(r.stdout)}
    assert set(peers) == {"B", "C"}


def test_dependency_on_a_frame_of_another_server(farm, tmp_path):
    a = farm.add("A", 1, ["B"])
    b = farm.add("B", 1, ["A"])
    farm.start()
    pkg_a = pack(tmp_path, final=1, name="first")
    job_a = a.client().submit(pkg_a)
    pkg_b = dependent_package(tmp_path / "second", f"distren://A/{job_a['id']}/1", "scene1.png", last_frame=1)
    cb = b.client()
    job_b = cb.submit(pkg_b)
    info = cb.wait(job_b["url"], interval=0.2, timeout=120)
    assert info["state"] == "done", cb.frame(f"{job_b['url']}/0")
    dep_done = a.client().frame(f"{job_a['url']}/1")["finished"]
    for f in cb.frames(job_b["url"]):
        assert f["started"] >= dep_done
    detail = cb.frame(f"{job_b['url']}/0")
    assert detail["depends"] == [{"url": f"distren://A/{job_a['id']}/1", "state": "done"}]


def test_dependency_on_a_server_that_is_not_a_peer_is_refused(farm, tmp_path):
    a = farm.add("A", 0, [])
    farm.start()
    scene = tmp_path / "s"
    make_scene(scene)
    xml = ('<distrenjob><name>x</name><backend name="povray"><ini>scene.ini</ini></backend>'
           '<frames><frame id="0"><depends>distren://Z/1/1</depends></frame></frames></distrenjob>')
    (scene / "distrenjob.xml").write_text(xml)
    pkg = tmp_path / "p.tar"
    with tarfile.open(pkg, "w") as t:
        for p in scene.iterdir():
            t.add(p, p.name)
    resp = httpx.post(a.url + "/api/v1/jobs", content=pkg.read_bytes())
    assert resp.status_code == 400 and "not this server or a peer" in resp.json()["error"]["message"]


SLOWISH = '#declare Spin = 0; #while (Spin < 3000000) #declare Spin = Spin + 1; #end\n'


def test_killed_peer_frames_are_leased_again(farm, tmp_path):
    a = farm.add("A", 0, ["B", "C"])
    b = farm.add("B", 1, ["A"])
    farm.add("C", 1, ["A"], extra=["--claim-backoff-max", "2"])
    farm.start()
    pkg = pack(tmp_path, final=5, pov_extra=SLOWISH)
    client = a.client()
    job = client.submit(pkg)
    deadline = time.monotonic() + 60
    while not any(f["state"] == "running" and f.get("rendered_by") is None and _owner(a, f) == "B"
                  for f in client.frames(job["url"])):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    b.stop(signal.SIGKILL)
    info = client.wait(job["url"], interval=0.2, timeout=180)
    assert info["state"] == "done", info
    frames = client.frames(job["url"])
    assert all(f["rendered_by"] == "C" or f["attempts"] == 1 for f in frames)
    assert any(f["attempts"] >= 2 for f in frames)  # the frame B held was leased again
    bundle = tmp_path / "b.tar"
    client.download(job["url"], bundle)
    assert len(members(bundle)) == 6


def _owner(server: ServerProcess, frame: dict) -> str | None:
    detail = server.client().frame(frame["url"])
    return detail["history"][-1]["renderer"] if detail["history"] else None


def test_stopped_peer_late_result_is_refused(farm, tmp_path):
    a = farm.add("A", 0, ["B", "C"])
    b = farm.add("B", 1, ["A"])
    farm.add("C", 1, ["A"])
    farm.start()
    pkg = pack(tmp_path, final=3, pov_extra=SLOWISH)
    client = a.client()
    job = client.submit(pkg)
    deadline = time.monotonic() + 60
    while True:
        held = [f for f in client.frames(job["url"]) if f["state"] == "running" and _owner(a, f) == "B"]
        if held:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(b.proc.pid, signal.SIGSTOP)
    time.sleep(5)  # past the 3 s lease: A hands the frame to C
    os.killpg(b.proc.pid, signal.SIGCONT)
    info = client.wait(job["url"], interval=0.2, timeout=180)
    assert info["state"] == "done"
    time.sleep(2)  # give B's late upload time to arrive (and be refused)
    frame = client.frame(held[0]["url"])
    assert frame["attempts"] >= 2
    outcomes = [h["outcome"] for h in frame["history"]]
    assert outcomes.count("done") == 1, frame["history"]
    log = b.log.read_text()
    assert "not taken" in log or "lost" in log, log[-3000:]
    bundle = tmp_path / "b.tar"
    client.download(job["url"], bundle)
    names = list(members(bundle))
    assert len(names) == len(set(names)) == 4


def signed(secret: bytes, method: str, path: str, body: bytes = b"", peer: str = "B", receiver: str = "A",
           **kw) -> dict:
    return auth.sign(secret, peer, receiver, method, path, hashlib.sha256(body).hexdigest(), **kw)


def test_signed_requests(farm, tmp_path):
    a = farm.add("A", 0, ["B"])
    farm.start()
    secret = farm.secret.read_bytes().strip()
    path = "/api/v1/peer/claim"
    body = json.dumps({"backends": ["povray"]}).encode()
    url = a.url + path
    ok = httpx.post(url, content=body, headers=signed(secret, "POST", path, body))
    assert ok.status_code == 204  # accepted: no work to hand out
    cases = {
        "missing": {},
        "wrong secret": signed(b"another secret, just as long", "POST", path, body),
        "stale": signed(secret, "POST", path, body, timestamp=int(time.time()) - 301),
        "not a peer": signed(secret, "POST", path, body, peer="Z"),
        "meant for another server": signed(secret, "POST", path, body, receiver="C"),
        "signed before the server started": signed(secret, "POST", path, body, timestamp=int(time.time()) - 120),
    }
    for what, headers in cases.items():
        r = httpx.post(url, content=body, headers=headers)
        assert r.status_code == 401, what
        assert r.json()["error"]["code"] == "unauthorized"
    replay = signed(secret, "POST", path, body)
    assert httpx.post(url, content=body, headers=replay).status_code == 204
    r = httpx.post(url, content=body, headers=replay)
    assert r.status_code == 401 and "replay" in r.json()["error"]["message"]
    tampered = signed(secret, "POST", path, body)
    r = httpx.post(url, content=json.dumps({"backends": ["blender"]}).encode(), headers=tampered)
    assert r.status_code == 401 and "tampered" in r.json()["error"]["message"]
    # a signature for one path does not open another
    other = signed(secret, "GET", "/api/v1/peer/hello")
    assert httpx.get(a.url + "/api/v1/peer/blobs/" + "0" * 64, headers=other).status_code == 401


def test_peer_with_the_wrong_name_is_not_trusted(farm, tmp_path):
    a = farm.add("A", 1, [])
    c = farm.add("C", 0, [])
    c.start()
    a.extra += ["--peer", f"B={c.url}"]  # B's address, but C answers there
    a.start()
    deadline = time.monotonic() + 20
    while True:
        peers = a.client().peers()
        if peers[0]["last_error"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert peers[0]["name"] == "B" and not peers[0]["verified"] and not peers[0]["healthy"]
    assert "answers as 'C'" in peers[0]["last_error"]


def test_client_token_guards_changes(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    s = ServerProcess(tmp_path / "data", "alpha", 0, ["--client-token-file", str(token)]).start()
    try:
        pkg = pack(tmp_path, final=1)
        r = run_cli("submit", str(pkg), "--server", s.url)
        assert r.returncode == 3 and "token" in r.stderr
        r = run_cli("submit", str(pkg), "--server", s.url, env={"DISTREN_TOKEN": "wrong"})
        assert r.returncode == 3
        r = run_cli("submit", str(pkg), "--server", s.url, env={"DISTREN_TOKEN": "s3cret-token"})
        assert r.returncode == 0, r.stderr
        url = r.stdout.strip()
        assert httpx.post(f"{s.url}/api/v1/jobs/1/cancel").status_code == 401
        assert run_cli("cancel", url, "--server", s.url, env={"DISTREN_TOKEN": "s3cret-token"}).returncode == 0
        # queries stay open
        assert httpx.get(f"{s.url}/api/v1/jobs/1").status_code == 200
    finally:
        s.stop()


def test_interrupted_download_resumes_with_range(farm, tmp_path):
    import asyncio

    from distren.federation.peers import PeerClient
    from distren.federation.service import Federation, FederationSettings
    from distren.metrics import Metrics
    from distren.store.blobs import BlobStore

    a = farm.add("A", 0, ["B"])
    farm.start()
    big = tmp_path / "big"
    make_scene(big)
    (big / "noise.bin").write_bytes(os.urandom(3_000_000))  # incompressible: a large seed
    pkg = tmp_path / "big.tar"
    (big / "distrenjob.xml").write_text('<distrenjob><name>big</name><backend name="povray"><ini>scene.ini</ini>'
                                        '</backend><frames><frame id="0"/></frames></distrenjob>')
    with tarfile.open(pkg, "w") as t:
        for p in sorted(big.iterdir()):
            t.add(p, p.name)
    job = a.client().submit(pkg)
    seed = job["seed"]

    class Core:   # what Federation needs of a server's core for a transfer
        blobs = BlobStore(tmp_path / "b-blobs")
        metrics = Metrics()

    seen = []

    async def run():
        peers = PeerClient("B", farm.secret.read_bytes().strip(), {"A": a.url})
        peers.http.event_hooks["request"] = [lambda req: _record(seen, req)]
        fed = Federation(Core(), peers, FederationSettings(), verifier=None)
        whole = (a.data / "blobs" / seed["sha256"][:2] / seed["sha256"]).read_bytes()
        part = Core.blobs.tmp_dir / f"download-{seed['sha256']}.part"
        part.write_bytes(whole[:1_000_000])  # what an interrupted transfer left
        blob = await fed.fetch_blob("A", seed["sha256"], seed["size"])
        await peers.close()
        return blob, whole

    blob, whole = asyncio.run(run())
    assert blob.sha256 == seed["sha256"] and blob.size == len(whole)
    assert Core.blobs.path(blob.sha256).read_bytes() == whole
    ranges = [r for r in seen if "/peer/blobs/" in r[0]]
    assert ranges == [(f"/api/v1/peer/blobs/{seed['sha256']}", "bytes=1000000-")]


async def _record(seen: list, request) -> None:
    seen.append((request.url.path, request.headers.get("range")))


def test_the_chunk_route_refuses_bad_limits_and_leases_that_are_not_the_peers(farm, tmp_path):
    """POST /peer/leases/{job}/{frame}/{attempt}/more: 400 for a limit that is not 1..50, 409
    for a lease the asking peer does not hold; with a current lease, the frames after it."""
    a = farm.add("A", 0, ["B"])
    farm.start()
    secret = farm.secret.read_bytes().strip()
    job = a.client().submit(pack(tmp_path, final=5))
    jid = int(job["url"].rsplit("/", 1)[1])

    def post(path: str, data: dict) -> httpx.Response:
        body = json.dumps(data).encode()
        return httpx.post(a.url + path, content=body, headers=signed(secret, "POST", path, body))

    r = post("/api/v1/peer/claim", {"backends": ["povray"]})
    assert r.status_code == 200 and r.json()["frame"] == 0
    assert r.json()["chunk"] is None and r.json()["ready"] == 5     # the hints for the peer's chunk
    more = f"/api/v1/peer/leases/{jid}/0/{r.json()['attempt']}/more"
    for bad in ({}, {"limit": 0}, {"limit": 51}, {"limit": "3"}, {"limit": True}):
        r2 = post(more, bad)
        assert r2.status_code == 400 and r2.json()["error"]["code"] == "bad_job", bad
    assert post(f"/api/v1/peer/leases/{jid}/0/99/more", {"limit": 2}).status_code == 409
    assert post(f"/api/v1/peer/leases/{jid}/3/1/more", {"limit": 2}).status_code == 409   # not leased at all
    r3 = post(more, {"limit": 2})
    assert r3.status_code == 200 and [one["frame"] for one in r3.json()["leases"]] == [1, 2]
    frames = {f["frame"]: f["state"] for f in a.client().frames(job["url"])}
    assert frames == {0: "running", 1: "running", 2: "running", 3: "ready", 4: "ready", 5: "ready"}

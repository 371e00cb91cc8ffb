"""The single-server path end to end, on real parts: `distren` CLI processes talk to a
`distren serve` process, which renders with real POV-Ray in the sandbox."""

from __future__ import annotations

import json
import signal
import tarfile
import time
from pathlib import Path

import httpx

from conftest import dependent_package, failing_package, make_scene, pixels, povray_direct, run_cli

SLOW_POV = """#version 3.7;
global_settings { assumed_gamma 1.0 }
#declare I = 0;
#while (I < 100000000) #declare I = I + 1; #end
sphere { 0, 1 pigment { rgb 1 } }
"""


def slow_package(tmp_path: Path, *pack_args: str) -> Path:
    """A package of a scene that takes far longer to parse than any test waits."""
    scene = tmp_path / "slow"
    scene.mkdir()
    (scene / "slow.pov").write_text(SLOW_POV)
    pkg = tmp_path / "slow.tar.gz"
    r = run_cli("pack", str(scene / "slow.pov"), *pack_args, "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    return pkg


def wait_done(client, url: str, timeout: float = 120) -> dict:
    return client.wait(url, interval=0.1, timeout=timeout)


def bundle_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}


def test_cli_submit_render_download_is_pixel_identical(server, tmp_path):
    scene = tmp_path / "scene"
    ini = make_scene(scene, final=5)
    pkg = tmp_path / "job.tar.gz"
    r = run_cli("pack", str(ini), "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    r = run_cli("submit", str(pkg), "--server", server.url, "--wait")
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip().splitlines()[0]
    assert url.startswith("distren://alpha/")
    r = run_cli("status", url, "--json", env={"DISTREN_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["state"] == "done" and status["frames"]["done"] == 6
    bundle = tmp_path / "bundle.tar"
    r = run_cli("download", url, "-o", str(bundle), "--server", server.url)
    assert r.returncode == 0, r.stderr
    members = bundle_members(bundle)
    assert sorted(members) == [f"{n}/scene{n}.png" for n in range(6)]
    extracted = tmp_path / "bundle"
    extracted.mkdir()
    with tarfile.open(bundle) as t:
        t.extractall(extracted, filter="data")
    for n in range(6):
        direct = povray_direct(scene, n, tmp_path / f"direct{n}")
        assert pixels(extracted / str(n) / f"scene{n}.png") == pixels(direct), f"frame {n} differs"
    # a frame URL downloads that frame's tarball
    frame_tar = tmp_path / "f3.tar"
    assert run_cli("download", f"{url}/3", "-o", str(frame_tar), "--server", server.url).returncode == 0
    assert bundle_members(frame_tar) == {"scene3.png": members["3/scene3.png"]}


def test_sparse_ids_and_dependency_chain_render_in_order(server, tmp_path):
    scene = tmp_path / "scene"
    make_scene(scene)
    pkg = tmp_path / "sparse.tar.gz"
    r = run_cli("pack", str(scene / "scene.pov"), "--frames", "0,5,1000", "--width", "32", "--height", "24", "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    # make the chain 1000 -> 5 -> 0 (and check that pack's XML takes it)
    from distren.job.spec import parse_job_xml
    from distren.tarballs import safe_extract, write_tar
    from distren.url import format_url

    root = safe_extract(pkg, tmp_path)
    spec = parse_job_xml((root / "distrenjob.xml").read_bytes(), "alpha", 0)
    assert spec.frame_ids() == [0, 5, 1000]
    deps = {5: 0, 1000: 5}
    for f in spec.frames:
        if f.id in deps:
            from distren.url import parse_url
            f.depends = [parse_url(format_url("alpha", 0, deps[f.id]))]
    (root / "distrenjob.xml").write_bytes(spec.to_xml("alpha", 0))
    chained = tmp_path / "chained.tar"
    with open(chained, "wb") as out:
        write_tar(out, [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()])

    client = server.client()
    job = client.submit(chained)
    info = wait_done(client, job["url"])
    assert info["state"] == "done", info
    frames = {f["frame"]: f for f in client.frames(job["url"])}
    assert sorted(frames) == [0, 5, 1000]
    assert frames[5]["started"] >= frames[0]["finished"]
    assert frames[1000]["started"] >= frames[5]["finished"]
    detail = client.frame(f"{job['url']}/5")
    assert detail["depends"] == [{"url": f"{job['url']}/0", "state": "done"}]
    bundle = tmp_path / "b.tar"
    client.download(job["url"], bundle)
    assert sorted(bundle_members(bundle)) == ["0/scene0000.png", "1000/scene1000.png", "5/scene0005.png"]
    # pixel identity with POV-Ray's own animation settings for a bare .pov
    direct = povray_direct(scene, 5, tmp_path / "d5", ini="scene.pov",
                           extra=["+W32", "+H24", "+KFI0", "+KFF1000"])
    extracted = tmp_path / "x"
    extracted.mkdir()
    with tarfile.open(bundle) as t:
        t.extractall(extracted, filter="data")
    assert pixels(extracted / "5" / "scene0005.png") == pixels(direct)


def test_dependency_on_another_job_is_unpacked_for_the_renderer(server, tmp_path):
    client = server.client()
    first = tmp_path / "first"
    ini = make_scene(first, final=1)
    pkg = tmp_path / "first.tar.gz"
    assert run_cli("pack", str(ini), "-o", str(pkg)).returncode == 0
    job1 = client.submit(pkg)
    pkg2 = dependent_package(tmp_path / "second", f"distren://alpha/{job1['id']}/1", "scene1.png")
    job2 = client.submit(pkg2)
    info = wait_done(client, job2["url"])
    assert info["state"] == "done", client.frame(f"{job2['url']}/0")
    assert client.frame(f"{job2['url']}/0")["started"] >= client.frame(f"{job1['url']}/1")["finished"]


def test_restart_keeps_jobs_and_never_reissues_ids(server_factory, tmp_path):
    scene = tmp_path / "scene"
    make_scene(scene, final=1)
    pkg = tmp_path / "p.tar.gz"
    assert run_cli("pack", str(scene / "scene.ini"), "-o", str(pkg)).returncode == 0
    data = tmp_path / "data-restart"
    s = server_factory("alpha", data=data)
    c = s.client()
    ids = [c.submit(pkg)["id"] for _ in range(3)]
    for i in ids:
        assert wait_done(c, f"distren://alpha/{i}")["state"] == "done"
    before = {j["id"]: j for j in c.jobs()}
    c.delete(f"distren://alpha/{ids[-1]}")  # the highest id is gone ...
    s.stop()
    s = server_factory("alpha", data=data)
    c = s.client()
    after = {j["id"]: j for j in c.jobs()}
    assert sorted(after) == ids[:-1]
    for i in ids[:-1]:
        assert after[i]["state"] == "done" and after[i]["frames"] == before[i]["frames"]
    new = c.submit(pkg)["id"]
    assert new > max(ids)  # ... and its id is not handed out again
    s.stop(signal.SIGKILL)  # no graceful shutdown this time
    s = server_factory("alpha", data=data)
    c = s.client()
    assert c.submit(pkg)["id"] > new
    assert sorted(j["id"] for j in c.jobs()) == sorted(ids[:-1] + [new, new + 1])
    bundle = tmp_path / "b.tar"
    c.download(f"distren://alpha/{ids[0]}", bundle)
    assert sorted(bundle_members(bundle)) == ["0/scene0.png", "1/scene1.png"]


def test_failed_frame_has_its_log_and_retry_requeues(server_factory, tmp_path):
    s = server_factory("alpha", extra=["--max-failures", "2"])
    pkg = failing_package(tmp_path / "scene", final=3, failing=2, message="boom2")
    r = run_cli("submit", str(pkg), "--server", s.url, "--wait")
    assert r.returncode == 1, r.stderr
    url = r.stdout.strip().splitlines()[0]
    c = s.client()
    job = c.job(url)
    assert job["state"] == "failed" and job["frames"]["done"] == 3 and job["frames"]["failed"] == 1
    frame = c.frame(f"{url}/2")
    assert frame["state"] == "failed" and frame["attempts"] == 2
    assert "boom2" in frame["log"]
    assert [h["outcome"] for h in frame["history"]] == ["failed", "failed"]
    assert all("boom2" in h["log"] for h in frame["history"])
    r = run_cli("retry", url, "--server", s.url)
    assert r.returncode == 0, r.stderr
    assert "requeued 1" in r.stdout
    job = wait_done(c, url)
    assert job["state"] == "failed" and c.frame(f"{url}/2")["attempts"] == 4
    assert httpx.get(s.url + "/api/v1/server").status_code == 200


def test_timeout_kills_the_render(server_factory, tmp_path):
    s = server_factory("alpha", extra=["--frame-timeout", "2", "--max-failures", "1"])
    pkg = slow_package(tmp_path)
    c = s.client()
    job = c.submit(pkg)
    t0 = time.monotonic()
    info = wait_done(c, job["url"], timeout=60)
    assert info["state"] == "failed"
    assert time.monotonic() - t0 < 30
    frame = c.frame(f"{job['url']}/0")
    assert "timed out" in frame["error"]
    assert no_render_running(s.data)


def no_render_running(data: Path) -> bool:
    """No sandbox (or renderer in it) of this server is alive: their command lines name the
    server's data folder. Other servers' renders on the machine do not count."""
    for _ in range(50):
        if not any(_renders_for(p, str(data)) for p in Path("/proc").iterdir() if p.name.isdigit()):
            return True
        time.sleep(0.1)
    return False


def _renders_for(proc: Path, data: str) -> bool:
    try:
        return ((proc / "comm").read_text().strip() in ("bwrap", "povray")
                and data.encode() in (proc / "cmdline").read_bytes())
    except OSError:
        return False


def test_cancel_kills_running_frames(server, tmp_path):
    pkg = slow_package(tmp_path, "--frames", "0-3")
    c = server.client()
    job = c.submit(pkg)
    deadline = time.monotonic() + 30
    while c.job(job["url"])["frames"]["running"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = run_cli("cancel", job["url"], "--server", server.url, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["state"] == "cancelled" and info["frames"]["cancelled"] == 4
    assert no_render_running(server.data)
    # retry lifts the cancel and requeues
    assert c.retry(job["url"])["requeued"] == 4
    assert c.job(job["url"])["state"] in ("queued", "running")
    c.cancel(job["url"])


def test_serve_refuses_a_folder_that_is_not_its_own(tmp_path):
    """At start-up a server clears its own scratch folders: it must never adopt someone else's
    folder (think --data / or --data ~), where `tmp` and `work` are not its own."""
    foreign = tmp_path / "foreign"
    (foreign / "tmp").mkdir(parents=True)
    (foreign / "tmp" / "precious.txt").write_text("keep me")
    r = run_cli("serve", "--name", "alpha", "--data", str(foreign), "--listen", "127.0.0.1:1")
    assert r.returncode == 2 and "not empty and holds no distren data" in r.stderr
    assert (foreign / "tmp" / "precious.txt").read_text() == "keep me"


def test_a_job_sets_its_own_render_timeout(server, tmp_path):
    """The server's default (--frame-timeout, 3600 s here) gives way to the job's <timeout>."""
    pkg = slow_package(tmp_path, "--timeout", "2")
    c = server.client()
    job = c.submit(pkg)
    assert job["timeout"] == 2
    frame = None
    deadline = time.monotonic() + 60
    while not (frame and frame["history"] and frame["history"][0]["outcome"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
        frame = c.frame(f"{job['url']}/0")
    assert frame["history"][0]["outcome"] == "failed"
    assert frame["history"][0]["finished"] - frame["history"][0]["started"] < 10
    c.cancel(job["url"])

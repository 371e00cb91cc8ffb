"""Liveness across a farm of real server processes: every job ends, and a frame that waits says
what for (docs/architecture.md, "Liveness"; src/distren/liveness.py).

Each test reproduces a way the farm could get stuck before the scheduler rewrite. To check that
a test catches its bug, run it against the old code with the flags the old servers lack left out:

    DISTREN_OLD=1 PYTHONPATH=<checkout of 5df6e40>/src .venv/bin/python -m pytest tests/test_liveness.py
"""

from __future__ import annotations

import os
import signal
import socket
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import Farm, dependent_package
from test_federation import pack

# Against the old code (see the module docstring): servers are started without the flags they
# do not know; the tests then fail for the real reason (a job that never ends, a wrong state).
OLD = os.environ.get("DISTREN_OLD") == "1"


def new_flags(*flags: str) -> list[str]:
    return [] if OLD else list(flags)


def spin(n: int) -> str:
    """POV-Ray SDL that keeps the parser busy for a while (about 1.3 s of CPU per million)."""
    return f"#declare Spin = 0; #while (Spin < {n}) #declare Spin = Spin + 1; #end\n"


BAD_FRAME_3 = '#if (frame_number = 3) #error "bad frame" #end\n'


def package_with_deps(folder: Path, deps: dict[int, str]) -> Path:
    """A package of tiny frames {frame: distren URL it depends on} (no dependency files read)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "s.pov").write_text("#version 3.7;\ncamera { location <0, 0, -3> look_at 0 }\n"
                                  "light_source { <1, 2, -3> rgb 1 }\nsphere { 0, 1 pigment { rgb 1 } }\n")
    frames = "".join(f'<frame id="{f}"><depends>{url}</depends></frame>' for f, url in sorted(deps.items()))
    (folder / "distrenjob.xml").write_text(
        f'<distrenjob><name>{folder.name}</name><backend name="povray"><scene>s.pov</scene>'
        f"<width>16</width><height>12</height><initial-frame>0</initial-frame>"
        f"<final-frame>{max(1, max(deps))}</final-frame></backend><frames>{frames}</frames></distrenjob>")
    pkg = folder.parent / f"{folder.name}.tar"
    with tarfile.open(pkg, "w") as t:
        t.add(folder / "distrenjob.xml", "distrenjob.xml")
        t.add(folder / "s.pov", "s.pov")
    return pkg


def start(farm: Farm, *names: str) -> None:
    """Farm.start, for the servers named (default: all), started concurrently (a server takes
    seconds to start on a loaded machine). The --peer flags are added at the first call."""
    if not getattr(farm, "wired", False):
        for s in farm.servers.values():
            for p in s.peer_names:
                url = farm.servers[p].url if p in farm.servers else "http://127.0.0.1:9"
                s.extra += ["--peer", f"{p}={url}"]
        farm.wired = True
    servers = [farm.servers[n] for n in names] if names else list(farm.servers.values())
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: s.start(), servers))


def without_peer(extra: list[str], name: str) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(extra):
        if skip:
            skip = False
            continue
        if arg == "--peer" and i + 1 < len(extra) and extra[i + 1].startswith(f"{name}="):
            skip = True
            continue
        out.append(arg)
    return out


def summary(client, url: str) -> str:
    job = client.job(url)
    frames = {f["frame"]: (f["state"], f["error"]) for f in client.frames(url)}
    return (f"{url} {job['state']} {job['frames']} blocklisted={job.get('blocklisted')}"
            f" waiting_for={job.get('waiting_for', '<absent>')!r} frames={frames}")


def wait_state(client, url: str, states: tuple[str, ...] = ("done", "failed", "cancelled"),
               timeout: float = 45) -> dict:
    """The job once it is in one of `states`; fails the test with the job's frames otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.job(url)
        if job["state"] in states:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"not {'/'.join(states)} after {timeout:g} s: {summary(client, url)}")
        time.sleep(0.2)


def poll(what: str, get, ok, timeout: float = 20, interval: float = 0.1):
    """get() until ok(value); fails the test with the last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not so after {timeout:g} s; last: {value!r}")
        time.sleep(interval)


# -- 1. blocklists -------------------------------------------------------------------------

def test_frame_that_fails_everywhere_fails_alone_and_blocks_no_peer(farm, tmp_path):
    """A frame that fails on every renderer is the frame's fault: it fails (after
    --max-failures attempts) with its error, the other frames render, and its only renderer is
    not blocklisted (which would leave the rest of the job ready forever)."""
    a = farm.add("A", 0, ["B"], extra=new_flags("--retry-elsewhere-seconds", "0.5"))
    farm.add("B", 2, ["A"])
    start(farm)
    client = a.client()
    job = client.submit(pack(tmp_path, final=5, pov_extra=BAD_FRAME_3))
    info = wait_state(client, job["url"], timeout=45)
    assert info["state"] == "failed", summary(client, job["url"])
    assert info["frames"]["done"] == 5 and info["frames"]["failed"] == 1, info
    assert info["blocklisted"] == []
    frames = {f["frame"]: f for f in client.frames(job["url"])}
    assert all(frames[f]["rendered_by"] == "B" for f in (0, 1, 2, 4, 5))
    bad = client.frame(f"{job['url']}/3")
    assert bad["state"] == "failed" and bad["failures"] == 3, bad
    assert "povray failed" in bad["error"], bad["error"]
    assert "halted by #error directive" in bad["log"], bad["log"][-2000:]
    assert [h["renderer"] for h in bad["history"]] == ["B", "B", "B"]


def test_peer_killed_with_two_leases_is_not_blocklisted(farm, tmp_path):
    """A peer killed while it holds two leases comes back: the expiries are not its fault (a
    crash, a lost network), so it is not blocklisted, and it renders the job to the end."""
    # a frame is not leased again to the renderer whose lease expired for --retry-elsewhere-seconds
    a = farm.add("A", 0, ["B"], extra=new_flags("--retry-elsewhere-seconds", "0.5"))
    b = farm.add("B", 2, ["A"])
    start(farm)
    client = a.client()
    job = client.submit(pack(tmp_path, final=3, pov_extra=spin(400_000)))
    # (B may hold more: a slot can lease a chunk of frames)
    poll("B holds two leases", lambda: client.job(job["url"])["frames"]["running"], lambda n: n >= 2, timeout=30,
         interval=0.05)
    b.stop(signal.SIGKILL)
    b.start()  # same port, same data folder; the two leases it held expire at A
    info = wait_state(client, job["url"], timeout=45)
    assert info["state"] == "done", summary(client, job["url"])
    assert info["blocklisted"] == []
    history = [h for f in range(4) for h in client.frame(f"{job['url']}/{f}")["history"]]
    expired = [h for h in history if h["outcome"] != "done"]
    assert len(expired) >= 2 and all(h["renderer"] == "B" and h["outcome"] == "expired" for h in expired), \
        [(h["attempt"], h["renderer"], h["outcome"], (h.get("log") or "")[-200:]) for h in history]


def test_job_fails_when_every_renderer_is_blocklisted(farm, tmp_path):
    """B fails every frame (its --frame-timeout is shorter than a render), C renders them: B is
    blocklisted. With C gone from A's peer table, no server may render the job's frames any
    more: they fail, naming why, instead of staying ready forever."""
    a = farm.add("A", 0, ["B", "C"])
    farm.add("B", 1, ["A"], extra=["--frame-timeout", "0.25"])
    c = farm.add("C", 1, ["A"])
    start(farm)
    client = a.client()
    job = client.submit(pack(tmp_path, final=11, pov_extra=spin(500_000)))
    poll("B blocklisted", lambda: client.job(job["url"])["blocklisted"], lambda v: v == ["B"], timeout=60,
         interval=0.1)
    c.stop()  # hands its frame back
    a.stop()
    a.extra = without_peer(a.extra, "C")
    a.start()
    info = wait_state(client, job["url"], timeout=30)
    assert info["state"] == "failed", summary(client, job["url"])
    assert info["blocklisted"] == ["B"]
    frames = client.frames(job["url"])
    done = [f for f in frames if f["state"] == "done"]
    assert done and all(f["rendered_by"] == "C" for f in done)
    for f in frames:
        if f["state"] != "done":
            assert f["state"] == "failed", f
            # a frame B was still rendering when A came back fails by its own timeout on B
            assert "blocklisted" in f["error"] and "B" in f["error"] or "timed out" in f["error"], f


# -- 2. a home server without the renderer ---------------------------------------------------

def path_without(tmp: Path, program: str) -> str:
    """A PATH with every program of the usual folders but `program`."""
    bin_dir = tmp / f"bin-without-{program}"
    bin_dir.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            target = bin_dir / entry
            if entry != program and not target.exists() and not target.is_symlink():
                target.symlink_to(os.path.join(folder, entry))
    return str(bin_dir)


def test_frames_say_they_wait_for_a_peer_that_is_down(farm, tmp_path):
    """A's slot lacks POV-Ray; its only peer with POV-Ray is killed and stays down: the ready
    frames say so (frame and job `waiting_for`), and they render once the peer is back."""
    a = farm.add("A", 1, ["B"], extra=new_flags("--peer-timeout", "1"))
    a.env = {"PATH": path_without(tmp_path, "povray")}
    b = farm.add("B", 1, ["A"])
    start(farm)
    assert not a.client().server_info()["backends"]["povray"]["available"]
    b.stop(signal.SIGKILL)
    client = a.client()
    job = client.submit(pack(tmp_path, final=1))
    frame = poll("frame 0 says it waits for B",
                 lambda: client.frame(f"{job['url']}/0"),
                 lambda f: any("B down since" in w for w in f.get("waiting_for") or []))
    assert frame["state"] == "ready"
    assert frame["waiting_for"] == [
        next(w for w in frame["waiting_for"] if "B down since" in w)], frame["waiting_for"]
    assert "povray" in frame["waiting_for"][0] and "reachable" in frame["waiting_for"][0]
    info = client.job(job["url"])
    assert info["state"] == "queued" and "B down since" in (info["waiting_for"] or ""), info
    time.sleep(3)  # a down peer is no reason to fail the frames
    assert client.job(job["url"])["frames"]["ready"] == 2
    b.start()
    info = wait_state(client, job["url"], timeout=45)
    assert info["state"] == "done" and info["waiting_for"] is None, summary(client, job["url"])
    assert {f["rendered_by"] for f in client.frames(job["url"])} == {"B"}


# -- 3. what is known of a peer's frame is not final until it is done ---------------------------

def test_retried_peer_frame_is_asked_again_by_a_new_dependent(farm, tmp_path):
    """B learnt that A's frame was cancelled; A's job is retried and done since. A new job of B
    that depends on that frame asks A again, instead of failing on the stale 'cancelled'."""
    a = farm.add("A", 0, ["B"])
    b = farm.add("B", 1, ["A"])
    start(farm, "A")  # B (A's only renderer) is not up yet: the job stays queued until cancelled
    ca = a.client()
    job1 = ca.submit(pack(tmp_path, final=1))
    ca.cancel(job1["url"])
    start(farm, "B")
    cb = b.client()
    dep = f"distren://A/{job1['id']}/0"
    x = cb.submit(dependent_package(tmp_path / "x", dep, "scene0.png"))
    info = wait_state(cb, x["url"], timeout=30)
    assert info["state"] == "failed"
    assert f"dependency {dep} cancelled" in cb.frame(f"{x['url']}/0")["error"]
    ca.retry(job1["url"])
    assert wait_state(ca, job1["url"], timeout=45)["state"] == "done", summary(ca, job1["url"])
    y = cb.submit(dependent_package(tmp_path / "y", dep, "scene0.png"))
    info = wait_state(cb, y["url"], timeout=30)
    assert info["state"] == "done", summary(cb, y["url"])
    assert cb.frame(f"{y['url']}/0")["depends"] == [{"url": dep, "state": "done"}]


# -- 4. dependencies on peers that are dead, removed or black-holed ------------------------------

def test_dependency_on_a_dead_peer_waits_then_fails(farm, tmp_path):
    """B's frame depends on a frame of A, which dies: the frame says it waits for A, unreachable
    since when; after --remote-dep-timeout it fails, naming A, and the job ends."""
    a = farm.add("A", 0, ["B"])
    b = farm.add("B", 0, ["A"], extra=new_flags("--remote-dep-timeout", "3"))
    start(farm)
    job1 = a.client().submit(pack(tmp_path, final=0))  # nobody renders it: it stays ready
    cb = b.client()
    dep = f"distren://A/{job1['id']}/0"
    y = cb.submit(package_with_deps(tmp_path / "y", {0: dep}))
    time.sleep(1)
    assert cb.job(y["url"])["state"] == "queued"
    a.stop(signal.SIGKILL)
    frame = poll("B's frame names A unreachable", lambda: cb.frame(f"{y['url']}/0"),
                 lambda f: any("A unreachable since" in w for w in f.get("waiting_for") or []), timeout=10,
                 interval=0.05)
    assert frame["state"] == "waiting" and dep in frame["waiting_for"][0], frame
    info = wait_state(cb, y["url"], timeout=20)
    assert info["state"] == "failed", summary(cb, y["url"])
    error = cb.frame(f"{y['url']}/0")["error"]
    assert error.startswith(f"dependency {dep} failed") and "server A unreachable since" in error, error


def test_dependency_on_a_server_that_is_no_longer_a_peer_fails(farm, tmp_path):
    """B is restarted without A in its peer table: frames waiting for a frame of A fail with
    "not a peer" instead of waiting forever."""
    b = farm.add("B", 0, ["A"])  # A: an address where nothing answers
    start(farm)
    cb = b.client()
    dep = "distren://A/1/0"
    y = cb.submit(package_with_deps(tmp_path / "y", {0: dep, 1: dep}))
    time.sleep(1.5)
    assert cb.job(y["url"])["state"] == "queued"
    b.stop()
    b.extra = without_peer(b.extra, "A")
    b.start()
    info = wait_state(cb, y["url"], timeout=20)
    assert info["state"] == "failed" and info["frames"]["failed"] == 2, summary(cb, y["url"])
    for f in cb.frames(y["url"]):
        assert f"dependency {dep} failed" in f["error"] and "not a peer" in f["error"], f


class BlackHole:
    """A TCP port that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.accepted: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.append(time.monotonic())

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    yield hole
    hole.close()


def test_black_holed_peer_does_not_delay_other_peers_dependencies(farm, tmp_path, black_hole):
    """B's frame 0 depends on a frame of A, which accepts connections and never answers; frame 1
    depends on a frame of C, done already. Frame 1 is fetched and rendered at once, not after
    B's requests to A time out."""
    cb, job1 = black_holed_farm(farm, tmp_path, black_hole)
    t0 = time.monotonic()
    y = cb.submit(package_with_deps(tmp_path / "y", {0: "distren://A/1/0", 1: f"distren://C/{job1['id']}/0"}))
    frame = poll("B's frame 1 rendered", lambda: cb.frame(f"{y['url']}/1"), lambda f: f["state"] != "waiting"
                 and f["state"] != "ready" and f["state"] != "running", timeout=15)
    took = time.monotonic() - t0
    assert frame["state"] == "done" and frame["rendered_by"] == "C", frame
    assert black_hole.accepted, "B never tried A"
    assert took < 8, f"frame 1 took {took:.1f} s"  # B's requests to A time out after 10 s
    assert cb.frame(f"{y['url']}/0")["state"] == "waiting"


# A black-holed peer: B's requests to A hang until they time out; nothing else may wait for them.

def black_holed_farm(farm, tmp_path, black_hole):
    """B (no slots) with peers C (renders) and A (black-holed); a frame of C done. Returns
    B's client and C's job."""
    b = farm.add("B", 0, ["C"])
    c = farm.add("C", 1, ["B"])
    b.extra += ["--peer", f"A=http://127.0.0.1:{black_hole.port}"]
    start(farm)
    cc = c.client()
    job1 = cc.submit(pack(tmp_path, final=0))
    assert wait_state(cc, job1["url"], timeout=30)["state"] == "done"
    return b.client(), job1

def test_black_holed_peer_does_not_delay_later_checks_of_other_peers(farm, tmp_path, black_hole):
    """As above, but B is already waiting on the black-holed A when it learns of the dependency
    on C (the steady state, not the first round)."""
    cb, job1 = black_holed_farm(farm, tmp_path, black_hole)
    asked = len(black_hole.accepted)  # B's hello at start-up, perhaps
    cb.submit(package_with_deps(tmp_path / "y0", {0: "distren://A/1/0"}))
    poll("B asks A about its frame", lambda: len(black_hole.accepted), lambda n: n > asked, timeout=10,
         interval=0.02)
    y = cb.submit(package_with_deps(tmp_path / "y", {0: f"distren://C/{job1['id']}/0"}))
    poll("B's frame, which depends on C only, rendered", lambda: cb.frame(f"{y['url']}/0")["state"],
         lambda s: s == "done", timeout=6)


def test_black_holed_peer_does_not_hold_up_a_slot(farm, tmp_path, black_hole):
    """B has one slot and one peer, black-holed. A job submitted to B renders at once."""
    b = farm.add("B", 1, [])
    b.extra += ["--peer", f"A=http://127.0.0.1:{black_hole.port}"]
    start(farm)
    cb = b.client()
    pkg = pack(tmp_path, final=0)
    poll("B asks A for work", lambda: len(black_hole.accepted), lambda n: n >= 1, timeout=10, interval=0.02)
    job = cb.submit(pkg)
    poll("B's own frame rendered", lambda: cb.job(job["url"])["state"], lambda s: s == "done", timeout=6)

"""Splitting a chunk (docs/architecture.md, "Splitting a chunk"): a renderer that finds nothing
to lease gets the unstarted tail of a chunk another renderer holds, so that the last frames of
a job do not wait behind one long chunk while renderers stand idle. Pure logic, the scheduler
on a real SQLite file, and real servers rendering with POV-Ray (one server's two slots; a farm
of three servers)."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import httpx
import pytest

from conftest import povray_direct, run_cli
from distren.chunks import tail_to_release
from distren.errors import Conflict
from distren.store.blobs import Blob
from test_federation import png_pixels, signed
from test_liveness import start
from test_scheduler import add_job, sched, states  # noqa: F401 (the fixture)

FRAMES = 12

# about 0.35 s a frame on one core here, most of it POV-Ray's own idle time between frames:
# a chunk of 12 lasts some 4 s, long enough for an idle renderer to ask for its tail
SLOW_POV = """#version 3.7;
global_settings { assumed_gamma 1.0 }
camera { location <0, 2, -6> look_at <0, 0, 0> }
light_source { <4, 6, -5> color rgb 1 }
#declare I = 0;
#while (I < 60)
  sphere { <mod(I, 10) * 0.6 - 2.7, int(I / 10) * 0.5 - 1.2, 1 + clock>, 0.28
           pigment { rgb <mod(I, 3) / 2, mod(I, 5) / 4, 0.6> } finish { reflection 0.4 } }
  #declare I = I + 1;
#end
plane { y, -1.6 pigment { checker rgb 1 rgb 0.2 } finish { reflection 0.3 } }
"""
SLOW_INI = f"""Input_File_Name=scene.pov
Initial_Frame=1
Final_Frame={FRAMES}
Initial_Clock=0
Final_Clock=1
Width=160
Height=120
Antialias=on
Antialias_Threshold=0.05
"""


def slow_package(tmp: Path, chunk: int = 0) -> tuple[Path, Path]:
    """The scene folder and its package (with `chunk`: packed with --chunk)."""
    scene = tmp / "slow"
    scene.mkdir()
    (scene / "scene.pov").write_text(SLOW_POV)
    (scene / "scene.ini").write_text(SLOW_INI)
    pkg = tmp / "slow.tar.gz"
    r = run_cli("pack", str(scene / "scene.ini"), *(["--chunk", str(chunk)] if chunk else []), "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    return scene, pkg


def released_frames(client, url: str) -> dict[int, dict]:
    """The frames of the job with an attempt given back, each frame's whole record."""
    out = {}
    for f in client.frames(url):
        info = client.frame(f["url"])
        if any(h["outcome"] == "released" for h in info["history"]):
            out[f["frame"]] = info
    return out


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# -- pure logic ----------------------------------------------------------------------------
def test_the_unstarted_half_of_a_tail_is_given():
    held = list(range(1, 9))
    assert tail_to_release(held, set()) == [6, 7, 8]            # 1 rendering, 2..8 unstarted
    assert tail_to_release(held, {1, 2, 3}) == [7, 8]           # 4 rendering, 5..8 unstarted
    assert tail_to_release(held, {1, 2, 3, 4, 5, 6}) == []      # 7 rendering, only 8 left
    assert tail_to_release(held, set(held)) == []               # all written
    assert tail_to_release([], set()) == []


def test_a_measured_start_up_is_weighed_in():
    held = list(range(10))
    # frames of 1 s, a start-up of 0.3 s: the other renderer takes about half
    assert tail_to_release(held, set(), seconds_per_frame=1.0, startup=0.3) == [5, 6, 7, 8, 9]
    # frames of 0.1 s, a start-up of 0.5 s: it takes fewer, as it starts later
    assert tail_to_release(held, set(), seconds_per_frame=0.1, startup=0.5) == [8, 9]
    # a start-up longer than the whole tail: nothing is worth giving
    assert tail_to_release(held, set(), seconds_per_frame=0.1, startup=5.0) == []


def test_what_is_left_of_a_chunk_counts_the_frame_being_rendered_half(tmp_path):
    # A chunk's frames still to render, for the fair share of the next chunk (chunks.py): as
    # the renderer says (POV-Ray's "Rendering frame K of N"), the frame it is on counts half;
    # before it says anything, every frame held counts; given back or ended, nothing.
    from distren.backends.base import FrameTask
    from distren.backends.povray.backend import PovrayBackend
    from distren.scheduler import Lease
    from distren.server.runner import ChunkRun

    leases = [Lease(1, f, 1, "povray", {}, "0" * 64, 1, (), None) for f in (5, 6, 7, 8)]
    run = ChunkRun(None, leases, {one.frame: one for one in leases})
    run.task = FrameTask(settings={}, scene=tmp_path, frame=5, out=tmp_path, deps=tmp_path, timeout=60,
                         frames=(5, 6, 7, 8), control=run.control)
    povray = PovrayBackend()
    assert run.left(povray) == 4
    run.control.heard(b"Parsing...\nRendering frame 2 of 4\n")
    assert run.left(povray) == 2.5          # 5 written, 6 half done, 7 and 8 to do
    run.released.add(8)
    assert run.left(povray) == 1.5
    assert run.left(None) == 3               # a backend that does not say: all held count
    run.rendering = False
    assert run.left(povray) == 0


def test_the_frame_begun_stays_known_through_a_large_frames_progress_lines(tmp_path):
    # POV-Ray rewrites one line with carriage returns as it renders ("Rendered N of M pixels
    # (P%)"), some 50 KB a frame at 1280x960: the line that says which frame began must not
    # scroll out of what the server keeps of the output before the frame ends.
    from distren.backends.base import ChunkControl, FrameTask
    from distren.backends.povray.backend import PovrayBackend

    control = ChunkControl()
    task = FrameTask(settings={}, scene=tmp_path, frame=5, out=tmp_path, deps=tmp_path, timeout=60,
                     frames=(5, 6), control=control)
    progress = b"".join(b"Rendered %d of 1228800 pixels (%d%%)\r" % (n, n * 100 // 1228800)
                        for n in range(0, 1228800, 1024))
    output = b"Parsing\nRendering frame 1 of 2\n" + progress + b"\nRender Time: 2 s\nRendering frame 2 of 2\n"
    output += progress[: len(progress) * 9 // 10]   # frame 6, 90 % done
    for i in range(0, len(output), 65536):          # as a pipe hands it over
        control.heard(output[i:i + 65536])
    assert len(progress) > 40_000
    assert PovrayBackend().frame_begun(task, control.recent.decode()) == 6
    assert len(control.recent) < 1000 and b"Rendered 1107968 of 1228800" in control.recent   # the last update kept


# -- the scheduler -------------------------------------------------------------------------
def test_released_frames_are_ready_again_and_count_nothing(sched):  # noqa: F811
    job = add_job(sched, {f: [] for f in range(6)})
    first = sched.claim("B", ["povray"], 30)
    chunk = [first] + sched.claim_more(first, 5)
    assert [one.frame for one in chunk] == list(range(6))
    assert sched.split_candidates("C", ["povray"]) == [(job, "B")]
    assert sched.split_candidates("B", ["povray"]) == []          # a peer does not split its own chunk
    assert sched.split_candidates("C", ["blender"]) == []
    # a stale attempt and a frame leased to someone else are skipped
    got = sched.release(job, [(3, chunk[3].attempt + 1), (4, chunk[4].attempt), (5, chunk[5].attempt)], "B")
    assert got == [4, 5]
    assert sched.release(job, [(0, chunk[0].attempt)], "C") == []
    # asked again (an answer lost): what the same holder gave back under that attempt counts
    assert sched.release(job, [(4, chunk[4].attempt), (5, chunk[5].attempt)], "B") == [4, 5]
    assert sched.release(job, [(4, chunk[4].attempt)], "C") == []
    assert states(sched, job) == {0: "running", 1: "running", 2: "running", 3: "running", 4: "ready", 5: "ready"}
    assert sched.split_candidates("C", ["povray"]) == []           # frames are ready: nothing to split
    info = sched.frame(job, 4)
    assert [h["outcome"] for h in info["history"]] == ["released"] and info["failures"] == 0
    # given back again and again, a frame never fails for it (released counts as nothing)
    for _ in range(20):
        lease = sched.claim("C", ["povray"], 30)
        assert lease.frame == 4
        assert sched.release(job, [(4, lease.attempt)], "C") == [4]
    assert states(sched, job)[4] == "ready" and sched.frame(job, 4)["failures"] == 0
    with pytest.raises(Conflict):    # the holder's late result for a frame it gave back is refused
        sched.complete(job, 5, chunk[5].attempt, Blob("c" * 64, 5), "B", "", owner="B")


def test_split_candidates_skip_paused_and_blocked_jobs_and_small_holders(sched):  # noqa: F811
    job = add_job(sched, {f: [] for f in range(4)})
    first = sched.claim("B", ["povray"], 30)
    sched.claim_more(first, 1)                       # B holds 2 frames: too few to split
    other = sched.claim("local:me", ["povray"], 30)
    sched.claim_more(other, 1)                       # this server's slot holds 2
    assert sched.split_candidates("C", ["povray"]) == []
    job2 = add_job(sched, {f: [] for f in range(5)})
    lease = sched.claim("local:me", ["povray"], 30)
    assert lease.job == job2
    sched.claim_more(lease, 4)
    # this server's own slots split each other's chunks; a peer gets them too
    assert sched.split_candidates("local:me", ["povray"]) == [(job2, "local:me")]
    assert sched.split_candidates("C", ["povray"]) == [(job2, "local:me")]
    sched.pause(job2)
    assert sched.split_candidates("C", ["povray"]) == []
    sched.resume(job2)
    sched.conn.execute("INSERT INTO blocklist(job_id, renderer, since) VALUES (?, 'C', 0)", (job2,))
    assert sched.split_candidates("C", ["povray"]) == []
    assert sched.split_candidates("D", ["povray"]) == [(job2, "local:me")]
    assert sched.split_candidates("D", ["blender"]) == []          # nothing of it D could render
    sched.conn.execute("UPDATE frames SET lease_owner='worker:w' WHERE job_id=? AND state='running'", (job2,))
    assert sched.split_candidates("D", ["povray"]) == []           # a worker cannot be asked
    sched.conn.execute("UPDATE frames SET lease_owner='local:me' WHERE job_id=? AND state='running'", (job2,))
    sched.conn.execute("UPDATE jobs SET chunk=5 WHERE id=?", (job2,))   # the job's own <chunk>: kept whole
    assert sched.split_candidates("D", ["povray"]) == []
    assert job != job2


# -- real servers --------------------------------------------------------------------------
def check_bundle(client, url: str, scene: Path, tmp: Path, frames: list[int]) -> None:
    """The job's bundle holds every frame, and the frames given back render as POV-Ray renders
    them alone (pixels)."""
    bundle = tmp / "bundle.tar"
    client.download(url, bundle)
    with tarfile.open(bundle) as t:
        pngs = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".png")}
    assert len(pngs) == FRAMES, sorted(pngs)
    for frame in frames:
        mine = [data for name, data in pngs.items() if re.search(rf"\D0*{frame}\.png$", name)]
        assert len(mine) == 1, (frame, sorted(pngs))
        direct = povray_direct(scene, frame, tmp / f"direct-{frame}", extra=["+WT1"])
        assert png_pixels(mine[0]) == png_pixels(direct.read_bytes()), frame


def late_thief(farm, holder: str, thief: str, client, job_url: str):
    """The thief is drained (started, but taking nothing) until `holder` renders the job's
    frames after its first chunk as one long chunk (distren's own sizes: 2 frames before
    anything is measured, then the rest, one server rendering the job); then its drain ends
    and it finds nothing ready."""
    from conftest import wait_for

    def long_chunk():
        frames = client.frames(job_url)
        running = [f for f in frames if f["state"] == "running"]
        return len(running) >= FRAMES - 4 and all(f["frame"] > 2 for f in running)

    wait_for(long_chunk, 60, f"{holder} to lease the job's last {FRAMES - 2} frames as one chunk", every=0.02)
    farm.servers[thief].client().drain(False)


def check_split(client, job_url: str, holder_owner: str, thief: str, scene: Path, tmp: Path) -> None:
    """The job is done, the holder gave back a tail of its chunk, which the thief rendered;
    the holder's renderer stopped as it began the first frame it gave back; no frame was
    recorded twice or failed; the frames given back are POV-Ray's own."""
    info = client.wait(job_url, interval=0.2, timeout=180)
    assert info["state"] == "done" and info["frames"]["done"] == FRAMES, info
    given = released_frames(client, job_url)
    assert given, "no frame of the chunk was given back"
    for frame, one in given.items():
        history = one["history"]
        assert [h["outcome"] for h in history] == ["released", "done"], (frame, history)
        assert history[0]["renderer"] == holder_owner and one["failures"] == 0, (frame, history)
    # (the holder may take back a frame it gave, when it is free before the thief asks)
    assert thief in {one["rendered_by"] for one in given.values()}, given
    first, last = min(given), max(given)
    assert sorted(given) == list(range(first, last + 1)) and last == FRAMES, sorted(given)
    # a frame it kept: rendered in the same chunk, whose log shows it begin the first frame
    # it gave back and never end
    kept = client.frame(f"{job_url}/{first - 1}")
    assert [h["outcome"] for h in kept["history"]] == ["done"] and kept["history"][0]["renderer"] == holder_owner
    begun = re.findall(r"^Rendering frame (\d+) of (\d+)", kept["log"], re.M)
    k, n = (int(v) for v in begun[-1])
    assert FRAMES - n + k == first, (begun[-3:], first)   # K counts from 1 within the chunk 3..12
    assert "POV-Ray finished" not in kept["log"], kept["log"][-800:]
    check_bundle(client, job_url, scene, tmp, sorted({first, last}))


def split_for_a_late_thief(farm, tmp_path, holder: str, holder_owner: str, thief: str) -> None:
    """Start the farm (home "A") with the thief drained, submit the slow job to A, end the
    thief's drain once `holder` has its long chunk, and check the split (check_split), which
    the holder counted."""
    start(farm)
    farm.servers[thief].client().drain()
    scene, pkg = slow_package(tmp_path)
    client = farm.servers["A"].client()
    job = client.submit(pkg)
    late_thief(farm, holder, thief, client, job["url"])
    check_split(client, job["url"], holder_owner, thief, scene, tmp_path)
    assert metric(farm.servers[holder].url, "distren_chunk_splits_total") >= 1


def test_an_idle_peer_takes_the_tail_of_the_homes_chunk(farm, tmp_path):
    """A home with one slot renders its job as a chunk of 2, then one of the 10 frames left; a
    peer that starts then finds nothing to claim: the home splits its own chunk (in its
    process), the peer renders the tail."""
    farm.add("A", 1, ["B"])
    farm.add("B", 1, ["A"])
    split_for_a_late_thief(farm, tmp_path, "A", "local:A", "B")


def test_a_peer_left_without_work_takes_the_tail_of_another_peers_chunk(farm, tmp_path):
    """A home that renders nothing, a peer that renders the job (a chunk of 2, then one of the
    10 frames left) and one more peer that starts then: turned away, it is given the chunk's
    unstarted tail (the home asks the holder, `POST /peer/split`; the holder gives it back,
    `POST /peer/release`)."""
    farm.add("A", 0, ["B", "C"])
    farm.add("B", 1, ["A"])
    farm.add("C", 1, ["A"])
    split_for_a_late_thief(farm, tmp_path, "B", "B", "C")


def test_a_chunk_of_the_jobs_own_size_is_kept_whole(farm, tmp_path):
    """A job packed with --chunk keeps its chunks whole: the late peer renders nothing of it."""
    a = farm.add("A", 1, ["B"])
    farm.add("B", 1, ["A"])
    start(farm)
    farm.servers["B"].client().drain()
    _, pkg = slow_package(tmp_path, chunk=FRAMES)
    client = a.client()
    job = client.submit(pkg)
    from conftest import wait_for
    wait_for(lambda: all(f["state"] == "running" for f in client.frames(job["url"])), 60, "the chunk of 12")
    farm.servers["B"].client().drain(False)
    info = client.wait(job["url"], interval=0.2, timeout=180)
    assert info["state"] == "done", info
    assert not released_frames(client, job["url"])
    assert {f["rendered_by"] for f in client.frames(job["url"])} == {"A"}


def test_the_split_routes_check_their_input(farm, tmp_path):
    """POST /peer/release: 400 for a body that is not {"job", "frames": [[frame, attempt]]},
    frames not leased to the caller skipped; POST /peer/split: 400 for a bad job id, {} else."""
    a = farm.add("A", 0, ["B"])
    farm.start()
    secret = farm.secret.read_bytes().strip()
    _, pkg = slow_package(tmp_path, chunk=3)
    job = a.client().submit(pkg)
    jid = int(job["url"].rsplit("/", 1)[1])

    def post(path: str, data) -> httpx.Response:
        body = json.dumps(data).encode()
        return httpx.post(a.url + path, content=body, headers=signed(secret, "POST", path, body))

    lease = post("/api/v1/peer/claim", {"backends": ["povray"]}).json()
    for bad in ({}, {"job": jid}, {"job": jid, "frames": []}, {"job": jid, "frames": [[1]]},
                {"job": jid, "frames": [["1", 1]]}, {"job": True, "frames": [[1, 1]]},
                {"job": jid, "frames": [[1, -1]]}, {"job": jid, "frames": [[1, 1]] * 51}):
        r = post("/api/v1/peer/release", bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_job", (bad, r.text)
    r = post("/api/v1/peer/release", {"job": jid, "frames": [[lease["frame"], lease["attempt"] + 1], [5, 1]]})
    assert r.status_code == 200 and r.json() == {"released": []}
    r = post("/api/v1/peer/release", {"job": jid, "frames": [[lease["frame"], lease["attempt"]]]})
    assert r.status_code == 200 and r.json() == {"released": [lease["frame"]]}
    assert {f["frame"]: f["state"] for f in a.client().frames(job["url"])}[lease["frame"]] == "ready"
    for bad in ({}, {"job": "1"}, {"job": -1}, {"job": False}):
        assert post("/api/v1/peer/split", bad).status_code == 400, bad
    assert post("/api/v1/peer/split", {"job": jid}).json() == {}



def test_a_povray_chunk_stopped_mid_frame_keeps_the_frames_it_finished(tmp_path):
    """POV-Ray stopped in the middle of a frame (a split chunk's renderer, or a timeout) leaves
    that frame's `.pov-state` file behind; it is not an output: the frames it finished are
    done, not thrown away as outputs that cannot be told apart."""
    import asyncio

    from distren.backends.base import ChunkControl, FrameTask, find_backends

    backend = find_backends()["povray"]
    scene = tmp_path / "job"   # an extracted job folder, as the server makes it
    (scene / "_distren" / "out").mkdir(parents=True)
    (scene / "_distren" / "deps").mkdir()
    (scene / "scene.pov").write_text(SLOW_POV)
    (tmp_path / "out").mkdir()
    (tmp_path / "deps").mkdir()
    control = ChunkControl()
    settings = {"scene": "scene.pov", "width": "160", "height": "120", "antialias": "0.05",
                "initial-frame": "1", "final-frame": str(FRAMES)}
    task = FrameTask(settings=settings, scene=scene, frame=1, out=tmp_path / "out", deps=tmp_path / "deps",
                     timeout=120, frames=(1, 2, 3, 4), control=control)
    left: list[str] = []

    async def run():
        async def watch():
            while backend.frame_begun(task, control.recent.decode("utf-8", "replace")) != 2:
                await asyncio.sleep(0.01)
            for _ in range(100):   # until POV-Ray is tracing frame 2 (its state file written)
                left[:] = [p.name for p in task.out.iterdir() if p.name.endswith(".pov-state")]
                if left:
                    break
                await asyncio.sleep(0.01)
            control.whole_through = 1
            control.stop.set()

        watcher = asyncio.ensure_future(watch())
        results = await backend.render_chunk(task)
        watcher.cancel()
        return results

    results = asyncio.run(run())
    assert left, "POV-Ray wrote no state file in frame 2: the scene renders too fast to show it"
    assert results[1].ok, results[1].error
    assert [p.name for p in results[1].outputs] == ["scene01.png"], results[1].outputs
    assert all(not results[f].ok and not results[f].counts for f in (2, 3, 4)), results
    # the same stop without a frame known whole: the chunk's usual verdicts (as for a timeout)
    (tmp_path / "out2").mkdir()
    control2 = ChunkControl()
    control2.stop.set()   # killed before it even began
    assert not any(r.ok for r in asyncio.run(backend.render_chunk(
        FrameTask(settings=settings, scene=scene, frame=1, out=tmp_path / "out2", deps=tmp_path / "deps",
                  timeout=120, frames=(1, 2), control=control2))).values())
    assert (tmp_path / "out2").is_dir()


class LosingProxy:
    """A TCP proxy on a loopback port in front of a server that passes everything through but
    the answers to `POST /api/v1/peer/release`: the request reaches the server (which acts on
    it), then the connection is cut before its answer gets back, as a lost answer would be.
    `lose` answers are lost (then they pass)."""

    MARK = b"POST /api/v1/peer/release "

    def __init__(self, target_port: int, lose: int):
        import socket
        import threading

        self.target, self.lose, self.lost = target_port, lose, 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:   # the server is gone (the test ends)
                client.close()
                continue
            state = {"drop": False}
            threading.Thread(target=self._pipe, args=(client, upstream, state, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, state, False), daemon=True).start()

    def _pipe(self, src, dst, state: dict, to_server: bool) -> None:
        try:
            while data := src.recv(65536):
                if to_server and self.MARK in data:
                    with self.lock:
                        if self.lost < self.lose:
                            self.lost += 1
                            state["drop"] = True
                elif not to_server and state["drop"]:
                    break   # the answer to a release: cut, never delivered
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("lose", [1, 100])
def test_a_lost_answer_to_a_release_loses_no_frame(farm, tmp_path, lose):
    """The holder's `POST /peer/release` reaches the home, but its answer is lost: once (the
    holder asks again, and the home counts the frames it gave back already), or every time
    (the holder does not know: the frames render on as kept, and their leases, found gone at
    the next heartbeat, are only dropped). Either way the chunk's frames are not stopped or
    counted as failures, and the job ends with every frame rendered once."""
    a = farm.add("A", 0, ["B", "C"])
    b = farm.add("B", 1, [])
    farm.add("C", 1, ["A"])
    start(farm, "A")
    proxy = LosingProxy(a.port, lose)
    try:
        b.extra += ["--peer", f"A={proxy.url}"]
        start(farm, "B", "C")
        farm.servers["C"].client().drain()
        scene, pkg = slow_package(tmp_path)
        client = a.client()
        job = client.submit(pkg)
        late_thief(farm, "B", "C", client, job["url"])
        info = client.wait(job["url"], interval=0.2, timeout=180)
    finally:
        proxy.close()
    assert info["state"] == "done" and info["frames"]["done"] == FRAMES, info
    assert proxy.lost >= 1, "no release was asked for"
    for f in client.frames(job["url"]):
        history = client.frame(f["url"])["history"]
        outcomes = [h["outcome"] for h in history]
        assert outcomes.count("done") == 1 and "failed" not in outcomes and "expired" not in outcomes, (f, history)
        assert "interrupted" not in outcomes, (f["frame"], history)   # the chunk was not stopped
    if lose == 1:   # asked again: the holder learns that the home took them back after all
        given = released_frames(client, job["url"])
        assert given and "C" in {one["rendered_by"] for one in given.values()}, given
        assert "gave back frames" in b.log.read_text(), b.log.read_text()[-3000:]

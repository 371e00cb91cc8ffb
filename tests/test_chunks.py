"""Chunks: several consecutive frames of a job rendered by one renderer process (real POV-Ray,
real servers). The frames equal per-frame renders; each frame is still its own output, lease
and verdict; a frame that fails in a chunk fails alone; a cancelled or timed-out chunk leaves no
frame stuck and no output recorded twice. The chunk-size policy is tested as pure logic."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import ServerProcess, bundle_images, make_scene, renders_of, run_cli
from distren.chunks import FIRST_CHUNK, MAX_CHUNK, TARGET_SECONDS, FrameTimes, JobRenderers, chunk_size, split_times


def pack(ini: Path, out: Path, *extra: str) -> Path:
    r = run_cli("pack", str(ini), "-o", str(out), *extra)
    assert r.returncode == 0, r.stderr
    return out


def images_of(client, url: str, dest: Path) -> dict[str, tuple]:
    client.download(url, dest)
    return bundle_images(dest)


def chunk_runs(client, url: str) -> list[int]:
    """Per frame, how many frames the POV-Ray process that rendered it rendered (its log says
    "Rendering frame K of N"; a chunk's frames share one log)."""
    import re

    return [max(map(int, re.findall(r"Rendering frame \d+ of (\d+)", client.frame(f"{url}/{f['frame']}")["log"])))
            for f in client.frames(url)]


@pytest.fixture
def server(tmp_path):
    s = ServerProcess(tmp_path / "data", "alpha", 2).start()
    yield s
    s.stop()


def test_chunked_frames_equal_per_frame_frames(server, tmp_path):
    ini = make_scene(tmp_path / "scene", final=7)
    c = server.client()
    urls = {}
    for chunk in ("1", "4"):
        job = c.submit(pack(ini, tmp_path / f"job{chunk}.tar.gz", "--chunk", chunk))
        assert job["chunk"] == int(chunk)
        assert c.wait(job["url"], interval=0.1, timeout=120)["state"] == "done"
        urls[chunk] = job["url"]
    # one process per frame, and with --chunk 4 (2 slots, 8 frames) processes of 4 frames
    assert chunk_runs(c, urls["1"]) == [1] * 8
    assert chunk_runs(c, urls["4"]) == [4] * 8
    one = images_of(c, urls["1"], tmp_path / "one.tar")
    four = images_of(c, urls["4"], tmp_path / "four.tar")
    assert len(one) == 8 and one == four
    # each frame its own output, attempt and lease
    for f in c.frames(urls["4"]):
        info = c.frame(f"{urls['4']}/{f['frame']}")
        assert info["attempts"] == 1 and info["output"]["size"] > 0


def test_a_frame_that_fails_in_a_chunk_fails_alone(server, tmp_path):
    """POV-Ray stops the whole run at frame 3's #error: frames 0-1 come out of the chunk, frame
    2 (the last image written before the error, which might be incomplete) renders again, frame
    3 fails by itself (counted only where it is the frame the renderer stopped at), the frames
    after it render in a later chunk. The job ends failed with frame 3 its only failed frame."""
    ini = make_scene(tmp_path / "scene", final=7)
    pov = tmp_path / "scene" / "scene.pov"
    pov.write_text(pov.read_text() + '#if (frame_number = 3) #error "frame three is broken" #end\n')
    c = server.client()
    job = c.submit(pack(ini, tmp_path / "job.tar.gz", "--chunk", "8"))
    info = c.wait(job["url"], interval=0.1, timeout=180)
    assert info["state"] == "failed", info
    frames = {f["frame"]: c.frame(f"{job['url']}/{f['frame']}") for f in c.frames(job["url"])}
    assert [f for f, i in frames.items() if i["state"] != "done"] == [3]
    assert "three is broken" in frames[3]["log"]
    assert frames[3]["attempts"] == 3     # its own failures: max_failures
    assert frames[0]["attempts"] == 1 and frames[1]["attempts"] == 1
    assert frames[2]["attempts"] == 2    # again, alone: no failure of its own
    assert all(frames[f]["attempts"] == 2 for f in range(4, 8))
    images = images_of(c, job["url"], tmp_path / "b.tar")
    assert sorted(images) == [f"{f}/scene{f}.png" for f in range(8) if f != 3]


def test_a_cancelled_chunk_leaves_nothing_running_and_records_nothing(tmp_path):
    """Cancel while a chunk renders: its process dies, every frame of the job is cancelled,
    no output is recorded; a retry renders them all once."""
    s = ServerProcess(tmp_path / "data", "alpha", 1).start()
    try:
        ini = make_scene(tmp_path / "scene", final=5)
        text = ini.read_text().replace("Width=48", "Width=640").replace("Height=36", "Height=480")
        ini.write_text(text + "Antialias_Depth=9\nAntialias_Threshold=0.0\n")
        c = s.client()
        job = c.submit(pack(ini, tmp_path / "job.tar.gz", "--chunk", "6"))
        deadline = time.monotonic() + 60
        while c.job(job["url"])["frames"]["running"] < 6:
            assert time.monotonic() < deadline, c.job(job["url"])
            time.sleep(0.05)
        while not renders_of(tmp_path / "data"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        info = c.cancel(job["url"])
        assert info["state"] == "cancelled" and info["frames"]["cancelled"] == 6
        deadline = time.monotonic() + 10
        while renders_of(tmp_path / "data"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        assert all(c.frame(f"{job['url']}/{f}")["output"] is None for f in range(6))
        assert c.job(job["url"])["frames"]["cancelled"] == 6
    finally:
        s.stop()


def test_a_timed_out_chunk_leaves_no_frame_stuck(tmp_path):
    """Frame 2 never finishes (an endless loop while parsing): the chunk times out; the frames
    before it are done, frame 2 fails by its own timeouts, the frames after it render later.
    Every frame ends, and each done frame has one attempt that produced its output."""
    s = ServerProcess(tmp_path / "data", "alpha", 1, extra=["--max-failures", "2"]).start()
    try:
        ini = make_scene(tmp_path / "scene", final=4)
        pov = tmp_path / "scene" / "scene.pov"
        pov.write_text(pov.read_text() + "#if (frame_number = 2) #while (true) #end #end\n")
        c = s.client()
        job = c.submit(pack(ini, tmp_path / "job.tar.gz", "--chunk", "5", "--timeout", "2"))
        info = c.wait(job["url"], interval=0.2, timeout=180)
        assert info["state"] == "failed" and info["frames"]["done"] == 4, info
        frames = {f["frame"]: c.frame(f"{job['url']}/{f['frame']}") for f in c.frames(job["url"])}
        assert frames[2]["state"] == "failed" and "timed out" in frames[2]["error"]
        for f in (0, 1, 3, 4):
            assert frames[f]["state"] == "done" and frames[f]["output"] is not None
    finally:
        s.stop()


# -- the policy (pure logic) -----------------------------------------------------------------
def test_chunk_size_policy():
    kw = dict(requested=None, chunkable=True, ready=1000, slots=4)
    assert chunk_size(**{**kw, "chunkable": False}, seconds_per_frame=0.1) == 1
    assert chunk_size(**{**kw, "requested": 7}, seconds_per_frame=None) == 7
    assert chunk_size(**{**kw, "requested": 5000}, seconds_per_frame=None) == MAX_CHUNK
    assert chunk_size(**kw, seconds_per_frame=None) == FIRST_CHUNK          # nothing measured yet
    assert chunk_size(**kw, seconds_per_frame=TARGET_SECONDS / 8) == 8       # the target duration
    assert chunk_size(**kw, seconds_per_frame=TARGET_SECONDS * 3) == 1       # long frames: alone
    assert chunk_size(**kw, seconds_per_frame=1e-6) == MAX_CHUNK
    assert chunk_size(**{**kw, "ready": 10}, seconds_per_frame=0.01) == 3    # every slot gets work
    assert chunk_size(**{**kw, "ready": 1}, seconds_per_frame=None) == 1
    # the fair share counts the job's frames this server renders now: a render that starts
    # while another renders 10 frames takes its share of all 20, not half of the 10 left
    two = dict(requested=None, chunkable=True, slots=2)
    assert chunk_size(**two, ready=10, seconds_per_frame=0.01) == 5
    assert chunk_size(**two, ready=10, in_flight=10, seconds_per_frame=0.01) == 10
    assert chunk_size(**two, ready=3, in_flight=40, seconds_per_frame=0.01) == 3   # never more than ready
    # what is left of the chunks in flight counts, not their size: four frames left and the
    # other render on its last frame (half done) share as 2 and 2, not 3 and 1
    assert chunk_size(**two, ready=4, in_flight=0.5, seconds_per_frame=0.01) == 2
    assert chunk_size(**two, ready=4, in_flight=2, seconds_per_frame=0.01) == 3
    # two servers render the job: each takes its share of the farm's, not of its own slots'
    assert chunk_size(**two, ready=24, seconds_per_frame=0.01) == 12
    assert chunk_size(**two, ready=24, servers=2, seconds_per_frame=0.01) == 6
    assert chunk_size(**two, ready=8, in_flight=4, servers=2, seconds_per_frame=0.01) == 4


def test_job_renderers_count_who_leased_lately():
    seen = JobRenderers(window=30.0, keep_jobs=2)
    assert seen.count(1, 0.0) == 1                      # nobody yet: the one asking
    seen.seen(1, "local:alpha", 0.0)
    seen.seen(1, "beta", 10.0)
    seen.seen(1, "beta", 20.0)
    assert seen.count(1, 25.0) == 2
    assert seen.count(1, 35.0) == 1                     # alpha took nothing for 35 s
    seen.seen(2, "beta", 40.0)
    seen.seen(3, "beta", 40.0)                          # at most keep_jobs jobs: job 1 dropped
    assert seen.count(1, 40.0) == 1 and seen.count(3, 40.0) == 1


def test_a_chunk_splits_into_start_up_and_time_per_frame():
    # a renderer that starts in 2.5 s and renders a frame in 0.2 s: frames done at 2.7, 2.9, 3.1
    per, startup = split_times(100.0, 3.2, [102.7, 102.9, 103.1], None)
    assert per == pytest.approx(0.2) and startup == pytest.approx(2.5)
    # one frame: the start-up measured before is taken off
    per, startup = split_times(100.0, 2.8, [102.8], 2.5)
    assert per == pytest.approx(0.3) and startup is None
    # times not known (or out of order): the old average, start-up included
    assert split_times(0.0, 4.0, [None, None], None) == (2.0, None)
    assert split_times(0.0, 4.0, [3.0, 2.0], None) == (2.0, None)
    # the sizes that follow: a slow start-up no longer makes the frames look slow
    t = FrameTimes(weight=0.5)
    t.add(("a", 1), 3.2, 3, backend="blender", started=100.0, finished=[102.7, 102.9, 103.1])
    assert t.get(("a", 1)) == pytest.approx(0.2) and t.startup("blender") == pytest.approx(2.5)
    assert chunk_size(requested=None, chunkable=True, seconds_per_frame=t.get(("a", 1)), ready=1000,
                      slots=2) == MAX_CHUNK
    t.add(("a", 2), 2.9, 2, backend="blender")          # times not known: start-up taken off
    assert t.get(("a", 2)) == pytest.approx(0.2)


def test_frame_times_average_per_frame_and_stay_bounded():
    t = FrameTimes(weight=0.5)
    t.add(("a", 1), 8.0, 4)
    assert t.get(("a", 1)) == 2.0
    t.add(("a", 1), 4.0, 1)
    assert t.get(("a", 1)) == 3.0
    for job in range(2000):
        t.add(("b", job), 1.0, 1)
    assert t.get(("a", 1)) is None and t.get(("b", 1999)) == 1.0


@pytest.mark.parametrize("value, ok", [("1", True), ("1000", True), ("0", False), ("1001", False),
                                       ("-3", False), ("two", False), ("", False)])
def test_chunk_element_is_checked(value, ok):
    from distren.errors import BadJobXML
    from distren.job.spec import parse_job_xml

    xml = (f'<distrenjob><name>j</name><chunk>{value}</chunk><backend name="povray"><scene>s.pov</scene>'
           '</backend><frames><range first="0" last="3"/></frames></distrenjob>').encode()
    if ok:
        spec = parse_job_xml(xml, "alpha", 1)
        assert spec.chunk == int(value)
        assert parse_job_xml(spec.to_xml(), "alpha", 2).chunk == int(value)     # written back the same
    else:
        with pytest.raises(BadJobXML):
            parse_job_xml(xml, "alpha", 1)


def test_pack_refuses_a_bad_chunk(tmp_path):
    ini = make_scene(tmp_path / "scene", final=3)
    r = run_cli("pack", str(ini), "-o", str(tmp_path / "j.tar.gz"), "--chunk", "0")
    assert r.returncode != 0 and "--chunk" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_outputs_that_belong_to_no_frame_make_the_frames_render_one_by_one(server, tmp_path):
    """The scene writes a file of its own into the output folder (the same name every frame):
    in a chunk it belongs to no frame, so nothing is guessed: the chunk's frames go back
    (uncounted) and the job's frames render one by one, each with its file."""
    ini = make_scene(tmp_path / "scene", final=3)
    pov = tmp_path / "scene" / "scene.pov"
    pov.write_text(pov.read_text() + '#fopen Note "_distren/out/note.txt" write\n#write (Note, frame_number, "\\n")\n'
                   "#fclose Note\n")
    c = server.client()
    job = c.submit(pack(ini, tmp_path / "job.tar.gz", "--chunk", "4"))
    assert c.wait(job["url"], interval=0.1, timeout=120)["state"] == "done"
    frames = {f["frame"]: c.frame(f"{job['url']}/{f['frame']}") for f in c.frames(job["url"])}
    assert all(i["attempts"] == 2 for i in frames.values()), {f: i["attempts"] for f, i in frames.items()}
    assert chunk_runs(c, job["url"]) == [1] * 4
    c.download(job["url"], tmp_path / "b.tar")
    import tarfile

    with tarfile.open(tmp_path / "b.tar") as t:
        names = sorted(m.name for m in t.getmembers() if m.isfile())
        notes = {n: t.extractfile(n).read().strip() for n in names if n.endswith("note.txt")}
    assert names == sorted([f"{f}/scene{f}.png" for f in range(4)] + [f"{f}/note.txt" for f in range(4)])
    assert notes == {f"{f}/note.txt": str(f).encode() for f in range(4)}

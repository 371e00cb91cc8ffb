"""The ffmpeg encode frame and the POV-Ray radiosity pre-pass, on real renders."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import make_scene, run_cli
from distren.backends.base import FrameTask, RenderLimits
from distren.backends.ffmpeg import FfmpegBackend
from distren.backends.sandbox import prepare_scene
from distren.backends.povray import PovrayBackend
from distren.errors import BadSettings

RAD_POV = """#version 3.7;
global_settings { assumed_gamma 1.0
  radiosity { pretrace_start 0.08 pretrace_end 0.04 count 35 nearest_count 5 error_bound 1.8 recursion_limit 1 } }
camera { location <0, 2, -5> look_at <0, 0, 0> }
light_source { <2, 4, -3> color rgb 1 }
sphere { <sin(clock * 2 * pi), 0, 0>, 1 pigment { rgb <1, 0.5, 0.2> } }
plane { y, -1 pigment { rgb 0.8 } }
"""


def probe(video: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames,width,height,codec_name", "-of", "json", str(video)],
        capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"][0]


def test_video_has_every_frame_at_an_even_size(server, tmp_path):
    ini = make_scene(tmp_path / "scene", final=6)
    pkg = tmp_path / "v.tar.gz"
    # 47x35: odd both ways, which libx264 with yuv420p refuses unless padded
    r = run_cli("pack", str(ini), "--width", "47", "--height", "35", "--video", "--fps", "12", "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    client = server.client()
    job = client.submit(pkg)
    info = client.wait(job["url"], interval=0.2, timeout=180)
    assert info["state"] == "done", client.frame(f"{job['url']}/7")
    encode = client.frame(f"{job['url']}/7")
    assert encode["backend"] == "ffmpeg"
    assert [d["url"] for d in encode["depends"]] == [f"{job['url']}/{i}" for i in range(7)]
    out = tmp_path / "v.tar"
    client.download(f"{job['url']}/7", out)
    with tarfile.open(out) as t:
        assert t.getnames() == ["video.mp4"]
        t.extractall(tmp_path / "v", filter="data")
    stream = probe(tmp_path / "v" / "video.mp4")
    assert stream == {"codec_name": "h264", "width": 48, "height": 36, "nb_read_frames": "7"}


def test_render_writes_the_video_beside_the_frames(tmp_path):
    ini = make_scene(tmp_path / "scene", final=3)
    out = tmp_path / "frames"
    r = run_cli("render", str(ini), "--video", "--codec", "vp9", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"scene{i}.png" for i in range(4)] + ["video.webm"]
    assert probe(out / "video.webm")["nb_read_frames"] == "4"


def encode_task(tmp_path: Path, images: dict[int, list[str]]) -> FrameTask:
    deps = tmp_path / "deps"
    for frame, names in images.items():
        folder = deps / "alpha" / "3" / str(frame)
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"\x89PNG fake")
    (tmp_path / "out").mkdir()
    return FrameTask(settings={}, scene=tmp_path, frame=99, out=tmp_path / "out", deps=deps,
                     timeout=10, home="alpha", job=3,
                     depends=tuple(f"distren://alpha/3/{f}" for f in sorted(images)))


def test_encode_refuses_a_missing_input_frame(tmp_path):
    task = encode_task(tmp_path, {0: ["a0.png"], 1: [], 2: ["a2.png"]})
    result = __import__("asyncio").run(FfmpegBackend().render(task))
    assert not result.ok and result.error == "input frame distren://alpha/3/1 has no image to encode"


def test_encode_refuses_ambiguous_and_mixed_inputs(tmp_path):
    task = encode_task(tmp_path / "a", {0: ["a.png", "b.png"]})
    with pytest.raises(Exception, match="has 2 images"):
        FfmpegBackend().prepare(task)
    task = encode_task(tmp_path / "b", {0: ["a.png"], 1: ["b.jpg"]})
    with pytest.raises(Exception, match="mix image types"):
        FfmpegBackend().prepare(task)


def test_the_video_is_counted_in_the_sandbox(tmp_path):
    """ffprobe counts the video's frames in the frame's sandbox, under the render's limits. The
    video is the output of ffmpeg fed with the job's images: a "video" that is an HLS playlist
    naming a host file (as an ffmpeg subverted by a hostile image could write) makes an
    ffprobe on the host read that file, and count its frames as the video's."""
    host = tmp_path / "host"
    host.mkdir()
    task = encode_task(tmp_path / "job", {0: ["a.png"], 1: ["b.png"], 2: ["c.png"]})
    prepare_scene(task.scene)  # as intake does
    for path in (host / "secret.ts", task.out / "real.mp4"):
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=16x12:r=10", "-frames:v", "3",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
    playlist = task.out / "video.mp4"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{host / 'secret.ts'}\n#EXT-X-ENDLIST\n")
    assert probe(playlist)["nb_read_frames"] == "3"  # on the host, the playlist reads the host's file
    backend = FfmpegBackend()
    assert backend.verify(task, [task.out / "real.mp4"]) is None
    problem = backend.verify(task, [playlist])
    assert problem is not None and problem.startswith("cannot count the frames of video.mp4"), problem
    # the render's limits hold for ffprobe too: an address space too small for it stops it
    small = dataclasses.replace(task, limits=RenderLimits(memory=16 * 1024**2))
    problem = backend.verify(small, [task.out / "real.mp4"])
    assert problem is not None and problem.startswith("cannot count the frames of real.mp4"), problem


@pytest.mark.parametrize("settings, word", [
    ({"codec": "mpeg2; rm -rf /"}, "codec"), ({"fps": "0"}, "fps"), ({"fps": "24 -i /etc/passwd"}, "fps"),
    ({"crf": "-1"}, "crf"), ({"name": "../x"}, "name"), ({"bitrate": "1M"}, "bitrate"),
])
def test_ffmpeg_settings_are_checked(settings, word, tmp_path):
    with pytest.raises(BadSettings, match=word):
        FfmpegBackend().check(settings, tmp_path, [0])


def samples_calculated(log: str) -> int:
    return int(re.search(r"Radiosity samples calculated:\s+(\d+)", log).group(1))


def test_radiosity_prepass_frames_load_the_saved_file(server, tmp_path):
    scene = tmp_path / "rad"
    scene.mkdir()
    (scene / "rad.pov").write_text(RAD_POV)
    pkg = tmp_path / "rad.tar.gz"
    r = run_cli("pack", str(scene / "rad.pov"), "--frames", "0-3", "--width", "64", "--height", "48",
                "--radiosity-prepass", "-o", str(pkg))
    assert r.returncode == 0, r.stderr
    client = server.client()
    job = client.submit(pkg)
    assert client.wait(job["url"], interval=0.2, timeout=180)["state"] == "done"
    prepass = client.frame(f"{job['url']}/0")
    out = tmp_path / "f0.tar"
    client.download(f"{job['url']}/0", out)
    with tarfile.open(out) as t:
        assert sorted(t.getnames()) == ["rad0.png", "radiosity.rad"]
    assert "Radiosity_To_File" not in prepass["log"]  # (options are not echoed; the file is the proof)
    for f in (1, 2, 3):
        frame = client.frame(f"{job['url']}/{f}")
        assert frame["depends"] == [{"url": f"{job['url']}/0", "state": "done"}]
        # with the pre-pass data loaded, POV-Ray computes fewer samples than on its own
        alone = subprocess.run(["povray", "rad.pov", "+W64", "+H48", "+KFI0", "+KFF3", f"+SF{f}", f"+EF{f}",
                                "-D", f"+O{tmp_path}/alone.png"], cwd=scene, capture_output=True, text=True)
        assert samples_calculated(frame["log"]) < samples_calculated(alone.stderr), f


def test_radiosity_file_that_did_not_arrive_fails_the_frame(tmp_path):
    (tmp_path / "rad.pov").write_text(RAD_POV)
    deps = tmp_path / "deps" / "alpha" / "1" / "0"
    deps.mkdir(parents=True)
    (tmp_path / "out").mkdir()
    task = FrameTask(settings={"scene": "rad.pov", "initial-frame": "0", "final-frame": "3", "radiosity-prepass": "0"},
                     scene=tmp_path, frame=2, out=tmp_path / "out", deps=tmp_path / "deps",
                     timeout=30, home="alpha", job=1, depends=("distren://alpha/1/0",))
    result = __import__("asyncio").run(PovrayBackend().render(task))
    assert not result.ok and "radiosity.rad of pre-pass frame 0 did not arrive" in result.error


def test_radiosity_prepass_without_radiosity_fails_the_prepass(server, tmp_path):
    ini = make_scene(tmp_path / "plain", final=2)
    pkg = tmp_path / "p.tar.gz"
    assert run_cli("pack", str(ini), "--radiosity-prepass", "-o", str(pkg)).returncode == 0
    s = server.client()
    job = s.submit(pkg)
    info = s.wait(job["url"], interval=0.2, timeout=120)
    assert info["state"] == "failed"
    assert "wrote no radiosity.rad" in s.frame(f"{job['url']}/0")["error"]
    assert s.frame(f"{job['url']}/1")["error"] == f"dependency {job['url']}/0 failed"


def test_radiosity_scenes_render_with_one_thread_so_every_render_of_a_frame_is_the_same(tmp_path):
    """POV-Ray's radiosity differs from render to render with several threads (by a few
    levels); distren renders scenes that use it with one thread, so a frame is the same image
    whether rendered alone, in a chunk, on a peer or again after a retry. Scenes without
    radiosity keep every thread they are given."""
    import asyncio

    from conftest import pixels
    from distren.backends.povray.backend import uses_radiosity

    from distren.backends.sandbox import prepare_scene

    rad, plain = tmp_path / "rad", tmp_path / "plain"
    rad.mkdir()
    prepare_scene(rad)
    (rad / "rad.pov").write_text(RAD_POV.replace("radiosity {", "#include \"light.inc\"\n  radiosity {"))
    (rad / "light.inc").write_text("// nothing but a comment\n")
    make_scene(plain, final=3)
    assert uses_radiosity(rad) and not uses_radiosity(plain)
    settings = {"scene": "rad.pov", "width": "120", "height": "90", "initial-frame": "0", "final-frame": "3"}

    def task(frame: int, n: int, frames=()) -> FrameTask:
        out = tmp_path / f"out-{frame}-{n}"
        out.mkdir()
        return FrameTask(settings=settings, scene=rad, frame=frame, out=out, deps=tmp_path, timeout=120,
                         threads=2, frames=frames)

    assert "Work_Threads=1" in PovrayBackend().command(task(1, 0))
    plain_task = FrameTask(settings={"scene": "scene.pov", "initial-frame": "0", "final-frame": "3"}, scene=plain,
                           frame=1, out=tmp_path, deps=tmp_path, timeout=60, threads=2)
    assert "Work_Threads=2" in PovrayBackend().command(plain_task)
    renders = [asyncio.run(PovrayBackend().render(task(1, n))) for n in (1, 2)]
    chunk = asyncio.run(PovrayBackend().render_chunk(task(0, 3, frames=(0, 1, 2))))
    assert all(r.ok for r in renders) and chunk[1].ok, [(r.error, r.log[-500:]) for r in renders]
    images = [r.outputs[0] for r in renders] + [chunk[1].outputs[0]]
    assert pixels(images[0]) == pixels(images[1]) == pixels(images[2])

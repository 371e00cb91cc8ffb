"""A third-party backend adds packing and chunking without touching distren.

tests/plugins/toy holds what a plug-in would ship: `toyrender` (a small renderer program:
reads a scene file with includes and a palette, writes one PNG per frame of a range, in one
run) and `distren_toy.py` (its backend, registered through the `distren.backends` entry point
by the .dist-info beside it). The backend contract (tests/test_backend_contract.py) runs over
it too. Here: `distren pack` and `distren render` find it by the scene's suffix, with its own
option; a real server renders its frames in chunks, identical to frames rendered one by one
and to the program run by hand."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

from conftest import TOY_ENV, TOY_PLUGIN, run_cli

SCENE = """# a toy scene: two discs cross a striped sky
size 20 14
frames 1 6
background 0 0 60
include "parts/discs.toy"
palette "colors.txt"
"""
DISCS = "disc 2 4 3 255 200 0 3 0\ndisc 18 10 4 0 220 120 -2 -1\n"
COLORS = "30 30 90\n60 60 140\n90 90 200\n"


def write_scene(folder: Path) -> Path:
    (folder / "parts").mkdir(parents=True)
    (folder / "scene.toy").write_text(SCENE)
    (folder / "parts" / "discs.toy").write_text(DISCS)
    (folder / "colors.txt").write_text(COLORS)
    (folder / "notes.txt").write_text("not part of the scene\n")
    return folder / "scene.toy"


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.suffix == ".png"}


def test_pack_finds_the_plugin_by_suffix_and_packs_what_the_scene_uses(tmp_path):
    scene = write_scene(tmp_path / "scene")
    pkg = tmp_path / "toy.tar.gz"
    r = run_cli("pack", str(scene), "--supersample", "2", "--chunk", "3", "-o", str(pkg), "--json", env=TOY_ENV)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == [1, 2, 3, 4, 5, 6]   # the scene's own `frames` line
    with tarfile.open(pkg) as tar:
        assert sorted(tar.getnames()) == ["colors.txt", "distrenjob.xml", "parts/discs.toy", "scene.toy"]
        xml = tar.extractfile("distrenjob.xml").read().decode()
    assert '<backend name="toy">' in xml and "supersample" in xml and "<chunk>3</chunk>" in xml


def test_pack_refuses_another_backends_option_an_unknown_suffix_and_a_missing_plugin(tmp_path):
    scene = write_scene(tmp_path / "scene")
    r = run_cli("pack", str(scene), "--antialias", "0.3", "-o", str(tmp_path / "a.tar.gz"), env=TOY_ENV)
    assert r.returncode == 2 and "--antialias: not an option of the toy backend" in r.stderr
    r = run_cli("pack", str(tmp_path / "scene" / "notes.txt"), env=TOY_ENV)
    assert r.returncode == 2 and "no backend packs .txt files" in r.stderr and ".toy (toy)" in r.stderr
    r = run_cli("pack", str(scene))                     # the plug-in is not installed here
    assert r.returncode == 2 and "no backend packs .toy files" in r.stderr
    assert not (tmp_path / "a.tar.gz").exists()


def test_a_real_server_renders_the_plugins_chunks_like_single_frames_and_like_the_program(tmp_path, server_factory):
    scene = write_scene(tmp_path / "scene")
    server = server_factory(slots=2, env=TOY_ENV)
    client = server.client()
    out = {}
    for chunk in (3, 1):
        pkg = tmp_path / f"chunk{chunk}.tar.gz"
        r = run_cli("pack", str(scene), "--supersample", "2", "--chunk", str(chunk), "-o", str(pkg), env=TOY_ENV)
        assert r.returncode == 0, r.stderr
        job = client.wait(client.submit(pkg)["url"], interval=0.1)
        assert job["state"] == "done", job
        logs = [client.frame(f["url"])["log"] for f in client.frames(job["url"])]
        runs = {tuple(line for line in log.splitlines() if line.startswith("frame ")) for log in logs}
        if chunk == 3:   # each renderer run rendered three frames, each recorded as its own frame
            assert runs == {("frame 1", "frame 2", "frame 3"), ("frame 4", "frame 5", "frame 6")}, logs
        else:
            assert runs == {(f"frame {f}",) for f in range(1, 7)}
        bundle = tmp_path / f"bundle{chunk}.tar"
        client.download(job["url"], bundle)
        folder = tmp_path / f"frames{chunk}"
        with tarfile.open(bundle) as tar:
            assert sorted(tar.getnames()) == [f"{f}/toy_{f:06d}.png" for f in range(1, 7)]
            tar.extractall(folder, filter="data")
        out[chunk] = {name: digest for sub in sorted(folder.iterdir()) for name, digest in digests(sub).items()}
    assert out[3] == out[1] and len(out[3]) == 6
    # the program run by hand, one frame a run, outside any sandbox
    direct = tmp_path / "direct"
    direct.mkdir()
    for frame in range(1, 7):
        subprocess.run([str(TOY_PLUGIN / "toyrender"), str(scene), "--first", str(frame), "--last", str(frame),
                        "--out", str(direct), "--supersample", "2"], check=True, capture_output=True)
    assert digests(direct) == out[1]
    assert len(set(out[1].values())) == 6           # the discs move: every frame differs


def test_render_command_uses_the_plugin_end_to_end(tmp_path):
    scene = write_scene(tmp_path / "scene")
    r = run_cli("render", str(scene), "--frames", "2-4", "-o", str(tmp_path / "out"), env=TOY_ENV)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"toy_{f:06d}.png" for f in (2, 3, 4)]


def test_a_peer_renders_the_homes_frames_in_chunks(tmp_path, farm):
    """Chunks across servers: a home that renders nothing, a peer that leases a frame and then,
    in a second request, the frames after it (`POST /peer/leases/.../more`), renders them in one
    run, and reports each frame on its own; the images are those of single-frame runs."""
    scene = write_scene(tmp_path / "scene")
    farm.add("home", 0, ["peer"], env=TOY_ENV)
    farm.add("peer", 1, ["home"], env=TOY_ENV)
    farm.start()
    pkg = tmp_path / "toy.tar.gz"
    assert run_cli("pack", str(scene), "--chunk", "3", "-o", str(pkg), env=TOY_ENV).returncode == 0
    client = farm.servers["home"].client()
    job = client.wait(client.submit(pkg)["url"], interval=0.1, timeout=120)
    assert job["state"] == "done", job
    frames = [client.frame(f["url"]) for f in client.frames(job["url"])]
    assert {f["rendered_by"] for f in frames} == {"peer"}
    runs = {tuple(line for line in f["log"].splitlines() if line.startswith("frame ")) for f in frames}
    assert runs == {("frame 1", "frame 2", "frame 3"), ("frame 4", "frame 5", "frame 6")}, runs
    bundle = tmp_path / "bundle.tar"
    client.download(job["url"], bundle)
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path / "got", filter="data")
    got = {name: d for sub in (tmp_path / "got").iterdir() for name, d in digests(sub).items()}
    direct = tmp_path / "direct"
    direct.mkdir()
    for frame in range(1, 7):
        subprocess.run([str(TOY_PLUGIN / "toyrender"), str(scene), "--first", str(frame), "--last", str(frame),
                        "--out", str(direct)], check=True, capture_output=True)
    assert digests(direct) == got and len(got) == 6

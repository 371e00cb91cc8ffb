"""The Blender backend and `pack_blender`, on real Blender: packages are made from .blend files
that Blender itself writes at test time, rendered by a `distren serve` process in the sandbox,
and compared with Blender's own direct renders of the same scene."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import pixels
from distren.backends.blender.backend import DENOISE_MESSAGE, MAX_FRAME, BlenderBackend, frame_argv, plan
from distren.client import ClientError
from distren.errors import BadSettings, PackError
from distren.backends.blender.pack import inspect_blend, pack_blender
from distren.tarballs import write_tar

pytestmark = pytest.mark.skipif(shutil.which("blender") is None or shutil.which("bwrap") is None,
                                reason="needs Blender and bubblewrap")

AUTORUN_TOKEN = "DISTREN-AUTORUN-RAN"
DRIVER_TOKEN = "DISTREN-DRIVER-RAN"

# Run by Blender (one process for every test file): argv[-1] is a JSON object naming the folder
# and the marker path of the auto-run scene.
MAKE_SCENES = r'''
import bpy, json, sys
spec = json.loads(sys.argv[-1])
root = spec["root"]

def scene_with_texture(texture):
    """The factory scene (cube, light, camera); the cube moves from frame 1 to 3 and wears the
    image `texture` (a path as stored in the file)."""
    bpy.ops.wm.read_factory_settings(use_empty=False)
    scene = bpy.context.scene
    cube = bpy.data.objects["Cube"]
    cube.location = (-1.5, 0, 0)
    cube.keyframe_insert("location", frame=1)
    cube.location = (1.5, 0, 0.5)
    cube.keyframe_insert("location", frame=3)
    scene.frame_start, scene.frame_end = 1, 3
    if texture is not None:
        image = bpy.data.images.new("Wood", 4, 4)
        image.source = "FILE"
        image.filepath = texture
        material = bpy.data.materials.new("Wood")
        material.use_nodes = True
        nodes = material.node_tree.nodes
        node = nodes.new("ShaderNodeTexImage")
        node.image = image
        material.node_tree.links.new(node.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
        cube.data.materials.clear()
        cube.data.materials.append(material)
    scene.display.shading.color_type = "TEXTURE"
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    scene.render.resolution_percentage = 50
    scene.cycles.samples = 64
    return scene

def save(path):
    bpy.ops.wm.save_as_mainfile(filepath=path, relative_remap=False, check_existing=False)

# the scene as a user saved it: Eevee, 64x48 at 50 %, Cycles denoising on (the default)
scene = scene_with_texture("//textures/wood.png")
scene.render.engine = "BLENDER_EEVEE"
save(root + "/scene/scene.blend")
# the same scene saved with the settings the jobs ask for, for Blender's own renders
scene.render.resolution_x, scene.render.resolution_y = 32, 24
scene.render.resolution_percentage = 100
scene.render.engine = "BLENDER_WORKBENCH"
save(root + "/scene/ref_wb.blend")
scene.render.engine = "CYCLES"
scene.cycles.samples = 4
scene.cycles.use_denoising = False
save(root + "/scene/ref_cycles.blend")

scene_with_texture("//textures/gone.png")
save(root + "/missing/missing.blend")
scene_with_texture(root + "/elsewhere/sky.png")
save(root + "/outside/outside.blend")
# a texture inside the folder, but stored as an absolute path
scene_with_texture(root + "/scene/textures/wood.png")
save(root + "/scene/absolute.blend")

# a scene with a registered text block (runs on load when auto-run is on) and a driver with a
# Python expression: each leaves a marker file and prints a token
scene = scene_with_texture(None)
scene.render.engine = "BLENDER_WORKBENCH"
scene.render.resolution_percentage = 100
marker = spec["marker"]
text = bpy.data.texts.new("autorun.py")
text.write("print(%r, flush=True)\nopen(%r, 'w').write('ran')\n" % (%TOKEN%, marker))
text.use_module = True
driver = bpy.data.objects["Light"].driver_add("location", 2).driver
driver.type = "SCRIPTED"
driver.expression = "print(%r) or __import__('pathlib').Path(%r).touch() or 3.0" % (%DRIVER%, marker + ".driver")
# and a compositor File Output node that writes to an absolute path outside everything
scene.use_nodes = True
tree = scene.node_tree
node = tree.nodes.new("CompositorNodeOutputFile")
node.name = "Passes"
node.base_path = spec["escape"] + "/"
tree.links.new(tree.nodes["Render Layers"].outputs["Image"], node.inputs[0])
save(root + "/auto/auto.blend")
'''.replace("%TOKEN%", repr(AUTORUN_TOKEN)).replace("%DRIVER%", repr(DRIVER_TOKEN))


@pytest.fixture(scope="module")
def blends(tmp_path_factory) -> Path:
    """Every test scene, written by one Blender process."""
    root = tmp_path_factory.mktemp("blends")
    for sub in ("scene/textures", "missing/textures", "outside", "elsewhere", "auto"):
        (root / sub).mkdir(parents=True)
    texture = Image.new("RGB", (4, 4), (200, 40, 20))
    texture.putpixel((1, 1), (20, 200, 40))
    texture.save(root / "scene" / "textures" / "wood.png")
    texture.save(root / "elsewhere" / "sky.png")
    spec = {"root": str(root), "marker": str(root / "autorun-marker"), "escape": str(root / "escape")}
    proc = subprocess.run(["blender", "-b", "-noaudio", "--factory-startup", "--python-exit-code", "1",
                           "--python-expr", MAKE_SCENES, "--", json.dumps(spec)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def blender_direct(blend: Path, frame: int, out: Path) -> Path:
    """Render one frame with Blender itself, outside distren and its sandbox."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    subprocess.run(["blender", "-b", "-noaudio", "--factory-startup", str(blend), "--disable-autoexec",
                    "-t", "1", "-o", f"{out}/direct_####", "-F", "PNG", "-f", str(frame)],
                   check=True, capture_output=True, timeout=120)
    new = sorted(set(out.iterdir()) - before)
    assert len(new) == 1, new
    return new[0]


def max_difference(a: Path, b: Path) -> int:
    """The largest difference of one channel of one pixel between two images of one size."""
    (size_a, mode_a, data_a), (size_b, mode_b, data_b) = pixels(a), pixels(b)
    assert (size_a, mode_a) == (size_b, mode_b)
    return max((abs(x - y) for x, y in zip(data_a, data_b)), default=0)


def render_job(server, package: Path, tmp_path: Path) -> tuple[dict, dict[int, dict], Path]:
    """Submit a package, wait for it, and unpack its bundle. Returns (job, frames by id, the
    bundle's folder)."""
    client = server.client()
    job = client.submit(package)
    info = client.wait(job["url"], interval=0.2, timeout=180)
    frames = {f["frame"]: client.frame(f"{job['url']}/{f['frame']}") for f in client.frames(job["url"])}
    folder = tmp_path / f"bundle-{job['id']}"
    folder.mkdir()
    if any(f["state"] == "done" for f in frames.values()):
        bundle = tmp_path / f"bundle-{job['id']}.tar"
        client.download(job["url"], bundle)
        with tarfile.open(bundle) as t:
            t.extractall(folder, filter="data")
    return info, frames, folder


def assert_matches_direct(folder: Path, names: dict[int, str], reference: Path, tmp_path: Path) -> None:
    """Each farm frame equals Blender's direct render of `reference`, within the difference
    between two direct renders of the first frame (measured, normally zero)."""
    first = min(names)
    a = blender_direct(reference, first, tmp_path / "direct-a")
    b = blender_direct(reference, first, tmp_path / "direct-b")
    noise = max_difference(a, b)
    for frame, name in names.items():
        direct = a if frame == first else blender_direct(reference, frame, tmp_path / f"direct-{frame}")
        farm = folder / str(frame) / name
        if noise == 0:
            assert pixels(farm) == pixels(direct), f"frame {frame} differs from Blender's own render"
        else:
            assert max_difference(farm, direct) <= noise, f"frame {frame}: more than Blender's own noise {noise}"
    frames = sorted(names)
    assert pixels(folder / str(frames[0]) / names[frames[0]]) != pixels(folder / str(frames[-1]) / names[frames[-1]])
    assert shows_texture(folder / str(frames[0]) / names[frames[0]])


def shows_texture(path: Path) -> bool:
    """Whether the red texture is visible (a missing image renders magenta, no texture grey)."""
    with Image.open(path) as im:
        data = im.convert("RGB").tobytes()
    return any(r > g + 60 and r > b + 30 for r, g, b in zip(data[0::3], data[1::3], data[2::3]))


def shows_missing_image(path: Path) -> bool:
    """Whether Blender drew an image it could not load (magenta)."""
    with Image.open(path) as im:
        data = im.convert("RGB").tobytes()
    return any(r > g + 60 and b > g + 60 and abs(r - b) < 30 for r, g, b in zip(data[0::3], data[1::3], data[2::3]))


# ---------------------------------------------------------------------------------------------
# pack_blender


def test_pack_finds_settings_and_packs_the_texture(blends, tmp_path):
    info = inspect_blend(blends / "scene" / "scene.blend")
    assert (info["frame_start"], info["frame_end"], info["frame_step"]) == (1, 3, 1)
    assert info["engine"] == "BLENDER_EEVEE" and info["file_format"] == "PNG"
    assert (info["resolution_x"], info["resolution_y"], info["resolution_percentage"]) == (64, 48, 50)
    assert [(f["kind"], f["raw"]) for f in info["files"]] == [("image", "//textures/wood.png")]

    result = pack_blender(blends / "scene" / "scene.blend", tmp_path / "scene.tar.gz")
    assert result.files == ["scene.blend", "textures/wood.png"]
    assert result.spec.settings == {"blend": "scene.blend", "format": "PNG"}
    assert result.spec.frame_ids() == [1, 2, 3]
    with tarfile.open(result.path) as t:
        assert t.getnames() == ["distrenjob.xml", "scene.blend", "textures/wood.png"]
        assert t.extractfile("textures/wood.png").read() == (blends / "scene/textures/wood.png").read_bytes()

    result = pack_blender(blends / "scene" / "scene.blend", tmp_path / "o.tar.gz", frames="0,7",
                          engine="cycles", samples=4, width=32, height=24)
    assert result.spec.settings == {"blend": "scene.blend", "engine": "CYCLES", "samples": "4",
                                    "width": "32", "height": "24", "format": "PNG"}
    assert result.spec.frame_ids() == [0, 7]
    assert any("denoising" in w for w in result.warnings)


def test_pack_refuses_missing_and_outside_textures(blends, tmp_path):
    with pytest.raises(PackError) as err:
        pack_blender(blends / "missing" / "missing.blend", tmp_path / "m.tar.gz")
    assert "//textures/gone.png" in err.value.message and "Make Paths Relative" in err.value.message
    with pytest.raises(PackError) as err:
        pack_blender(blends / "outside" / "outside.blend", tmp_path / "o.tar.gz")
    assert f"{blends}/elsewhere/sky.png" in err.value.message
    assert "outside the .blend's folder" in err.value.message
    assert not (tmp_path / "m.tar.gz").exists() and not (tmp_path / "o.tar.gz").exists()
    # inside the folder, stored absolute: the farm would render without it (it has other paths)
    with pytest.raises(PackError) as err:
        pack_blender(blends / "scene" / "absolute.blend", tmp_path / "a.tar.gz")
    assert "stored as an absolute path" in err.value.message and "Make Paths Relative" in err.value.message


def test_check_refuses_bad_settings(blends):
    backend = BlenderBackend()
    folder = blends / "scene"
    assert backend.check({"blend": "scene.blend"}, folder, [0, MAX_FRAME]) == []
    bad = [
        ({}, "<blend> is required"),
        ({"blend": "scene.blend", "threads": "4", "script": "x"}, "<script>, <threads>"),
        ({"blend": "../scene/scene.blend"}, "'..'"),
        ({"blend": f"{folder}/scene.blend"}, "absolute"),
        ({"blend": "textures\\wood.png"}, "backslash"),
        ({"blend": "nothere.blend"}, "no such file"),
        ({"blend": "textures/wood.png"}, "expected a .blend"),
        ({"blend": "scene.blend", "engine": "LUXCORE"}, "CYCLES, BLENDER_EEVEE, BLENDER_WORKBENCH"),
        ({"blend": "scene.blend", "samples": "0"}, "outside 1..65536"),
        ({"blend": "scene.blend", "width": "-2"}, "not an integer"),
        ({"blend": "scene.blend", "height": "16385"}, "outside 1..16384"),
        ({"blend": "scene.blend", "format": "FFMPEG"}, "not one of PNG"),
    ]
    for settings, message in bad:
        with pytest.raises(BadSettings) as err:
            backend.check(settings, folder, [1])
        assert message in err.value.message, (settings, err.value.message)
    with pytest.raises(BadSettings, match="outside Blender's frame range"):
        backend.check({"blend": "scene.blend"}, folder, [1, MAX_FRAME + 1])
    # the generated argv: fixed order, the frame last and always an integer we formatted
    p = plan({"blend": "scene.blend", "engine": "cycles", "format": "open_exr", "samples": "8"}, folder)
    argv = frame_argv(p, 0, 2)
    assert argv[:6] == ["blender", "-b", "-noaudio", "--factory-startup", "/job/scene.blend", "--disable-autoexec"]
    assert argv[6:10] == ["-E", "CYCLES", "-t", "2"]
    assert argv[-6:] == ["-o", "/job/_distren/out/scene_######", "-F", "OPEN_EXR", "-f", "0"]
    assert "scene.cycles.samples = 8" in argv[argv.index("--python-expr") + 1]
    with pytest.raises(ValueError):
        frame_argv(p, -2, 1)


# ---------------------------------------------------------------------------------------------
# Rendering through a server


def test_workbench_frames_match_blenders_own(server, blends, tmp_path):
    """Settings from the job (engine, size) override the file's; the texture travels with it."""
    pkg = pack_blender(blends / "scene" / "scene.blend", tmp_path / "wb.tar.gz", frames="1,3",
                       engine="BLENDER_WORKBENCH", width=32, height=24).path
    info, frames, folder = render_job(server, pkg, tmp_path)
    assert info["state"] == "done", frames
    names = {n: f"scene_{n:06d}.png" for n in (1, 3)}
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == \
        [f"{n}/{name}" for n, name in names.items()]
    with Image.open(folder / "1" / names[1]) as im:
        assert im.size == (32, 24)
    assert_matches_direct(folder, names, blends / "scene" / "ref_wb.blend", tmp_path)


def test_cycles_frames_match_blenders_own(server, blends, tmp_path):
    """The file's own settings: no overrides, denoising already off, so no message."""
    pkg = pack_blender(blends / "scene" / "ref_cycles.blend", tmp_path / "cy.tar.gz", frames="1,3").path
    info, frames, folder = render_job(server, pkg, tmp_path)
    assert info["state"] == "done", frames
    assert all(DENOISE_MESSAGE not in f["log"] for f in frames.values())
    assert_matches_direct(folder, {n: f"ref_cycles_{n:06d}.png" for n in (1, 3)},
                          blends / "scene" / "ref_cycles.blend", tmp_path)


def test_cycles_with_denoising_on_renders_without_it(server, blends, tmp_path):
    """scene.blend has Cycles denoising on, which Debian's Blender cannot do: the frame renders
    with denoising off, says so, and equals Blender's render of the scene saved without it."""
    direct_fails = subprocess.run(
        ["blender", "-b", "-noaudio", "--factory-startup", str(blends / "scene" / "scene.blend"),
         "--disable-autoexec", "-E", "CYCLES", "-o", f"{tmp_path}/fail_#", "-f", "2"],
        capture_output=True, text=True, timeout=120)
    assert "OpenImageDenoise" in direct_fails.stdout + direct_fails.stderr  # the problem is real
    result = pack_blender(blends / "scene" / "scene.blend", tmp_path / "dn.tar.gz", frames="2",
                          engine="CYCLES", samples=4, width=32, height=24)
    info, frames, folder = render_job(server, result.path, tmp_path)
    assert info["state"] == "done", frames
    assert DENOISE_MESSAGE in frames[2]["log"]
    direct = blender_direct(blends / "scene" / "ref_cycles.blend", 2, tmp_path / "direct")
    assert pixels(folder / "2" / "scene_000002.png") == pixels(direct)
    assert shows_texture(direct)


def test_autorun_scripts_in_the_blend_do_not_run(server, blends, tmp_path):
    marker = blends / "autorun-marker"
    driver_marker = Path(f"{marker}.driver")
    pkg = pack_blender(blends / "auto" / "auto.blend", tmp_path / "auto.tar.gz", frames="2").path
    info, frames, folder = render_job(server, pkg, tmp_path)
    assert info["state"] == "done", frames
    assert not marker.exists() and not driver_marker.exists()
    lines = [line.strip() for line in frames[2]["log"].splitlines()]
    # Neither printed its token; Blender saw both and says it skipped them.
    assert AUTORUN_TOKEN not in lines and DRIVER_TOKEN not in lines
    assert "skipping 'autorun.py'" in frames[2]["log"]
    assert any("restricted access disallows" in line for line in lines), lines
    # The File Output node wrote into the frame's output, not to its absolute path.
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        ["2/Passes/Image0002.png", "2/auto_000002.png"]
    assert not (blends / "escape").exists()
    # Sanity: Blender with auto-run allowed (-y) and without the sandbox runs both.
    proc = subprocess.run(["blender", "-b", "-noaudio", "--factory-startup", "-y", str(blends / "auto" / "auto.blend"),
                           "-o", f"{tmp_path}/sanity_#", "-F", "PNG", "-f", "2"],
                          capture_output=True, text=True, timeout=120)
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert AUTORUN_TOKEN in lines and DRIVER_TOKEN in lines
    assert marker.read_text() == "ran" and driver_marker.exists()
    assert (blends / "escape" / "Image0002.png").is_file()
    shutil.rmtree(blends / "escape")
    marker.unlink()
    driver_marker.unlink()


def test_blend_cannot_read_host_files(server, blends, tmp_path):
    """outside.blend's image texture is a file outside the job, by absolute path (`distren pack`
    refuses it, so the package is made by hand). Blender loads images as it renders, with
    auto-run off too: only the sandbox keeps the host's file out. The frame renders, without
    the texture (Blender draws a missing image magenta); with the file readable it shows."""
    texture = blends / "elsewhere" / "sky.png"
    xml = tmp_path / "distrenjob.xml"
    xml.write_text('<distrenjob><name>outside</name><backend name="blender"><blend>outside.blend</blend>'
                   "<engine>BLENDER_WORKBENCH</engine><width>32</width><height>24</height></backend>"
                   '<frames><frame id="2"/></frames></distrenjob>')
    pkg = tmp_path / "outside.tar"
    with open(pkg, "wb") as fh:
        write_tar(fh, [("distrenjob.xml", xml), ("outside.blend", blends / "outside" / "outside.blend")])
    info, frames, folder = render_job(server, pkg, tmp_path)
    assert info["state"] == "done", frames
    assert not shows_texture(folder / "2" / "outside_000002.png"), f"{texture} was read"
    assert shows_missing_image(folder / "2" / "outside_000002.png")  # Blender tried to load it
    # the leak would show: Blender outside the sandbox renders the same file with the texture
    direct = tmp_path / "direct"
    subprocess.run(["blender", "-b", "-noaudio", "--factory-startup", str(blends / "outside" / "outside.blend"),
                    "--disable-autoexec", "-E", "BLENDER_WORKBENCH", "-o", f"{direct}/d_#", "-F", "PNG", "-f", "2"],
                   check=True, capture_output=True, timeout=120)
    assert shows_texture(direct / "d_2.png")


def test_corrupt_blend_is_refused_or_fails_with_blenders_message(server_factory, blends, tmp_path):
    server = server_factory("alpha", extra=["--max-failures", "1"])
    client = server.client()
    xml = (b"<distrenjob><name>bad</name><backend name=\"blender\"><blend>bad.blend</blend></backend>"
           b"<frames><frame id=\"1\"/></frames></distrenjob>")

    def package(content: bytes, name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "distrenjob.xml").write_bytes(xml)
        (folder / "bad.blend").write_bytes(content)
        path = tmp_path / f"{name}.tar"
        with open(path, "wb") as fh:
            write_tar(fh, [("distrenjob.xml", folder / "distrenjob.xml"), ("bad.blend", folder / "bad.blend")])
        return path

    # random bytes: refused at submission
    with pytest.raises(ClientError) as err:
        client.submit(package(bytes(range(256)) * 64, "random"))
    assert err.value.code == "bad_settings" and "not a .blend file" in err.value.message
    # a truncated .blend passes the header check and fails as a frame, with Blender's own message
    real = (blends / "auto" / "auto.blend").read_bytes()
    truncated = package(real[: len(real) // 3], "truncated")
    info, frames, _ = render_job(server, truncated, tmp_path)
    assert info["state"] == "failed"
    assert frames[1]["state"] == "failed" and "blender failed" in frames[1]["error"]
    assert "Failed to read blend file" in frames[1]["log"]
    assert httpx.get(server.url + "/api/v1/server").status_code == 200
    # pack says the same before anything is sent
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "t.blend").write_bytes(real[: len(real) // 3])
    with pytest.raises(PackError, match="Failed to read blend file"):
        pack_blender(tmp_path / "trunc" / "t.blend", tmp_path / "t.tar.gz")


def test_blender_job_rendered_across_two_servers(farm, blends, tmp_path):
    """Submitted to A, rendered by A and B together; every frame equals Blender's own render."""
    a = farm.add("A", 1, ["B"])
    farm.add("B", 2, ["A"])
    farm.start()
    pkg = pack_blender(blends / "scene" / "ref_cycles.blend", tmp_path / "cy.tar.gz", frames="1-4").path
    info, frames, folder = render_job(a, pkg, tmp_path)
    assert info["state"] == "done", frames
    assert {f["rendered_by"] for f in frames.values()} == {"A", "B"}
    assert_matches_direct(folder, {n: f"ref_cycles_{n:06d}.png" for n in range(1, 5)},
                          blends / "scene" / "ref_cycles.blend", tmp_path)


def test_chunked_frames_match_blenders_own(server, blends, tmp_path):
    """Frames 1-3 in one Blender process (`-s 1 -e 3 -j 1 -a`, --chunk 3): each frame is its own
    output and equals Blender's own render of that frame."""
    pkg = pack_blender(blends / "scene" / "ref_cycles.blend", tmp_path / "ch.tar.gz", frames="1-3", chunk=3).path
    info, frames, folder = render_job(server, pkg, tmp_path)
    assert info["state"] == "done", frames
    # one process rendered them all: each frame's log shows the three frames
    for f in frames.values():
        assert all(f"Fra:{n} " in f["log"] for n in (1, 2, 3)), f["log"][-2000:]
    names = {n: f"ref_cycles_{n:06d}.png" for n in (1, 2, 3)}
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == \
        [f"{n}/{name}" for n, name in names.items()]
    assert_matches_direct(folder, names, blends / "scene" / "ref_cycles.blend", tmp_path)


def test_chunk_outputs_are_told_apart_by_frame(blends, tmp_path):
    """A chunk's outputs: the frame's own images by their 6-digit number (and view suffix),
    compositor images in subfolders by a trailing number of at least 4 digits; anything else
    belongs to no frame (the chunk then renders frame by frame)."""
    from distren.backends.base import FrameTask

    scene = blends / "scene"
    out = tmp_path / "out"
    names = ["scene_000002.png", "scene_000003.png", "scene_000003_L.png", "Passes/Image0002.png",
             "Passes/Image0003.jp2", "Passes/beauty_0002_v2.exr", "scene_0000020.png"]
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"x")
    task = FrameTask(settings={"blend": "scene.blend", "format": "PNG"}, scene=scene, frame=2, out=out,
                     deps=tmp_path / "deps", timeout=10, frames=(2, 3))
    split = BlenderBackend().split_outputs(task, sorted(p for p in out.rglob("*") if p.is_file()))
    rel = {f: sorted(p.relative_to(out).as_posix() for p in files) for f, files in split.items()}
    assert rel == {2: ["Passes/Image0002.png", "scene_000002.png"],
                   3: ["Passes/Image0003.jp2", "scene_000003.png", "scene_000003_L.png"]}
    # beauty_0002_v2.exr and frame 20's image are nobody's: render_chunk refuses to guess

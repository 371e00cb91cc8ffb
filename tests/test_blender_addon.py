"""The Blender add-on (`distren blender-addon`), in real Blender: the zip the CLI writes is
installed and enabled by `blender -b` (bpy.ops.preferences.addon_install), its preferences
point at a real `distren serve`, and `bpy.ops.distren.submit()` packs the open file and submits
it. The frames that come back are compared with Blender's own direct renders."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli
from distren.job.spec import parse_job_xml
from test_blender import assert_matches_direct
from test_blender import blends as blender_scenes  # noqa: F401 (a fixture, used by name)

pytestmark = pytest.mark.skipif(shutil.which("blender") is None or shutil.which("bwrap") is None,
                                reason="needs Blender and bubblewrap")

TOKEN = "a client token for the add-on test"
# A name that must be escaped in XML and made safe for Blender's output path.
TRICKY = "shot <1> & co"

# Run by Blender with the scene open: installs and enables the add-on from the zip, sets its
# preferences, the panel's options and unsaved changes to the scene (render settings, image
# paths), calls the operator, and writes what happened as JSON. With "follow", it then asks
# for the job's progress (`bpy.ops.distren.refresh()`) until the job ends.
SUBMIT = r'''
import bpy, json, sys, time, traceback
spec = json.loads(sys.argv[-1])
result = {}
try:
    bpy.ops.preferences.addon_install(filepath=spec["zip"], overwrite=True)
    bpy.ops.preferences.addon_enable(module="distren_blender")
    import distren_blender
    result["module"] = distren_blender.__file__
    prefs = bpy.context.preferences.addons["distren_blender"].preferences
    prefs.server = spec["server"]
    prefs.token = spec["token"]
    prefs.ca_file = spec["ca_file"]
    scene = bpy.context.scene
    for key, value in spec["render"].items():
        setattr(scene.render, key, value)
    for key, value in spec["options"].items():
        setattr(scene.distren, key, value)
    for name, path in spec["images"].items():
        bpy.data.images[name].filepath = path
    try:
        bpy.ops.distren.submit(package=spec["package"])
    except RuntimeError as exc:
        result["error"] = str(exc)
    result["status"] = distren_blender.status()
    result["filepath"] = bpy.data.filepath
    # what a newer Blender than the farm's is told: refused alone, warned with peers
    farm = {"backends": {"blender": {"available": True, "version": "3.4.1"}}, "peers": []}
    result["newer"] = [distren_blender.farm_blender_problem(farm, (4, 5, 0)),
                       distren_blender.farm_blender_problem({**farm, "peers": [{"name": "b"}]}, (4, 5, 0)),
                       distren_blender.farm_blender_problem(farm, bpy.app.version)]
    if spec["follow"] and "error" not in result:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and distren_blender.status()["state"] not in ("done", "failed", "cancelled"):
            time.sleep(0.3)
            bpy.ops.distren.refresh()
        result["final"] = distren_blender.status()
except Exception:
    result["crash"] = traceback.format_exc()
with open(spec["result"], "w") as fh:
    json.dump(result, fh)
'''


@pytest.fixture(scope="module")
def addon_zip(tmp_path_factory) -> Path:
    """The add-on as `distren blender-addon` writes it."""
    out = tmp_path_factory.mktemp("addon") / "distren_blender.zip"
    proc = run_cli("blender-addon", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    return out


@pytest.fixture(scope="module")
def scenes(request) -> Path:
    """test_blender's scenes (written by Blender), and scene.blend under a name that XML must
    escape: in scene/, `//textures/wood.png` beside it; ref_wb.blend and ref_cycles.blend, the
    same scene saved as the jobs should render it (Workbench, and Cycles with 4 samples, 32x24);
    outside/outside.blend, whose texture is outside its folder."""
    blends = request.getfixturevalue("blender_scenes")
    shutil.copyfile(blends / "scene" / "scene.blend", blends / "scene" / f"{TRICKY}.blend")
    return blends


def submit_in_blender(blend: Path, addon: Path, server_url: str, tmp_path: Path, *, token: str = "",
                      options: dict | None = None, render: dict | None = None, package: Path | None = None,
                      images: dict | None = None, follow: bool = False, ca_file: str = "") -> dict:
    """Open `blend` in a headless Blender whose user folders are private to the test, install
    and enable the add-on, and call bpy.ops.distren.submit(). Returns what SUBMIT wrote."""
    home = tmp_path / f"blender-home-{len(list(tmp_path.glob('blender-home-*')))}"
    env = {"HOME": str(home), "BLENDER_USER_SCRIPTS": str(home / "scripts"),
           "BLENDER_USER_CONFIG": str(home / "config"), "BLENDER_USER_DATAFILES": str(home / "datafiles"),
           "PATH": "/usr/bin:/bin"}
    result = home / "result.json"
    home.mkdir()
    spec = {"zip": str(addon), "server": server_url, "token": token, "ca_file": ca_file, "options": options or {},
            "render": render or {}, "images": images or {}, "package": str(package or ""), "follow": follow, "result": str(result)}
    proc = subprocess.run(["blender", "-b", "-noaudio", "--factory-startup", str(blend), "--python-exit-code", "1",
                           "--python-expr", SUBMIT, "--", json.dumps(spec)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and result.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(result.read_text())
    assert "crash" not in data, data["crash"]
    # installed into the private user folder, not anywhere shared
    assert data["module"].startswith(str(home / "scripts" / "addons" / "distren_blender")), data["module"]
    data["log"] = proc.stdout
    return data


def test_cli_writes_a_deterministic_addon_zip(addon_zip, tmp_path):
    again = tmp_path / "again.zip"
    proc = run_cli("blender-addon", "-o", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"path": str(tmp_path / "distren_blender.zip")}
    (tmp_path / "distren_blender.zip").rename(again)
    assert again.read_bytes() == addon_zip.read_bytes()
    with zipfile.ZipFile(addon_zip) as zf:
        assert zf.namelist() == ["distren_blender/__init__.py", "distren_blender/blender_manifest.toml"]
        source = zf.read("distren_blender/__init__.py").decode()
        manifest = zf.read("distren_blender/blender_manifest.toml").decode()
    assert "bl_info" in source and 'id = "distren_blender"' in manifest
    # self-contained: the add-on imports nothing of distren, and no third-party module
    imports = {line.split()[1].split(".")[0] for line in source.splitlines()
               if line.startswith(("import ", "from "))}
    assert imports <= {"bpy", "gzip", "http", "io", "ipaddress", "json", "os", "re", "shutil", "ssl", "tarfile", "tempfile",
                       "threading", "urllib", "xml"}, imports


def test_submit_from_blender_renders_like_blender(server, scenes, addon_zip, tmp_path):
    """The scene's own frames and engine, its external texture packed: the frames equal
    Blender's own render of the same scene. The engine (Eevee in the file) and resolution are
    changed in Blender and not saved: the job renders what is open (Workbench, 32x24), and the
    file on disk stays as it was."""
    blend = scenes / "scene" / f"{TRICKY}.blend"
    before = blend.read_bytes()
    package = tmp_path / "kept.tar.gz"
    data = submit_in_blender(blend, addon_zip, server.url, tmp_path, package=package, follow=True,
                             render={"resolution_x": 32, "resolution_y": 24, "resolution_percentage": 100,
                                     "engine": "BLENDER_WORKBENCH"})
    assert "error" not in data, data
    assert blend.read_bytes() == before and data["filepath"] == str(blend)
    url = data["status"]["url"]
    assert url == "distren://alpha/1" and f"distren: submitted {url} (3 frames, 2 files)" in data["log"]
    # the add-on followed the job to its end and counted its frames
    assert {k: data["final"][k] for k in ("state", "done", "total", "failed")} == \
        {"state": "done", "done": 3, "total": 3, "failed": 0}

    # The package: the same settings, frames and files `distren pack` would write.
    with tarfile.open(package) as t:
        assert t.getnames() == ["distrenjob.xml", f"{TRICKY}.blend", "textures/wood.png"]
        assert all(m.mtime == 0 and m.mode == 0o644 and m.uid == 0 for m in t.getmembers())
        xml = t.extractfile("distrenjob.xml").read()
    spec = parse_job_xml(xml, "local", 1)   # the schema and the server's own checks
    assert spec.name == TRICKY and b"shot &lt;1&gt; &amp; co" in xml
    assert spec.settings == {"blend": f"{TRICKY}.blend", "format": "PNG"}
    assert spec.frame_ids() == [1, 2, 3]

    info, frames, folder = render_job_url(server, url, tmp_path)
    assert info["state"] == "done", frames
    names = {n: f"shot_1_co_{n:06d}.png" for n in (1, 2, 3)}
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == \
        [f"{n}/{name}" for n, name in names.items()]
    with Image.open(folder / "1" / names[1]) as im:
        assert im.size == (32, 24)
    assert_matches_direct(folder, names, scenes / "scene" / "ref_wb.blend", tmp_path)


def test_submit_with_token_engine_samples_and_frames(server_factory, scenes, addon_zip, tmp_path):
    """A server that needs a client token; the panel's frames, engine and samples override the
    file's (Eevee, 64 samples, frames 1-3): Cycles with 4 samples, frames 1 and 3."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = server_factory("alpha", extra=["--client-token-file", str(token_file)])
    data = submit_in_blender(scenes / "scene" / f"{TRICKY}.blend", addon_zip, server.url, tmp_path,
                             token=TOKEN, render={"resolution_percentage": 100, "resolution_x": 32,
                                                  "resolution_y": 24},
                             options={"use_scene_range": False, "frames": "3, 1", "engine": "CYCLES",
                                      "samples": 4})
    assert "error" not in data, data
    assert "Cycles denoising is on" in data["log"]
    url = data["status"]["url"]
    info, frames, folder = render_job_url(server, url, tmp_path)
    assert info["state"] == "done", frames
    assert sorted(frames) == [1, 3]
    job = server.client().job(url)
    assert job["backend"] == "blender" and job["total_frames"] == 2
    assert_matches_direct(folder, {n: f"shot_1_co_{n:06d}.png" for n in (1, 3)},
                          scenes / "scene" / "ref_cycles.blend", tmp_path)


def test_submit_over_tls_with_the_farm_ca(server_factory, scenes, addon_zip, tls_files, tmp_path):
    """An https:// server whose certificate the farm's own CA signed: with the CA File
    preference the job is submitted and renders; without it, the add-on says the certificate is
    not trusted and where to set the CA."""
    server = server_factory("alpha", tls=tls_files)
    assert server.url.startswith("https://")
    small = {"resolution_percentage": 100, "resolution_x": 32, "resolution_y": 24}
    refused = submit_in_blender(scenes / "scene" / "scene.blend", addon_zip, server.url, tmp_path, render=small)
    assert "TLS certificate" in refused["error"] and "CA File" in refused["error"], refused
    data = submit_in_blender(scenes / "scene" / "scene.blend", addon_zip, server.url, tmp_path, render=small,
                             options={"use_scene_range": False, "frames": "1"}, ca_file=str(tls_files.ca))
    assert "error" not in data, data
    info, frames, _ = render_job_url(server, data["status"]["url"], tmp_path)
    assert info["state"] == "done" and sorted(frames) == [1], frames


def render_job_url(server, url: str, tmp_path: Path):
    """Wait for a job submitted by the add-on and unpack its bundle (as test_blender's
    render_job does for a package it submits)."""
    client = server.client()
    info = client.wait(url, interval=0.2, timeout=180)
    frames = {f["frame"]: client.frame(f"{url}/{f['frame']}") for f in client.frames(url)}
    folder = tmp_path / "bundle"
    folder.mkdir()
    bundle = tmp_path / "bundle.tar"
    client.download(url, bundle)
    with tarfile.open(bundle) as t:
        t.extractall(folder, filter="data")
    return info, frames, folder


def test_refusals_are_shown_in_blender(server_factory, scenes, addon_zip, tmp_path):
    """Files outside the .blend's folder, absolute paths, a wrong token, a bad frame list, an
    unreachable server and a package too large: the operator fails with a message that says
    what to do (the server's own, when it refused), and the server has no job."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    server = server_factory("alpha", extra=["--client-token-file", str(token_file)])

    data = submit_in_blender(scenes / "outside" / "outside.blend", addon_zip, server.url, tmp_path, token=TOKEN)
    assert f"image 'Wood': {scenes}/elsewhere/sky.png: outside the .blend's folder" in data["error"]
    assert "Make Paths Relative" in data["error"]

    # a path inside the folder, but absolute: the farm renders the file elsewhere
    texture = scenes / "scene" / "textures" / "wood.png"
    data = submit_in_blender(scenes / "scene" / f"{TRICKY}.blend", addon_zip, server.url, tmp_path, token=TOKEN,
                             images={"Wood": str(texture)})
    assert f"image 'Wood': {texture}: an absolute path" in data["error"]

    data = submit_in_blender(scenes / "scene" / f"{TRICKY}.blend", addon_zip, server.url, tmp_path,
                             token="not the token", options={"engine": "BLENDER_WORKBENCH"})
    assert "the distren server refused the job: this server needs a client token" in data["error"]
    assert "(401 unauthorized)" in data["error"]

    data = submit_in_blender(scenes / "scene" / f"{TRICKY}.blend", addon_zip, server.url, tmp_path,
                             token=TOKEN, options={"use_scene_range": False, "frames": "1-3,2"})
    assert "frame 2 is listed more than once" in data["error"]

    data = submit_in_blender(scenes / "scene" / f"{TRICKY}.blend", addon_zip, "http://127.0.0.1:9", tmp_path)
    assert "cannot reach the distren server at http://127.0.0.1:9" in data["error"]
    # a file open in a newer Blender than the farm's (Blender 3.4 crashes on 4.5's files)
    (refused, none), (no, warned), same = data["newer"]
    assert none is None and no is None and same == [None, None]
    assert refused.startswith("this Blender is 4.5, and the server renders with Blender 3.4, which cannot read")
    assert warned.endswith("(its peers may have a newer Blender)")
    assert server.client().jobs() == []

    # refused from its Content-Length, before the server reads the body
    small = server_factory("beta", extra=["--max-job-bytes", "1000"])
    data = submit_in_blender(scenes / "scene" / f"{TRICKY}.blend", addon_zip, small.url, tmp_path)
    assert "the distren server refused the job: package of" in data["error"]
    assert "exceeds the limit of 1000 bytes (413 too_large)" in data["error"]


def test_the_addon_zip_is_package_data():
    """A built wheel carries the add-on's files (pyproject's package-data)."""
    import tomllib

    from distren.blender_addon import ADDON_FILES, ADDON_MODULE, addon_source

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["distren"]
    assert f"blender_addon/{ADDON_MODULE}/*" in patterns
    assert all(addon_source(name) for name in ADDON_FILES)

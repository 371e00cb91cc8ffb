"""One contract every backend keeps, run over every backend registered in the entry-point
group `distren.backends` (the built-ins register there like any plug-in)."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from conftest import SCENE_INC, SCENE_POV
from distren.backends.base import Backend, FrameTask, find_backends
from distren.errors import BadSettings

BACKENDS = find_backends()


def povray_example(root: Path) -> tuple[dict, tuple[str, ...]]:
    (root / "scene.pov").write_text(SCENE_POV)
    (root / "local.inc").write_text(SCENE_INC)
    return {"scene": "scene.pov", "width": "24", "height": "18", "initial-frame": "0", "final-frame": "3"}, ()


def ffmpeg_example(root: Path) -> tuple[dict, tuple[str, ...]]:
    urls = []
    for frame in range(3):
        folder = root.parent / "deps" / "alpha" / "1" / str(frame)
        folder.mkdir(parents=True)
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"color=c=0x{frame * 40:02x}2040:s=16x12",
                        "-frames:v", "1", str(folder / f"f{frame}.png")], check=True)
        urls.append(f"distren://alpha/1/{frame}")
    return {"fps": "10"}, tuple(urls)


def blender_example(root: Path) -> tuple[dict, tuple[str, ...]]:
    script = ("import bpy; s = bpy.context.scene; s.render.engine = 'BLENDER_WORKBENCH'; "
              f"bpy.ops.wm.save_as_mainfile(filepath={str(root / 'cube.blend')!r})")
    subprocess.run(["blender", "-b", "--factory-startup", "-noaudio", "--python-expr", script],
                   check=True, capture_output=True, timeout=120)
    return {"blend": "cube.blend", "width": "24", "height": "18"}, ()


def toy_example(root: Path) -> tuple[dict, tuple[str, ...]]:
    """The example plug-in backend (tests/plugins/toy), as a third party would install it."""
    (root / "scene.toy").write_text('size 32 24\nbackground 0 0 80\ninclude "more.toy"\n')
    (root / "more.toy").write_text("disc 4 12 5 255 200 0 3 0\n")
    return {"scene": "scene.toy", "width": "24", "height": "18"}, ()


EXAMPLES = {"povray": povray_example, "ffmpeg": ffmpeg_example, "blender": blender_example, "toy": toy_example}


def task_for(name: str, tmp_path: Path, timeout: float = 120) -> tuple[Backend, FrameTask]:
    backend = BACKENDS[name]
    root = tmp_path / "job"
    (root / "_distren" / "out").mkdir(parents=True)
    (root / "_distren" / "deps").mkdir()
    (tmp_path / "deps").mkdir()
    (tmp_path / "out").mkdir()
    settings, depends = EXAMPLES[name](root)
    task = FrameTask(settings=settings, scene=root, frame=1, out=tmp_path / "out",
                     deps=tmp_path / "deps", timeout=timeout, home="alpha", job=1, depends=depends)
    return backend, task


@pytest.fixture(params=sorted(BACKENDS))
def name(request) -> str:
    return request.param


def test_every_backend_has_a_contract_example():
    assert set(BACKENDS) <= set(EXAMPLES), "add an example job for the new backend to EXAMPLES"


def test_registered_through_the_entry_point_group(name):
    eps = {ep.name: ep for ep in entry_points(group="distren.backends")}
    assert name in eps and isinstance(BACKENDS[name], Backend)
    assert BACKENDS[name].name == name


def test_renderer_is_installed_and_reports_a_version(name):
    assert shutil.which(BACKENDS[name].executable), f"{BACKENDS[name].executable} missing: CI installs every renderer"
    assert BACKENDS[name].available() and isinstance(BACKENDS[name].version(), str)


def test_example_settings_pass_and_unknown_settings_are_refused(name, tmp_path):
    backend, task = task_for(name, tmp_path)
    assert isinstance(backend.check(task.settings, task.scene, [0, 1, 2, 3]), list)
    with pytest.raises(BadSettings, match="no_such_setting"):
        backend.check({**task.settings, "no_such_setting": "1"}, task.scene, [0, 1, 2, 3])


def test_command_is_an_argv_of_checked_strings(name, tmp_path):
    backend, task = task_for(name, tmp_path)
    backend.prepare(task)
    argv = backend.command(task)
    assert argv[0] == backend.executable and all(isinstance(a, str) for a in argv)


def test_renders_in_the_sandbox_into_the_output_folder(name, tmp_path):
    backend, task = task_for(name, tmp_path)
    result = asyncio.run(backend.render(task))
    assert result.ok, (result.error, result.log[-2000:])
    assert result.outputs and all(p.is_file() and task.out in p.parents for p in result.outputs)
    # the job folder stays as it was: the renderer could not write there
    assert not any((task.scene / "_distren" / "out").iterdir())


def test_timeout_kills_the_render(name, tmp_path):
    backend, task = task_for(name, tmp_path, timeout=0.001)
    result = asyncio.run(backend.render(task))
    assert not result.ok and "timed out" in result.error


def processes() -> dict[int, tuple[str, int, list[bytes]]]:
    """Every process of the machine: pid -> (state, session id, argv), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:  # ended meanwhile
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            found[int(entry.name)] = (fields[0], int(fields[3]), argv)
    return found


def test_timeout_kills_the_whole_process_group(name, tmp_path, monkeypatch):
    """At the timeout every process of the render goes, not only the one distren started: the
    renderer runs beside a child (`sleep`, named by a number only this test uses) that keeps
    the render's output open, as a renderer's helper process would; once the timeout has
    fired, no process of the render's session is left."""
    backend, task = task_for(name, tmp_path, timeout=1.5)
    token = f"{600 + random.random():.9f}"
    command = backend.command
    monkeypatch.setattr(backend, "command", lambda t: ["/bin/sh", "-c", f'sleep {token} & "$@"; wait', "sh", *command(t)])

    async def render_and_watch() -> tuple[object, tuple[int, int] | None]:
        render = asyncio.ensure_future(backend.render(task))
        child = None
        while child is None and not render.done():
            child = next(((pid, session) for pid, (_, session, argv) in processes().items()
                          if argv == [b"sleep", token.encode()]), None)
            await asyncio.sleep(0.01)
        return await render, child

    result, child = asyncio.run(render_and_watch())
    assert not result.ok and "timed out" in result.error
    assert child is not None, "the render's child never ran"
    pid, session = child
    deadline = time.monotonic() + 5  # SIGKILL is sent at once; the kernel takes a moment
    while (left := [p for p, (state, s, _) in processes().items() if s == session and state != "Z"]) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"processes of the render's session {session} survived its timeout"


# The backends that tell which frame of a chunk their renderer has begun (Backend.frame_begun),
# with settings under which their renderer says so (Blender prints "Fra:N" with Cycles).
BEGUN = sorted(n for n, b in BACKENDS.items() if type(b).frame_begun is not Backend.frame_begun)
BEGUN_SETTINGS = {"blender": {"engine": "CYCLES", "samples": "1"}}


@pytest.mark.parametrize("name", BEGUN)
def test_a_chunk_stopped_as_it_begins_a_frame_keeps_the_frames_before_it_whole(name, tmp_path):
    """What frame_begun says is true: when the renderer of a chunk of 6 frames has begun the
    second, the first is written whole; stopped there (as a split chunk is), the first is done
    and the others are given back (not failures), and the last was never written."""
    from PIL import Image

    from distren.backends.base import ChunkControl

    backend, task = task_for(name, tmp_path)
    chunk = (1, 2, 3, 4, 5, 6)
    settings = {**task.settings, **BEGUN_SETTINGS.get(name, {}), "final-frame": "6"} if name == "povray" else \
        {**task.settings, **BEGUN_SETTINGS.get(name, {})}
    control = ChunkControl()
    task = FrameTask(settings=settings, scene=task.scene, frame=1, out=task.out, deps=task.deps,
                     timeout=task.timeout, home="alpha", job=1, frames=chunk, control=control)
    assert backend.chunkable(settings)
    seen: list[int] = []

    async def run():
        async def watch():
            while True:
                begun = backend.frame_begun(task, control.recent.decode("utf-8", "replace"))
                if begun is not None:
                    seen.append(begun)
                    if begun >= 2:
                        control.whole_through = begun - 1
                        control.stop.set()
                        return
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        results = await backend.render_chunk(task)
        watcher.cancel()
        return results

    results = asyncio.run(run())
    assert control.stop.is_set(), f"the renderer never said it began frame 2 (saw {seen})"
    kept = control.whole_through
    assert 1 <= kept < 6, kept
    split = backend.split_outputs(task, backend.outputs(task.out))
    for f in chunk:
        if f <= kept:
            assert results[f].ok, results[f].error
            for path in results[f].outputs:
                with Image.open(path) as im:
                    im.load()   # whole: a truncated image raises
        else:
            assert not results[f].ok and not results[f].counts and "given back" in results[f].error
    assert not split.get(6), "the renderer was not stopped: it wrote the last frame"

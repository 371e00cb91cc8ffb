"""`distren pack` for Blender: turn a .blend into a job package.

The package holds `distrenjob.xml`, the .blend and every external file the scene needs (image
textures and sequences, UDIM tiles, movie clips, sounds, fonts, linked libraries, Alembic and
volume caches, anything else `bpy.utils.blend_paths` reports), at the same paths relative to the
.blend's folder, so that Blender's `//` relative paths find them on every worker.

What the scene needs is asked of Blender itself (`inspect_blend`): Blender opens the file in
background mode with factory settings and auto-run scripts disabled, inside the same sandbox the
renders use (the .blend's folder read-only, a private /tmp, no network), with a timeout, and
writes what it found as JSON. Files that are missing or outside the .blend's folder are refused
all at once. The result is checked with the server's own `BlenderBackend.check`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

from ..base import kill_group, relative_file
from .backend import (
    DEFAULT_FORMAT,
    ENGINES,
    FORMATS,
    MAX_FRAME,
    MAX_RESOLUTION,
    MAX_SAMPLES,
    BlenderBackend,
    check_frames,
    choice_setting,
    integer_setting,
)
from ..sandbox import OUT_DIR, Sandbox, prepare_scene
from ...errors import BadFrameSpec, DistrenError, PackError
from ...frames import parse_frames
from ...job.spec import DEFAULT_MAX_FRAMES, JOB_XML_NAME, FrameSpec, JobSpec
from ...pack import PackResult, _as_pack_error, write_job

INSPECT_TIMEOUT = 120.0
INSPECT_JSON = "inspect.json"
LOG_TAIL_CHARS = 4000
MAX_DIRECTORY_FILES = 10_000
HINT = ("in Blender use File > External Data > Make Paths Relative (after moving the files into "
        "the .blend's folder), or File > External Data > Pack Resources")

# Run by Blender after loading the file: collects the scene's render settings and every external
# file, and writes them as JSON into the sandbox's output folder. It is a constant: no text from
# the user or the file is ever part of the code.
INSPECT_CODE = r'''
import bpy, json, os

def absolute(raw, owner):
    lib = getattr(owner, "library", None)
    return os.path.normpath(bpy.path.abspath(raw, library=lib)) if raw else ""

files = []
covered = set()

def add(kind, owner, raw, **extra):
    if not raw:
        return
    path = absolute(raw, owner)
    covered.add(path)
    lib = getattr(owner, "library", None)
    files.append(dict(kind=kind, name=owner.name, raw=raw, path=path,
                      library=lib.filepath if lib is not None else None, **extra))

for im in bpy.data.images:
    if im.source not in {"FILE", "SEQUENCE", "MOVIE", "TILED"}:
        continue
    if im.packed_file is not None or len(im.packed_files) > 0:
        continue
    add("image", im, im.filepath, sequence=im.source == "SEQUENCE",
        tiles=[t.number for t in im.tiles] if im.source == "TILED" else [])
for clip in bpy.data.movieclips:
    add("movie clip", clip, clip.filepath, sequence=clip.source == "SEQUENCE")
for sound in bpy.data.sounds:
    if sound.packed_file is None:
        add("sound", sound, sound.filepath)
for font in bpy.data.fonts:
    if font.packed_file is None and font.filepath != "<builtin>":
        add("font", font, font.filepath)
for lib in bpy.data.libraries:
    if lib.packed_file is None:
        add("library", lib, lib.filepath)
for cache in bpy.data.cache_files:
    add("cache file", cache, cache.filepath, sequence=cache.is_sequence)
for volume in bpy.data.volumes:
    if volume.packed_file is None:
        add("volume", volume, volume.filepath, sequence=volume.is_sequence)
for sc in bpy.data.scenes:
    if sc.sequence_editor is None:
        continue
    for strip in sc.sequence_editor.sequences_all:
        if strip.type == "IMAGE":
            covered.add(absolute(strip.directory, sc))
            for element in strip.elements:
                add("image strip", strip, strip.directory.rstrip("/") + "/" + element.filename)
        elif strip.type == "MOVIE":
            add("movie strip", strip, strip.filepath)

texts = {absolute(t.filepath, t) for t in bpy.data.texts if t.filepath}
for path in bpy.utils.blend_paths(absolute=True, packed=False, local=False):
    normal = os.path.normpath(path)
    if normal not in covered and normal not in texts:
        covered.add(normal)
        files.append(dict(kind="file", name="", raw=path, path=normal, library=None,
                          directory=path.endswith(("/", os.sep))))

scene = bpy.context.scene
render = scene.render
denoising = False
if hasattr(scene, "cycles"):
    denoising = bool(scene.cycles.use_denoising) and any(v.cycles.use_denoising for v in scene.view_layers)
info = dict(
    blender=bpy.app.version_string,
    filepath=bpy.data.filepath,
    scene=scene.name,
    frame_start=scene.frame_start,
    frame_end=scene.frame_end,
    frame_step=scene.frame_step,
    engine=render.engine,
    resolution_x=render.resolution_x,
    resolution_y=render.resolution_y,
    resolution_percentage=render.resolution_percentage,
    file_format=render.image_settings.file_format,
    cycles_samples=scene.cycles.samples if hasattr(scene, "cycles") else None,
    eevee_samples=scene.eevee.taa_render_samples,
    denoising=denoising,
    camera=scene.camera.name if scene.camera is not None else None,
    files=files,
)
with open("''' + OUT_DIR + r'''/inspect.json", "w", encoding="utf-8") as fh:
    json.dump(info, fh)
'''


def _blend_argv(blend: Path) -> list[str]:
    return ["blender", "-b", "-noaudio", "--factory-startup", str(blend), "--disable-autoexec",
            "-t", "1", "--python-exit-code", "1", "--python-expr", INSPECT_CODE]


def inspect_blend(path: Path, timeout: float = INSPECT_TIMEOUT) -> dict:
    """Open a .blend with Blender in the sandbox and return what the inspection found: the
    active scene's frame_start, frame_end, frame_step, engine, resolution_x/_y/_percentage,
    file_format, cycles_samples, eevee_samples, denoising (Cycles denoising on), camera (its
    name or None), blender (the version) and files, the external files the file uses: dicts with
    kind ("image", "library", ...), name (of the data-block), raw (the path as stored), path
    (absolute, `//` resolved against the .blend's folder or its library's), library, and where
    they apply sequence (numbered frames), tiles (UDIM tile numbers) and directory. Packed
    files are left out. Raises PackError when Blender cannot open the file or times out."""
    blend = Path(path).resolve()
    if not blend.is_file():
        raise PackError(f"{path}: no such file")
    folder = blend.parent
    if folder == Path(folder.anchor) or folder == Path("/job") or folder.is_relative_to("/job"):
        raise PackError(f"{path}: put the .blend in a folder of its own (not / or /job)")
    with tempfile.TemporaryDirectory(prefix="distren-inspect-") as scratch:
        scene = Path(scratch, "scene")
        scene.mkdir()
        prepare_scene(scene)
        out, deps = scene / "_distren" / "out", scene / "_distren" / "deps"
        # The .blend's folder appears read-only at its own path, so that Blender resolves the
        # file's paths exactly as it would outside the sandbox.
        argv = Sandbox(scene, out, deps, ro_paths=(str(folder),)).argv(_blend_argv(blend))
        rc, log, timed_out = _run(argv, timeout)
        result = out / INSPECT_JSON
        if timed_out:
            raise PackError(f"{path}: Blender did not finish reading the file within {timeout:g} s")
        if rc != 0 or not result.is_file():
            reason = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
            raise PackError(f"{path}: Blender could not read the file ({reason}): {_blender_errors(log)}")
        try:
            return json.loads(result.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise PackError(f"{path}: the inspection's output is not JSON: {exc}") from None


def _run(argv: list[str], timeout: float) -> tuple[int, str, bool]:
    """Run argv in its own process group; kill the group on timeout. Returns (exit code, the
    tail of stdout+stderr, timed out)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        output, _ = proc.communicate()
        timed_out = True
    except BaseException:
        kill_group(proc.pid)
        proc.wait()
        raise
    return proc.returncode, output.decode("utf-8", "replace")[-LOG_TAIL_CHARS:], timed_out


def _blender_errors(log: str) -> str:
    """Blender's error lines from a log, else its last lines."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"error|failed|cannot|traceback", ln, re.IGNORECASE)]
    return " | ".join((errors or lines)[-6:]) or "no output"


# ---------------------------------------------------------------------------------------------
# Finding the files


def _expand(entry: dict) -> list[str]:
    """The concrete files of one entry: UDIM tiles, every frame of a numbered sequence, or the
    one path."""
    path = entry["path"]
    tiles = entry.get("tiles") or []
    if tiles and ("<UDIM>" in path or "<UVTILE>" in path):
        found = []
        for n in tiles:
            u, v = (n - 1001) % 10 + 1, (n - 1001) // 10 + 1
            found.append(path.replace("<UDIM>", str(n)).replace("<UVTILE>", f"u{u}_v{v}"))
        return found
    if entry.get("sequence"):
        directory, name = os.path.split(path)
        match = re.fullmatch(r"(.*?)([0-9]+)([^0-9]*)", name)
        if match and os.path.isdir(directory):
            prefix, _, suffix = match.groups()
            pattern = re.compile(re.escape(prefix) + r"[0-9]+" + re.escape(suffix))
            frames = sorted(os.path.join(directory, n) for n in os.listdir(directory) if pattern.fullmatch(n))
            if frames:
                return frames
    return [path]


def _describe(entry: dict) -> str:
    what = f"{entry['kind']} {entry['name']!r}" if entry.get("name") else entry["kind"]
    if entry.get("library"):
        what += f" (from library {entry['library']})"
    return what


def collect_files(info: dict, root: Path) -> tuple[set[str], list[str], list[str]]:
    """Sort the inspection's files into (relative paths to pack, problems, warnings). A problem
    is a file that is missing or lies outside root; a cache folder that does not exist yet (an
    unbaked simulation) is only a warning."""
    root = root.resolve()
    found: set[str] = set()
    problems: list[str] = []
    warnings: list[str] = []
    for entry in info.get("files", []):
        what = _describe(entry)
        raw = entry.get("raw") or ""
        # Blender on a farm server finds the job at another path: a path stored absolute is not
        # found there, and Blender renders without the file, saying nothing
        stored_absolute = entry.get("kind") != "file" and not raw.startswith("//") and os.path.isabs(raw)
        for path in _expand(entry):
            full = Path(path) if os.path.isabs(path) else root / path
            shown = entry["raw"] if path == entry["path"] else path
            rel = os.path.relpath(os.path.normpath(full), root)
            if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
                state = "" if full.exists() else ", and it does not exist"
                problems.append(f"{what}: {shown}: outside the .blend's folder{state}")
                continue
            if stored_absolute:
                problems.append(f"{what}: {raw}: stored as an absolute path, which other machines do not have; "
                                "make it relative (File > External Data > Make Paths Relative) and save")
                break
            if entry.get("directory"):
                if full.is_dir():
                    found |= _directory_files(full, root, what, problems)
                else:
                    warnings.append(f"{what}: folder {shown} does not exist (a cache not baked yet?)")
                continue
            try:
                found.add(relative_file(rel, root))
            except ValueError as exc:
                problems.append(f"{what}: {shown}: {exc}")
    return found, problems, warnings


def _directory_files(folder: Path, root: Path, what: str, problems: list[str]) -> set[str]:
    """Every regular file under a folder the scene reads (a baked cache)."""
    found: set[str] = set()
    for path in sorted(folder.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        if len(found) >= MAX_DIRECTORY_FILES:
            problems.append(f"{what}: {folder}: more than {MAX_DIRECTORY_FILES} files")
            break
        rel = path.relative_to(root).as_posix()
        try:
            found.add(relative_file(rel, root))
        except ValueError as exc:
            problems.append(f"{what}: {rel}: {exc}")
    return found


# ---------------------------------------------------------------------------------------------
# Packing


def pack_blender(
    source: Path,
    out: Path | None = None,
    *,
    frames: str | None = None,
    width: int | None = None,
    height: int | None = None,
    engine: str | None = None,
    samples: int | None = None,
    name: str | None = None,
    priority: int = 0,
    video: dict[str, str] | None = None,
    timeout: int | None = None,
    chunk: int | None = None,
) -> PackResult:
    """Write a job package for a .blend and return what was written. `video` (ffmpeg
    settings, {} for the defaults) adds an encode frame after the last frame.

    The .blend's folder is the job folder. Frames: `frames` (a frame list such as "1-40" or
    "0,5,1000"), else the scene's frame_start..frame_end in steps of frame_step. `engine`
    (CYCLES, BLENDER_EEVEE or BLENDER_WORKBENCH), `samples`, `width` and `height` override the
    file and are written as settings only when given. The output format is the file's when it is
    a still-image format distren knows (PNG, JPEG, OPEN_EXR, OPEN_EXR_MULTILAYER, TIFF, BMP,
    TARGA), else PNG with a warning. The package, `out` or <stem>.distren.tar.gz in the current
    folder, is a gzip tarball: distrenjob.xml, then the files in sorted order. Raises PackError
    naming every missing or outside file, or the setting or frame the server would refuse."""
    source = Path(source)
    if not source.is_file():
        raise PackError(f"{source}: no such file")
    if source.suffix.lower() != ".blend":
        raise PackError(f"{source.name}: expected a Blender file (.blend)")
    resolved = source.resolve()
    root = resolved.parent
    try:
        blend = relative_file(resolved.name, root)
    except ValueError as exc:
        raise PackError(f"{source}: {exc}") from None

    # The options first, so that a typo costs no Blender start.
    settings: dict[str, str] = {"blend": blend}
    try:
        if engine is not None:
            settings["engine"] = choice_setting("engine", str(engine), ENGINES)
        for key, value, hi in (("samples", samples, MAX_SAMPLES), ("width", width, MAX_RESOLUTION),
                               ("height", height, MAX_RESOLUTION)):
            if value is not None:
                settings[key] = str(integer_setting(key, str(value), 1, hi))
        frame_ids = parse_frames(frames, DEFAULT_MAX_FRAMES) if frames is not None else None
        if frame_ids is not None:
            check_frames(frame_ids)
    except BadFrameSpec as exc:
        raise PackError(f"--frames: {exc.message}") from None
    except DistrenError as exc:
        raise _as_pack_error(exc) from None

    info = inspect_blend(resolved)
    warnings: list[str] = []
    effective_engine = settings.get("engine", info["engine"])
    if effective_engine not in ENGINES:
        raise PackError(f"{source.name} renders with the engine {info['engine']!r}, which distren's "
                        f"Blender cannot use; choose one of {', '.join(ENGINES)} with --engine")
    file_format = info.get("file_format")
    if file_format in FORMATS:
        settings["format"] = file_format
    else:
        settings["format"] = DEFAULT_FORMAT
        warnings.append(f"the file renders to {file_format}, which is not a still-image format "
                        f"distren renders; frames are written as {DEFAULT_FORMAT}")
    if info.get("camera") is None:
        raise PackError(f"{source.name}: scene {info.get('scene')!r} has no camera, so Blender cannot render it")
    if effective_engine == "CYCLES" and info.get("denoising"):
        warnings.append("Cycles denoising is on in the file; distren renders without it (Debian's "
                        "Blender has no OpenImageDenoise, and every worker must give the same pixels)")
    if effective_engine == "BLENDER_WORKBENCH" and samples is not None:
        warnings.append("<samples> has no effect with the Workbench engine")
    if frame_ids is None:
        frame_ids = _default_frames(info)

    found, problems, file_warnings = collect_files(info, root)
    warnings += file_warnings
    if problems:
        raise PackError(f"cannot pack {blend}: {len(problems)} file(s) missing or outside the .blend's "
                        f"folder: " + "; ".join(problems) + f". To fix: {HINT}")
    files = sorted(found | {blend})
    if JOB_XML_NAME in files:
        raise PackError(f"{JOB_XML_NAME}: the scene uses a file with the name of the job description; rename it")

    job_name = name if name is not None else PurePosixPath(blend).stem
    spec = JobSpec(name=job_name, backend="blender", settings=settings,
                   frames=[FrameSpec(i) for i in frame_ids], priority=priority, timeout=timeout,
                   chunk=chunk)
    warnings += [w for w in _check_as_the_server_will(settings, frame_ids, files, root) if w not in warnings]
    target = write_job(spec, root, files, out, PurePosixPath(blend).stem, video)
    return PackResult(path=target, spec=spec, files=files, warnings=warnings)


def _default_frames(info: dict) -> list[int]:
    """The scene's own frames: frame_start..frame_end in steps of frame_step."""
    start, end, step = int(info["frame_start"]), int(info["frame_end"]), max(1, int(info["frame_step"]))
    if start < 0:
        raise PackError(f"the scene starts at frame {start}; distren frames are >= 0, choose some with --frames")
    end = min(end, MAX_FRAME)
    if end < start:
        raise PackError(f"the scene's frame range {start}-{end} is empty; choose frames with --frames")
    if (end - start) // step + 1 > DEFAULT_MAX_FRAMES:
        raise PackError(f"the scene has frames {start}-{end}: more than {DEFAULT_MAX_FRAMES} frames; "
                        "choose some with --frames")
    return list(range(start, end + 1, step))


def _check_as_the_server_will(settings: dict[str, str], frame_ids: list[int], files: list[str],
                              root: Path) -> list[str]:
    """Check the settings with the server's own code in a folder holding only the packed files
    (the .blend's first bytes, so that its header is seen, and empty stand-ins for the rest).
    Returns the check's warnings."""
    with tempfile.TemporaryDirectory(prefix="distren-check-") as scratch:
        folder = Path(scratch)
        for rel in files:
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if rel == settings["blend"]:
                with open(root / rel, "rb") as fh:
                    path.write_bytes(fh.read(64))
            else:
                path.touch()
        try:
            return BlenderBackend().check(settings, folder, frame_ids)
        except DistrenError as exc:
            raise PackError(f"the package would be refused: {exc.message}") from None

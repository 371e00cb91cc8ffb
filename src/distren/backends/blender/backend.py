"""The Blender backend (Blender 3.x, background mode).

Frame N of a job renders as

    blender -b -noaudio --factory-startup /job/<blend> --disable-autoexec [-E ENGINE]
            -t <threads> --python-exit-code 1 --python-expr <CODE>
            -o /job/_distren/out/<stem>_###### -F <FORMAT> -f N

Blender runs its arguments in order, so the scene is loaded first, then CODE adjusts it, then
`-o` and `-F` set the output, and `-f` renders. CODE is written by distren from validated values
only (integers and enum names, never text from the job): it applies the job's resolution and
samples, turns Cycles denoising off (Debian's Blender is built without OpenImageDenoise, and
every worker must give the same pixels), sends compositor File Output nodes into the frame's
output folder and gives Mesa's software OpenGL the frame's thread count. `--disable-autoexec` keeps scripts inside the .blend (registered text blocks,
Python driver expressions) from running; the sandbox contains what Blender does anyway.

The frame number is always an integer distren formats itself: Blender reads `-f -2` as "two
before the end", so no job text ever reaches that position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ...errors import BadSettings
from ..base import Backend, FrameTask, PackOption, positive_int, probe_version
from ..base import relative_file
from ..sandbox import JOB_DIR, OUT_DIR

if TYPE_CHECKING:
    from ...pack import PackRequest, PackResult

BLENDER_SETTINGS = ("blend", "engine", "samples", "width", "height", "format")

ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH")
# Still-image formats distren renders to (Blender's names), and the extension Blender gives each.
FORMATS = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "OPEN_EXR": ".exr",
    "OPEN_EXR_MULTILAYER": ".exr",
    "TIFF": ".tif",
    "BMP": ".bmp",
    "TARGA": ".tga",
}
DEFAULT_FORMAT = "PNG"

MAX_FRAME = 1048574          # Blender's MAXFRAME: the highest frame it renders
MAX_SAMPLES = 65536
MAX_RESOLUTION = 16384
MAX_THREADS = 1024           # `-t` accepts 0..1024

# Every .blend starts with one of these: "BLENDER" (uncompressed), gzip, or zstd (3.0 and later).
BLEND_MAGICS = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")

DENOISE_MESSAGE = "distren: denoising switched off (this Blender has no OpenImageDenoise)"
DENOISE_MESSAGE_CONSISTENT = ("distren: denoising switched off (distren renders Cycles without "
                              "denoising on every worker, so that all frames match)")

_INT_RE = re.compile(r"[0-9]{1,9}")
_STEM_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_BEGUN = re.compile(r"^Fra:(\d+) ", re.M)


@dataclass(frozen=True)
class BlenderPlan:
    """A job's validated Blender settings."""

    blend: str                      # relative POSIX path of the .blend inside the job folder
    engine: str | None = None       # None: the engine saved in the file
    samples: int | None = None
    width: int | None = None
    height: int | None = None
    format: str = DEFAULT_FORMAT

    @property
    def output_stem(self) -> str:
        """The output files' name before the frame number: the .blend's stem, made safe for
        Blender's output path (no '#', which Blender replaces by the frame number)."""
        stem = _STEM_UNSAFE.sub("_", PurePosixPath(self.blend).stem).strip("._")
        return stem[:100] or "frame"


def integer_setting(key: str, text: str, lo: int, hi: int) -> int:
    """A setting that must be a plain decimal integer in lo..hi."""
    if not _INT_RE.fullmatch(text):
        raise BadSettings(f"blender setting <{key}>: {_show(text)} is not an integer from {lo} to {hi}")
    value = int(text)
    if not lo <= value <= hi:
        raise BadSettings(f"blender setting <{key}>: {value} is outside {lo}..{hi}")
    return value


def choice_setting(key: str, text: str, choices: Iterable[str]) -> str:
    """A setting that must be one of Blender's enum names (any case)."""
    options = tuple(choices)
    value = text.strip().upper()
    if value not in options:
        raise BadSettings(f"blender setting <{key}>: {_show(text)} is not one of {', '.join(options)}")
    return value


def _show(text: str, limit: int = 60) -> str:
    """A hostile value, shortened and quoted, for messages."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def is_blend_file(path: Path) -> bool:
    """Whether the file starts like a .blend (plain, gzip- or zstd-compressed)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return head.startswith(BLEND_MAGICS)


def plan(settings: dict[str, str], scene: Path) -> BlenderPlan:
    """Check a job's `<backend name="blender">` settings against its job folder `scene` and
    return them validated. Raises BadSettings naming every unknown setting, or the first bad
    value."""
    unknown = sorted(set(settings) - set(BLENDER_SETTINGS))
    if unknown:
        raise BadSettings("unknown blender setting(s): " + ", ".join(f"<{k}>" for k in unknown)
                          + f" (known: {', '.join(BLENDER_SETTINGS)})")
    text = settings.get("blend")
    if text is None:
        raise BadSettings("blender setting <blend> is required: the .blend file to render")
    try:
        blend = relative_file(text, scene)
    except ValueError as exc:
        raise BadSettings(f"blender setting <blend> {_show(text)}: {exc}") from None
    if PurePosixPath(blend).suffix.lower() != ".blend":
        raise BadSettings(f"blender setting <blend> {_show(text)}: expected a .blend file")
    if not is_blend_file(Path(scene, blend)):
        raise BadSettings(f"blender setting <blend> {_show(text)}: the file is not a .blend file "
                          "(it does not start with Blender's file header)")
    values: dict = {"blend": blend}
    if "engine" in settings:
        values["engine"] = choice_setting("engine", settings["engine"], ENGINES)
    if "format" in settings:
        values["format"] = choice_setting("format", settings["format"], FORMATS)
    if "samples" in settings:
        values["samples"] = integer_setting("samples", settings["samples"], 1, MAX_SAMPLES)
    for key in ("width", "height"):
        if key in settings:
            values[key] = integer_setting(key, settings[key], 1, MAX_RESOLUTION)
    return BlenderPlan(**values)


def check_frames(frame_ids: Iterable[int]) -> None:
    """Refuse an empty frame list and frames Blender cannot render (above MAXFRAME)."""
    ids = list(frame_ids)
    if not ids:
        raise BadSettings("the job has no frames")
    for frame in ids:
        if not 0 <= frame <= MAX_FRAME:
            raise BadSettings(f"frame {frame} is outside Blender's frame range 0-{MAX_FRAME}")


def render_code(p: BlenderPlan, threads: int = 1) -> str:
    """The Python that Blender runs after loading the scene and before rendering. Only validated
    integers and enum names are put into it, through repr().

    It also limits Mesa's software OpenGL (which Workbench and Eevee draw with, and which starts
    after this code runs) to `threads` rasteriser threads, as `-t` does for Blender's own; the
    pixels do not depend on the number."""
    lines = [
        "import os",
        f"os.environ['LP_NUM_THREADS'] = {str(int(threads))!r}",
        "import bpy",
        "scene = bpy.context.scene",
        "render = scene.render",
        "render.use_placeholder = False",
        "render.use_overwrite = True",
        "render.use_file_extension = True",
    ]
    if p.width is not None:
        lines.append(f"render.resolution_x = {int(p.width)!r}")
    if p.height is not None:
        lines.append(f"render.resolution_y = {int(p.height)!r}")
    if p.width is not None or p.height is not None:
        lines.append("render.resolution_percentage = 100")
    if p.samples is not None:
        lines += [
            f"scene.cycles.samples = {int(p.samples)!r}",
            f"scene.eevee.taa_render_samples = {int(p.samples)!r}",
        ]
    lines += [
        "if render.engine == 'CYCLES':",
        "    layers = [v for v in scene.view_layers if v.cycles.use_denoising]",
        "    if scene.cycles.use_denoising and layers:",
        "        import _cycles",
        f"        print({DENOISE_MESSAGE!r} if not _cycles.with_openimagedenoise"
        f" else {DENOISE_MESSAGE_CONSISTENT!r}, flush=True)",
        "    scene.cycles.use_denoising = False",
        "    for layer in scene.view_layers:",
        "        layer.cycles.use_denoising = False",
        # Compositor File Output nodes write into the frame's output folder, one subfolder each.
        "if scene.use_nodes and scene.node_tree is not None:",
        "    for node in scene.node_tree.nodes:",
        "        if node.type == 'OUTPUT_FILE':",
        f"            node.base_path = {OUT_DIR!r} + '/' + bpy.path.clean_name(node.name) + '/'",
    ]
    return "\n".join(lines) + "\n"


def frame_argv(p: BlenderPlan, frame: int, threads: int, executable: str = "blender",
               last: int | None = None) -> list[str]:
    """Blender's argv (paths inside the sandbox) rendering `frame` of plan `p` (through frame
    `last` when given: a chunk, `-s A -e B -j 1 -a`, every frame of the range whatever the
    .blend's frame step)."""
    last = frame if last is None else last
    for value in (frame, last):
        if not isinstance(value, int) or not 0 <= value <= MAX_FRAME:
            raise ValueError(f"frame {value!r} is outside Blender's frame range 0-{MAX_FRAME}")
    if last < frame:
        raise ValueError(f"frames {frame}-{last} are not a range")
    argv = [executable, "-b", "-noaudio", "--factory-startup", f"{JOB_DIR}/{p.blend}", "--disable-autoexec"]
    if p.engine is not None:
        argv += ["-E", p.engine]
    threads = max(1, min(int(threads), MAX_THREADS))
    argv += [
        "-t", str(threads),
        "--python-exit-code", "1",
        "--python-expr", render_code(p, threads),
        "-o", f"{OUT_DIR}/{p.output_stem}_######",
        "-F", p.format,
    ]
    if last == frame:
        argv += ["-f", str(frame)]
    else:
        argv += ["-s", str(frame), "-e", str(last), "-j", "1", "-a"]
    return argv


class BlenderBackend(Backend):
    """Renders one frame of a .blend with Blender in the sandbox."""

    name = "blender"
    executable = "blender"
    # Blender needs nothing outside what every sandbox sees: /usr, plus /etc/alternatives for
    # Debian's libblas/liblapack links. Eevee and Workbench draw with Mesa's software OpenGL
    # through surfaceless EGL, so no /dev/dri.
    ro_paths: tuple[str, ...] = ()
    env: dict[str, str] = {}
    source_suffixes = (".blend",)
    pack_options = (
        PackOption("--engine", "Blender: CYCLES, BLENDER_EEVEE or BLENDER_WORKBENCH (default: the file's)"),
        PackOption("--samples", "Blender: render samples (default: the file's)", type=positive_int),
    )

    def version(self) -> str | None:
        return blender_version()

    def pack(self, source: Path, out: Path | None, request: "PackRequest") -> "PackResult":
        from .pack import pack_blender

        return pack_blender(source, out, frames=request.frames, width=request.width, height=request.height,
                            engine=request.options.get("engine"), samples=request.options.get("samples"),
                            name=request.name, priority=request.priority, video=request.video,
                            timeout=request.timeout, chunk=request.chunk)

    def check(self, settings: dict[str, str], scene: Path, frame_ids: list[int]) -> list[str]:
        p = plan(settings, scene)
        check_frames(frame_ids)
        warnings = []
        if p.samples is not None and p.engine == "BLENDER_WORKBENCH":
            warnings.append("<samples> has no effect with the Workbench engine")
        return warnings

    def command(self, task: FrameTask) -> list[str]:
        return frame_argv(plan(task.settings, task.scene), task.frame, task.threads, self.executable,
                          last=task.chunk[-1])

    def chunkable(self, settings: dict[str, str]) -> bool:
        return True

    def frame_begun(self, task: FrameTask, output: str) -> int | None:
        """Blender prints "Fra:N" lines while it renders frame N, from after it saved the frame
        before."""
        found = _BEGUN.findall(output)
        frame = int(found[-1]) if found else None
        return frame if frame in task.chunk else None

    def split_outputs(self, task: FrameTask, outputs: list[Path]) -> dict[int, list[Path]]:
        """Each frame's image(s) `<stem>_<frame:06d>[_<view>].<ext>` in the output folder, and
        the compositor File Output images in its subfolders whose file name (without its
        extension) ends in the frame number, zero-padded to at least 4 digits as Blender writes
        it (`Image0003.png`). Anything else belongs to no frame (the chunk then renders frame
        by frame)."""
        p = plan(task.settings, task.scene)
        frames = set(task.chunk)
        split: dict[int, list[Path]] = {f: [] for f in task.chunk}
        top = re.compile(re.escape(p.output_stem) + r"_(\d{6,7})(?:_[^.]*)?\..+")
        for path in outputs:
            if path.parent == task.out:
                m = top.fullmatch(path.name)
            else:
                m = re.fullmatch(r".*?(\d{4,7})", path.name.split(".", 1)[0])
            if m and int(m.group(1)) in frames:
                split[int(m.group(1))].append(path)
        return split


def blender_version() -> str | None:
    """Blender's version from `blender --version` ("3.4.1"), or None when it is not installed."""
    return probe_version("blender", "--version", r"^Blender\s+(\S+)")

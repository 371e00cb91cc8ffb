"""The POV-Ray 3.7 backend.

Frame N is rendered with the job's animation settings and `Subset_Start_Frame=N
Subset_End_Frame=N`, so POV-Ray computes the clock itself, exactly as `povray scene.ini +SFN +EFN`
would. The job's INI is never passed through: `povray_ini` parses it and keeps only known-safe,
type-checked options (see docs/povray.md).

Radiosity pre-pass (setting `radiosity-prepass` = a frame id): that frame saves its radiosity
data (`radiosity.rad`, part of its output); every other frame depends on it, finds the file in
its dependency folder and loads it. POV-Ray silently recomputes when the file is missing, so the
backend checks that it arrived, and that the pre-pass frame really wrote one.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ...errors import BadSettings, DistrenError
from . import ini as povray_ini
from ..base import Backend, FrameTask, PackOption, probe_version
from ..sandbox import OUT_DIR

if TYPE_CHECKING:
    from ...pack import PackRequest, PackResult

PREPASS = "radiosity-prepass"
RAD_FILE = "radiosity.rad"  # a fixed name: POV-Ray splits option values at blanks


def _split(settings: dict[str, str]) -> tuple[dict[str, str], int | None]:
    """The settings povray_ini knows, and the pre-pass frame id (checked) if any."""
    rest = {k: v for k, v in settings.items() if k != PREPASS}
    if PREPASS not in settings:
        return rest, None
    text = settings[PREPASS]
    if not re.fullmatch(r"0|[1-9][0-9]{0,9}", text):
        raise BadSettings(f"povray {PREPASS} {text!r}: expected a frame id")
    return rest, int(text)


class PovrayBackend(Backend):
    name = "povray"
    executable = "povray"
    ro_paths = ("/etc/povray",)
    # POV-Ray reads ./povray.ini instead of the system one; pin the system file (plan() also
    # refuses a job folder holding povray.ini).
    env = {"POVINI": "/etc/povray/3.7/povray.ini"}

    source_suffixes = (".ini", ".pov")
    pack_options = (
        PackOption("--antialias", "POV-Ray: 'off' or an antialiasing threshold such as 0.3 (overrides the INI)"),
        PackOption("--radiosity-prepass", "POV-Ray: the first frame saves radiosity data, the others load it",
                   type=None),
    )

    def version(self) -> str | None:
        return probe_version("povray", "--version", r"POV-Ray\s+(\S+)")

    def pack(self, source: Path, out: Path | None, request: "PackRequest") -> "PackResult":
        from .pack import pack_povray

        return pack_povray(source, out, frames=request.frames, width=request.width, height=request.height,
                           antialias=request.options.get("antialias"), name=request.name,
                           priority=request.priority, video=request.video,
                           radiosity_prepass=bool(request.options.get("radiosity_prepass")),
                           timeout=request.timeout, chunk=request.chunk)

    def check(self, settings: dict[str, str], scene: Path, frame_ids: list[int]) -> list[str]:
        rest, prepass = _split(settings)
        plan = povray_ini.plan(rest, scene)
        povray_ini.check_frames(plan, frame_ids)
        if prepass is not None and prepass not in frame_ids:
            raise BadSettings(f"povray {PREPASS} names frame {prepass}, which the job does not render with POV-Ray")
        return plan.warnings

    def _prepass_dir(self, task: FrameTask, prepass: int) -> Path:
        suffix = f"/{task.job}/{prepass}"
        for url in task.depends:
            if url.endswith(suffix) and url.startswith(f"distren://{task.home}/"):
                return task.dep_dir(url)
        raise DistrenError(f"frame {task.frame} does not depend on the radiosity pre-pass frame {prepass}")

    def prepare(self, task: FrameTask) -> None:
        _, prepass = _split(task.settings)
        if prepass is None or prepass == task.frame:
            return
        rad = self._prepass_dir(task, prepass) / RAD_FILE
        if not rad.is_file() or rad.stat().st_size == 0:
            raise DistrenError(f"the radiosity file {rad.name} of pre-pass frame {prepass} did not arrive")

    def command(self, task: FrameTask) -> list[str]:
        rest, prepass = _split(task.settings)
        plan = povray_ini.plan(rest, task.scene)
        stem = PurePosixPath(plan.scene).stem
        # radiosity with several threads differs from render to render: one thread makes every
        # render of a frame (a chunk or alone, here or on a peer, a retry) the same image
        threads = 1 if task.threads and uses_radiosity(task.scene) else task.threads
        args = [self.executable, *povray_ini.frame_args(plan, task.frame, f"{OUT_DIR}/{stem}", threads=threads,
                                                        last=task.chunk[-1])]
        if prepass == task.frame:
            args += [f"Radiosity_File_Name={OUT_DIR}/{RAD_FILE}", "Radiosity_To_File=on"]
        elif prepass is not None:
            rad = task.sandbox_path(self._prepass_dir(task, prepass) / RAD_FILE)
            args += [f"Radiosity_File_Name={rad}", "Radiosity_From_File=on"]
        return args

    def outputs(self, out: Path) -> list[Path]:
        """Every file POV-Ray wrote but its `.pov-state` files: the state of a trace under way
        (for +C, continuing it), which it removes when the frame ends, so one is left only by
        a render stopped mid-frame (a timeout, a split chunk): never a frame's output."""
        return [p for p in super().outputs(out) if not p.name.endswith(STATE_SUFFIX)]

    def chunkable(self, settings: dict[str, str]) -> bool:
        """An animation renders a range of frames in one run (`+SFa +EFb`), computing each
        frame's clock exactly as for one frame; not with a radiosity pre-pass (its frames
        differ in their arguments)."""
        return _split(settings)[1] is None

    def frame_begun(self, task: FrameTask, output: str) -> int | None:
        """POV-Ray prints "Rendering frame K of N" (K counted from 1 within the run) when it
        begins a frame, after it wrote the one before."""
        found = _BEGUN.findall(output)
        if not found:
            return None
        k, n = (int(v) for v in found[-1])
        chunk = task.chunk
        return chunk[k - 1] if n == len(chunk) and 1 <= k <= n else None

    def split_outputs(self, task: FrameTask, outputs: list[Path]) -> dict[int, list[Path]]:
        """Each frame's image, by the name POV-Ray gives it (`output_file`)."""
        rest, _ = _split(task.settings)
        plan = povray_ini.plan(rest, task.scene)
        stem = PurePosixPath(plan.scene).stem
        by_name = {p.name: p for p in outputs if p.parent == task.out}
        split = {}
        for frame in task.chunk:
            name = PurePosixPath(povray_ini.output_file(plan, frame, stem)).name
            split[frame] = [by_name[name]] if name in by_name else []
        return split

    def verify(self, task: FrameTask, outputs: list[Path]) -> str | None:
        _, prepass = _split(task.settings)
        if prepass == task.frame and not any(p.name == RAD_FILE and p.stat().st_size > 0 for p in outputs):
            # without a radiosity block POV-Ray writes an empty file
            return f"the radiosity pre-pass wrote no {RAD_FILE} data (does the scene use radiosity?)"
        return None


STATE_SUFFIX = ".pov-state"
_BEGUN = re.compile(r"^Rendering frame (\d+) of (\d+)", re.M)
SDL_SUFFIXES = (".pov", ".inc", ".mcr", ".mac")
_WORD = b"radiosity"


def uses_radiosity(scene: Path) -> bool:
    """Whether any scene-description file of the job folder (.pov, .inc, .mcr, .mac) holds the
    word `radiosity` (comments too: a false alarm only costs speed). POV-Ray's radiosity is not
    deterministic with more than one render thread (two renders of one frame differ by a few
    levels), so such scenes render with one. Read in blocks, once per scene folder (they never
    change: a scene folder is named by its seed's hash), bounded by the package limits."""
    try:
        key = (str(scene), scene.stat().st_mtime_ns)
    except OSError:
        return False
    return _uses_radiosity(key)


@functools.lru_cache(maxsize=256)
def _uses_radiosity(key: tuple[str, int]) -> bool:
    for path in sorted(Path(key[0]).rglob("*")):
        if path.suffix.lower() not in SDL_SUFFIXES or path.is_symlink() or not path.is_file():
            continue
        tail = b""
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                if _WORD in tail + block:
                    return True
                tail = block[-(len(_WORD) - 1):]
    return False

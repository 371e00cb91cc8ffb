"""A third-party distren backend, as a plug-in would ship it: registered through the
`distren.backends` entry point (see the .dist-info beside this file), installed without
touching distren. It renders `.toy` scenes with the `toyrender` program beside it, packs them
(`distren pack scene.toy`, with its own `--supersample` option) and renders chunks of frames in
one run. distren's tests put this folder on the Python path."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from distren.backends.base import Backend, FrameTask, PackOption, positive_int, probe_version, relative_file
from distren.backends.sandbox import JOB_DIR, OUT_DIR
from distren.errors import BadSettings, PackError
from distren.frames import parse_frames
from distren.job.spec import DEFAULT_MAX_FRAMES, FrameSpec, JobSpec
from distren.pack import PackRequest, PackResult, write_job

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "toyrender"
SETTINGS = {"scene", "width", "height", "supersample"}
FILE_LINE = re.compile(r'^\s*(include|palette)\s+"([^"]*)"', re.M)
FRAMES_LINE = re.compile(r"^\s*frames\s+(\d+)\s+(\d+)", re.M)


def _number(settings: dict[str, str], key: str, most: int) -> None:
    if key in settings and not (settings[key].isdigit() and 1 <= int(settings[key]) <= most):
        raise BadSettings(f"toy {key} {settings[key]!r}: expected a whole number from 1 to {most}")


class ToyBackend(Backend):
    name = "toy"
    executable = str(PROGRAM)
    ro_paths = (str(HERE),)          # the program, read-only inside the sandbox
    source_suffixes = (".toy",)
    pack_options = (PackOption("--supersample", "toy: samples per pixel along each axis (default 1)",
                               type=positive_int),)

    def version(self) -> str | None:
        return probe_version(self.executable, "--version", r"toyrender (\S+)")

    # -- the server's side ----------------------------------------------------------------
    def check(self, settings: dict[str, str], scene: Path, frame_ids: list[int]) -> list[str]:
        unknown = sorted(set(settings) - SETTINGS)
        if unknown:
            raise BadSettings(f"toy settings not known: {', '.join(unknown)}")
        if "scene" not in settings:
            raise BadSettings("toy needs the setting 'scene'")
        try:
            relative_file(settings["scene"], scene)
        except ValueError as exc:
            raise BadSettings(f"toy scene {settings['scene']!r}: {exc}") from None
        _number(settings, "width", 4096)
        _number(settings, "height", 4096)
        _number(settings, "supersample", 8)
        return []

    def command(self, task: FrameTask) -> list[str]:
        s = task.settings
        argv = [self.executable, f"{JOB_DIR}/{s['scene']}", "--first", str(task.frame),
                "--last", str(task.chunk[-1]), "--out", OUT_DIR]
        for key in ("width", "height", "supersample"):
            if key in s:
                argv += [f"--{key}", s[key]]
        return argv

    def chunkable(self, settings: dict[str, str]) -> bool:
        return True

    def split_outputs(self, task: FrameTask, outputs: list[Path]) -> dict[int, list[Path]]:
        by_name = {p.name: p for p in outputs}
        return {f: [by_name[n]] if (n := f"toy_{f:06d}.png") in by_name else [] for f in task.chunk}

    # -- the client's side: distren pack --------------------------------------------------
    def pack(self, source: Path, out: Path | None, request: PackRequest) -> PackResult:
        root = source.resolve().parent
        files: set[str] = set()
        todo = [source.name]
        while todo:
            rel = todo.pop()
            if rel in files:
                continue
            try:
                rel = relative_file(rel, root)
            except ValueError as exc:
                raise PackError(f"cannot pack {rel}: {exc}") from None
            files.add(rel)
            if rel.endswith(".toy"):
                folder = PurePosixPath(rel).parent
                text = (root / rel).read_text(encoding="utf-8", errors="replace")
                todo += [(folder / name).as_posix() for _, name in FILE_LINE.findall(text)]
        first_scene = (root / source.name).read_text(encoding="utf-8", errors="replace")
        if request.frames is not None:
            frame_ids = parse_frames(request.frames, DEFAULT_MAX_FRAMES)
        elif (m := FRAMES_LINE.search(first_scene)):
            frame_ids = list(range(int(m[1]), int(m[2]) + 1))
        else:
            frame_ids = [0]
        settings = {"scene": source.name}
        for key, value in (("width", request.width), ("height", request.height),
                           ("supersample", request.options.get("supersample"))):
            if value is not None:
                settings[key] = str(value)
        self.check(settings, root, frame_ids)
        spec = JobSpec(name=request.name or source.stem, backend=self.name, settings=settings,
                       frames=[FrameSpec(i) for i in frame_ids], priority=request.priority,
                       timeout=request.timeout, chunk=request.chunk)
        path = write_job(spec, root, sorted(files), out, source.stem, request.video)
        return PackResult(path=path, spec=spec, files=sorted(files))

"""`distren pack` of a POV-Ray scene (the POV-Ray backend's packing).

The package holds `distrenjob.xml` and every local file the scene needs: the .pov, its INI
and the INIs that includes, and whatever the scene reads (local #include files, image maps,
fonts, density files, #fopen ... read). Those are found by reading the scene's text (see
scan_scene); files of POV-Ray's own distribution, such as colors.inc, stay out, since every
worker has them. The result is checked with the same code the server runs, so a package
`distren pack` writes is never refused for its settings.
"""

from __future__ import annotations

import posixpath
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...errors import BadFrameSpec, DistrenError, PackError
from ...frames import parse_frames
from ...job.spec import DEFAULT_MAX_FRAMES, FrameSpec, JobSpec, draft_dep
from ...pack import PackResult, _as_pack_error, write_job
from .backend import PovrayBackend
from .ini import MAX_INI_BYTES, PovrayPlan, check_frames, parse_ini, plan, relative_file

# Where POV-Ray finds its own include files: the Library_Path entries of the povray.ini that
# POV-Ray 3.7 installs (/etc/povray/3.7/povray.ini on Debian and Ubuntu).
SYSTEM_DIRS = (
    Path("/usr/share/povray-3.7"),
    Path("/usr/share/povray-3.7/ini"),
    Path("/usr/share/povray-3.7/include"),
)

# The files of POV-Ray 3.7's include folder, so that a scene using them can be packed on a
# machine without POV-Ray.
STANDARD_FILES = frozenset(
    """
    Mount1.png Mount2.png arrays.inc ash.map benediti.map bubinga.map bumpmap_.png cedar.map
    chars.inc colors.inc consts.inc crystal.ttf cyrvetic.ttf debug.inc finish.inc fract003.png
    functions.inc glass.inc glass_old.inc golds.inc ior.inc logo.inc makegrass.inc marbteal.map
    math.inc meshmaker.inc metals.inc mtmand.pot mtmandj.png orngwood.map pinkmarb.map
    plasma2.png plasma3.png povlogo.ttf povmap.png rad_def.inc rand.inc rdgranit.map screen.inc
    shapes.inc shapes2.inc shapes3.inc shapes_old.inc shapesq.inc skies.inc spiral.df3
    stage1.inc stars.inc stdcam.inc stdinc.inc stoneold.inc stones.inc stones1.inc stones2.inc
    strings.inc sunpos.inc teak.map test.png textures.inc timrom.ttf transforms.inc
    ttffonts.cat whiteash.map woodmaps.inc woods.inc
    """.split()
)

# A string after one of these keywords is a file of that type; POV-Ray adds the extension
# when the name has none.
FILE_KEYWORDS = {
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "gif": (".gif",),
    "tga": (".tga",),
    "iff": (".iff",),
    "ppm": (".ppm",),
    "pgm": (".pgm",),
    "hdr": (".hdr",),
    "exr": (".exr",),
    "tiff": (".tif", ".tiff"),
    "sys": (),
    "bmp": (".bmp",),
    "ttf": (".ttf",),
    "df3": (".df3",),
}
# `image_map { "file.png" }`: POV-Ray 3.7 also takes a file without a type keyword.
MAP_KEYWORDS = frozenset({"image_map", "bump_map", "normal_map", "material_map", "height_field", "image_pattern"})
# Files found by name that are scene text themselves, and so are scanned in turn.
SDL_SUFFIXES = frozenset({".pov", ".inc", ".mcr", ".mac"})
# Outputs of the frames a job depends on appear here at render time (see docs/job-format.md).
DEPS_PREFIX = "_distren/"


# ---------------------------------------------------------------------------------------------
# Reading scenes

_TOKEN_RE = re.compile(
    r"""
      (?P<comment>//[^\r\n]*)
    | (?P<block>/\*)
    | (?P<string>"(?:[^"\\\r\n]|\\.)*"?)
    | (?P<directive>\#[ \t]*[A-Za-z_][A-Za-z0-9_]*)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<brace>\{)
    | (?P<run>[^"/\#A-Za-z_{]+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_BLANK_RE = re.compile(r"\s+")
_BLOCK_MARK_RE = re.compile(r"/\*|\*/")


@dataclass(frozen=True)
class _Token:
    kind: str  # "string", "directive", "word" or "other"
    text: str  # a string's value, a directive's name without '#', else the text itself
    line: int


def _unescape(body: str) -> str:
    """A POV-Ray string literal's value: `\\\\` and `\\"` are the escapes that matter for file names."""
    return re.sub(r'\\([\\"])', r"\1", body)


def _tokens(text: str) -> Iterator[_Token]:
    """The tokens of scene text without blanks and comments. Block comments nest, as in POV-Ray.
    Numbers and operators come as one "other" token per run: no rule needs them one by one,
    and meshes of millions of numbers then scan quickly."""
    pos, line = 0, 1
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        assert match is not None  # the last alternative matches any character
        kind, value = match.lastgroup, match.group()
        end = match.end()
        if kind == "block":
            depth = 1
            for mark in _BLOCK_MARK_RE.finditer(text, end):
                depth += 1 if mark.group() == "/*" else -1
                if depth == 0:
                    end = mark.end()
                    break
            else:
                end = len(text)
        elif kind == "string":
            body = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
            yield _Token("string", _unescape(body), line)
        elif kind == "directive":
            yield _Token("directive", value[1:].strip(), line)
        elif kind == "word":
            yield _Token("word", value, line)
        elif kind == "brace":
            yield _Token("other", "{", line)
        elif kind in ("run", "other") and not _BLANK_RE.fullmatch(value):
            yield _Token("other", value.strip(), line)
        line += text.count("\n", pos, end)
        pos = end


def _in_system_dir(path: Path) -> bool:
    return any(path.is_relative_to(d) for d in SYSTEM_DIRS)


def _is_system_file(name: str, extensions: tuple[str, ...]) -> bool:
    """Whether POV-Ray finds `name` in its own library folders."""
    candidates = [name, *(name + ext for ext in extensions)]
    for candidate in candidates:
        if PurePosixPath(candidate).name == candidate and candidate in STANDARD_FILES:
            return True
        if any((d / candidate).is_file() for d in SYSTEM_DIRS):
            return True
    return False


class _SceneScanner:
    """Follows a scene and its local includes, collecting the files they use."""

    def __init__(self, root: Path):
        self.root = root
        self.found: set[str] = set()
        self.missing: list[str] = []
        self.scanned: set[str] = set()

    def scan(self, rel: str) -> None:
        if rel in self.scanned:
            return
        self.scanned.add(rel)
        self.found.add(rel)
        text = (self.root / rel).read_bytes().decode("utf-8", errors="replace")
        prev: _Token | None = None
        prev2: _Token | None = None
        reading: tuple[str, str] | None = None  # a #fopen file whose mode comes next
        for token in _tokens(text):
            if reading is not None:
                if token.kind == "word" and token.text == "read":
                    self.use(reading[0], reading[1], (), system_ok=False)
                # write and append name an output of the scene, not an input
                reading = None
            if token.kind == "string":
                where = f"{rel} line {token.line}"
                if prev and prev.kind == "directive" and prev.text == "include":
                    self.use(token.text, where, (".inc",), system_ok=True)
                elif prev and prev.kind == "word" and prev.text in FILE_KEYWORDS:
                    self.use(token.text, where, FILE_KEYWORDS[prev.text], system_ok=True)
                elif (prev and prev.text == "{" and prev2 and prev2.kind == "word"
                      and prev2.text in MAP_KEYWORDS):
                    self.use(token.text, where, (), system_ok=True)
                elif prev2 and prev2.kind == "directive" and prev2.text == "fopen":
                    reading = (token.text, where)
                else:
                    self.maybe(token.text)
            prev2, prev = prev, token

    def _add(self, rel: str) -> None:
        self.found.add(rel)
        if PurePosixPath(rel).suffix.lower() in SDL_SUFFIXES:
            self.scan(rel)

    def use(self, name: str, where: str, extensions: tuple[str, ...], system_ok: bool) -> None:
        """A file the scene certainly reads: pack it, or report why it cannot be."""
        if name.startswith(DEPS_PREFIX):
            return
        if not name:
            self.missing.append(f'"" (used in {where}): an empty file name')
            return
        if name.startswith("/"):
            if system_ok and _in_system_dir(Path(name)) and Path(name).is_file():
                return
            self.missing.append(f"{name} (used in {where}): absolute paths cannot be packed; "
                                "copy the file into the scene folder and name it relatively")
            return
        normal = posixpath.normpath(name)
        if normal == ".." or normal.startswith("../"):
            self.missing.append(f"{name} (used in {where}): outside the scene folder; "
                                "copy the file into the scene folder")
            return
        first_error = ""
        for candidate in (normal, *(normal + ext for ext in extensions if not PurePosixPath(normal).suffix)):
            try:
                self._add(relative_file(candidate, self.root))
                return
            except ValueError as exc:
                first_error = first_error or str(exc)
        if system_ok and _is_system_file(normal, extensions):
            return
        if first_error == "no such file in the job folder":
            self.missing.append(f"{name} (used in {where})")
        else:
            self.missing.append(f"{name} (used in {where}): {first_error}")

    def maybe(self, name: str) -> None:
        """Any other string: pack it when it names a local file (a texture chosen in a macro,
        say); report it when it names an existing file outside the scene folder."""
        if not name or len(name) > 1024 or name.startswith(DEPS_PREFIX):
            return
        if any(ord(c) < 32 for c in name) or "\\" in name:
            return
        normal = posixpath.normpath(name)
        if name.startswith("/") or normal == ".." or normal.startswith("../"):
            path = Path(name) if name.startswith("/") else self.root / name
            try:
                outside = path.is_file() and not _in_system_dir(path.resolve())
            except OSError:
                outside = False
            if outside:
                self.missing.append(f"{name} (named in a string): a file outside the scene folder; "
                                    "copy it into the scene folder and name it relatively")
            return
        try:
            rel = relative_file(normal, self.root)
        except ValueError:
            return
        self._add(rel)


def scan_scene(pov: Path, root: Path) -> tuple[set[str], list[str]]:
    """The local files a POV-Ray scene uses, found by reading it and, recursively, its local
    includes. Returns (relative POSIX paths found, the scene itself included; descriptions of
    the files that are missing or cannot be packed, such as 'textures/wood.png (used in
    scene.pov line 12)').

    A string is a file when it follows #include (a local file, else one of POV-Ray's own),
    an image or font type keyword (png, jpeg, gif, tga, iff, ppm, pgm, hdr, exr, tiff, sys,
    bmp, ttf, df3), `image_map {` and its kin, or `#fopen ID` with mode read. Any other string
    that names a local file is packed as well. Names are relative to the scene folder, as
    POV-Ray resolves them against its working directory. Comments are skipped."""
    root = Path(root)
    pov = Path(pov)
    try:
        rel = relative_file(pov.resolve().relative_to(root.resolve()).as_posix() if pov.is_absolute()
                            else pov.as_posix(), root)
    except (ValueError, OSError) as exc:
        raise PackError(f"scene {pov}: {exc}") from None
    scanner = _SceneScanner(root)
    scanner.scan(rel)
    return scanner.found, scanner.missing


# ---------------------------------------------------------------------------------------------
# Packing


def _default_frames(povplan: PovrayPlan, subset: tuple[int | None, int | None]) -> list[int]:
    """An animating INI's frames, as `povray scene.ini` renders them: the Subset range when
    the INI gives one, else Initial_Frame..Final_Frame, in steps of Frame_Step."""
    step = int(povplan.options.get("Frame_Step", "1"))
    start = povplan.initial_frame if subset[0] is None else max(subset[0], povplan.initial_frame)
    end = povplan.final_frame if subset[1] is None else max(subset[1], start)
    if (end - start) // step + 1 > DEFAULT_MAX_FRAMES:
        raise PackError(f"the INI animates frames {start}-{end}: more than {DEFAULT_MAX_FRAMES} frames; "
                        "choose some with --frames")
    return list(range(start, end + 1, step))


def pack_povray(
    source: Path,
    out: Path | None = None,
    *,
    frames: str | None = None,
    width: int | None = None,
    height: int | None = None,
    antialias: str | None = None,
    name: str | None = None,
    priority: int = 0,
    video: dict[str, str] | None = None,
    radiosity_prepass: bool = False,
    timeout: int | None = None,
    chunk: int | None = None,
) -> PackResult:
    """Write a job package for a POV-Ray scene and return what was written.

    `video` (ffmpeg settings, {} for the defaults) adds an encode frame after the last frame
    (docs/backends.md). `radiosity_prepass`: the first frame saves its radiosity data and every
    other frame depends on it and loads it (docs/povray.md).

    `source` is a scene.ini (its Input_File_Name names the .pov, else the .pov with the same
    stem) or a bare .pov; its folder is the job folder. Frames: `frames` (a frame list such
    as "1-40" or "0,5,1000"), else the INI's Subset range, else its Initial_Frame..Final_Frame
    when it animates, else the single frame 0 (a still). For a bare .pov (or an INI that does
    not animate) `frames` sets initial-frame and final-frame to the lowest and highest frame,
    so the clock runs from 0 to 1 over them as with `povray +KFI<min> +KFF<max>`; one frame N
    alone gets final-frame N+1, as POV-Ray's clock is not a number when both are equal.
    `width`, `height` and `antialias` ("off" or a threshold) override the INI. The package,
    `out` or <scene stem>.distren.tar.gz in the current folder, is a gzip tarball:
    distrenjob.xml, then the files in sorted order. Raises PackError naming every missing
    file, or the setting or frame that the server would refuse."""
    source = Path(source)
    if not source.is_file():
        raise PackError(f"{source}: no such file")
    root = source.parent.resolve()
    settings: dict[str, str] = {}
    named: list[str] = []
    subset: tuple[int | None, int | None] = (None, None)
    kind = source.suffix.lower()
    try:
        if kind == ".ini":
            parsed = parse_ini(root / source.name, root)
            scene = parsed.options.get("Input_File_Name")
            if scene is None:
                scene = source.with_suffix(".pov").name
                if not (root / scene).is_file():
                    raise PackError(f"{source.name} names no scene (Input_File_Name) and there is "
                                    f"no {scene} beside it")
            settings = {"scene": scene, "ini": source.name}
            named, subset = parsed.files, parsed.subset
        elif kind == ".pov":
            settings = {"scene": source.name}
        else:
            raise PackError(f"{source.name}: expected a POV-Ray scene (.pov) or its INI file (.ini)")
        for key, value in (("width", width), ("height", height), ("antialias", antialias)):
            if value is not None:
                settings[key] = str(value)
        base = plan(settings, root, check_folder=False)

        frame_ids = parse_frames(frames, DEFAULT_MAX_FRAMES) if frames is not None else None
        if base.animated:
            if frame_ids is None:
                frame_ids = _default_frames(base, subset)
        elif frame_ids is None:
            frame_ids = [0]
        elif frame_ids != [0]:
            first, last = min(frame_ids), max(frame_ids)
            settings["initial-frame"] = str(first)
            settings["final-frame"] = str(last if last > first else first + 1)
        final = plan(settings, root, check_folder=False)
        check_frames(final, frame_ids)
    except BadFrameSpec as exc:
        raise PackError(f"--frames: {exc.message}") from None
    except DistrenError as exc:
        raise _as_pack_error(exc) from None

    found, missing = scan_scene(root / final.scene, root)
    header = final.options.get("Include_Header")
    if header is not None:
        more, more_missing = scan_scene(root / header, root)
        found |= more
        missing += more_missing
    if missing:
        raise PackError(f"cannot pack {final.scene}: {len(missing)} file(s) missing or outside the "
                        "scene folder: " + "; ".join(missing))
    files = sorted(found | set(named))
    for rel in files:
        if rel.lower() == "povray.ini":
            raise PackError(f"{rel}: POV-Ray would read a povray.ini at the top of the job folder as "
                            "its own configuration; rename the file")

    job_name = name if name is not None else PurePosixPath(final.scene).stem
    spec = JobSpec(name=job_name, backend="povray", settings=settings,
                   frames=[FrameSpec(i) for i in frame_ids], priority=priority, timeout=timeout,
                   chunk=chunk)
    try:
        if radiosity_prepass:
            add_radiosity_prepass(spec)
    except DistrenError as exc:
        raise _as_pack_error(exc) from None
    _check_as_the_server_will(settings, frame_ids, files, set(named), root)
    target = write_job(spec, root, files, out, PurePosixPath(final.scene).stem, video)
    return PackResult(path=target, spec=spec, files=files, warnings=list(final.warnings))


def add_radiosity_prepass(spec: JobSpec) -> int:
    """The job's first frame saves its radiosity data; every other frame depends on it."""
    first = min(spec.frame_ids())
    if len(spec.frames) < 2:
        raise PackError("a radiosity pre-pass needs at least two frames")
    spec.settings["radiosity-prepass"] = str(first)
    for frame in spec.frames:
        if frame.id != first:
            frame.depends.append(draft_dep(first))
    return first


def _check_as_the_server_will(settings: dict[str, str], frame_ids: list[int], files: list[str],
                              ini_named: set[str], root: Path) -> None:
    """Plan the job in a folder holding only the packed files (those the INI names copied when
    they are small enough to be INIs, the rest empty stand-ins), so that a file the settings
    need but the package lacks is found now rather than by the server."""
    with tempfile.TemporaryDirectory(prefix="distren-check-") as scratch:
        folder = Path(scratch)
        for rel in files:
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            source = root / rel
            if rel in ini_named and source.stat().st_size <= MAX_INI_BYTES:
                path.write_bytes(source.read_bytes())
            else:
                path.touch()
        try:
            PovrayBackend().check(settings, folder, frame_ids)
        except DistrenError as exc:
            raise PackError(f"the package would be refused: {exc.message}") from None



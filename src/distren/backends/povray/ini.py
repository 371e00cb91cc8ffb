"""POV-Ray INI files, read as hostile input, and the command line distren builds from them.

A job's INI file is never handed to POV-Ray. `parse_ini` reads it the way POV-Ray 3.7 does
(`Key=Value` lines, `+W160 -D` switch lines, `;` and `#` comments, `[Section]` headers,
`Include_Ini`, bare file names) and sorts every option into one of three kinds:

* kept: options that only shape the image (size, quality, antialiasing, animation, output
  format). Each value is checked against its type and range and rewritten in a canonical
  form; only these canonical values ever reach POV-Ray's argument list.
* refused: options that run shell commands, write files or widen the include path.
  They raise BadSettings naming the file, the line and the option.
* dropped: options about the display, the console and output control that distren sets
  itself, and any option distren does not know. They produce a warning.

`plan` combines the INI with a job's `<backend name="povray">` settings; `frame_args` turns a
plan into the argv that renders one frame exactly as `povray scene.ini +SFn +EFn` would.

Two POV-Ray habits shape the argv. The Unix front end splits every argument at blanks and
parses the pieces as options again (`"Declare=X=1 +O/tmp/x"` would set an output file), so
every value distren emits is a validated token or a quoted path without quotes inside. And
POV-Ray reads `./povray.ini` in place of the system configuration when it exists, so a job
folder holding one is refused: POV-Ray runs in the job folder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import BadSettings
from ..base import MAX_PATH_CHARS, RESERVED_FOLDER, relative_file  # noqa: F401 (relative_file: used and re-exported)

POVRAY_SETTINGS = (
    "scene",
    "ini",
    "width",
    "height",
    "antialias",
    "initial-frame",
    "final-frame",
    "initial-clock",
    "final-clock",
)

MAX_INI_BYTES = 1024 * 1024
MAX_INCLUDE_DEPTH = 8
# Include_Ini may name the same file many times (no cycle, but a fan-out that grows as the
# product of the counts): cap the INI reads of one plan, and the lines read in all.
MAX_INI_READS = 64
MAX_INI_LINES = 100_000
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# Pinned when the job does not set them, so that every worker renders the same image whatever
# its own povray.ini says. They are the values of the povray.ini POV-Ray ships (800x600, PNG).
DEFAULT_OPTIONS = {"Width": "800", "Height": "600", "Output_File_Type": "N"}

# The file extension POV-Ray gives each output type.
OUTPUT_EXTENSIONS = {
    "N": "png", "P": "ppm", "T": "tga", "C": "tga", "E": "exr", "H": "hdr", "J": "jpg", "B": "bmp",
}

Validator = Callable[[str], str]
"""Checks one option value: returns its canonical text or raises ValueError(reason)."""


# ---------------------------------------------------------------------------------------------
# Value types

_INT_RE = re.compile(r"[+-]?[0-9]{1,12}")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]{1,40}(?:\.[0-9]{0,40})?|\.[0-9]{1,40})(?:[eE][+-]?[0-9]{1,3})?")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_TRUE = frozenset({"on", "true", "yes", "1"})
_FALSE = frozenset({"off", "false", "no", "0"})


def _integer(lo: int, hi: int) -> Validator:
    def check(text: str) -> str:
        if not _INT_RE.fullmatch(text):
            raise ValueError("expected an integer")
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}")
        return str(value)

    return check


def _one_of_ints(*allowed: int) -> Validator:
    def check(text: str) -> str:
        if not _INT_RE.fullmatch(text) or int(text) not in allowed:
            raise ValueError("expected one of " + ", ".join(map(str, allowed)))
        return str(int(text))

    return check


def _parse_float(text: str) -> float:
    if not _FLOAT_RE.fullmatch(text):
        raise ValueError("expected a number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _number(lo: float | None = None, hi: float | None = None, *, above: float | None = None) -> Validator:
    """A float, written back with repr() (which round-trips exactly through C's strtod)."""

    def check(text: str) -> str:
        value = _parse_float(text)
        if lo is not None and value < lo:
            raise ValueError(f"expected a number >= {lo:g}")
        if hi is not None and value > hi:
            raise ValueError(f"expected a number <= {hi:g}")
        if above is not None and value <= above:
            raise ValueError(f"expected a number > {above:g}")
        return repr(value)

    return check


def _boolean(text: str) -> str:
    word = text.lower()
    if word in _TRUE:
        return "on"
    if word in _FALSE:
        return "off"
    raise ValueError("expected on/off, true/false, yes/no or 1/0")


def _gamma(text: str) -> str:
    if text.lower() == "srgb":
        return "sRGB"
    try:
        return _number(above=0, hi=100)(text)
    except ValueError:
        raise ValueError("expected a gamma > 0 or sRGB") from None


def _column_or_row(text: str) -> str:
    """A pixel number (an integer) or a fraction of the image from 0.0 to 1.0."""
    if _INT_RE.fullmatch(text):
        return _integer(0, 16384)(text)
    try:
        return _number(0.0, 1.0)(text)
    except ValueError:
        raise ValueError("expected a pixel number 0..16384 or a fraction 0.0..1.0") from None


_FILE_TYPE_RE = re.compile(r"([A-Za-z])([0-9]{1,2}|[gG])?")


def _file_type(text: str) -> str:
    """An output type letter. In INI form POV-Ray reads only the letter and ignores the rest."""
    match = _FILE_TYPE_RE.fullmatch(text)
    if not match or match.group(1).upper() not in OUTPUT_EXTENSIONS:
        raise ValueError("expected an output type: " + ", ".join(OUTPUT_EXTENSIONS))
    return match.group(1).upper()


_DITHER_METHODS = ("B2", "B3", "B4", "D1", "D2", "FS")


def _dither_method(text: str) -> str:
    if text.upper() not in _DITHER_METHODS:
        raise ValueError("expected one of " + ", ".join(_DITHER_METHODS))
    return text.upper()


def _declare(text: str) -> str:
    """`NAME=number`: the only kind of Declare distren passes on."""
    name, eq, number = text.partition("=")
    if not eq or not _IDENT_RE.fullmatch(name):
        raise ValueError("expected NAME=number with NAME a plain identifier of at most 40 characters")
    try:
        value = _parse_float(number)
    except ValueError:
        raise ValueError("expected NAME=number; the value must be a plain number") from None
    return f"{name}={value!r}"


# ---------------------------------------------------------------------------------------------
# The option table

_KEPT: dict[str, Validator] = {
    "Width": _integer(1, 16384),
    "Height": _integer(1, 16384),
    "Start_Column": _column_or_row,
    "End_Column": _column_or_row,
    "Start_Row": _column_or_row,
    "End_Row": _column_or_row,
    "Initial_Frame": _integer(INT32_MIN, INT32_MAX),
    "Final_Frame": _integer(INT32_MIN, INT32_MAX),
    "Initial_Clock": _number(),
    "Final_Clock": _number(),
    "Clock": _number(),
    "Frame_Step": _integer(1, INT32_MAX),
    "Cyclic_Animation": _boolean,
    "Clockless_Animation": _boolean,
    "Field_Render": _boolean,
    "Odd_Field": _boolean,
    "Quality": _integer(0, 11),
    "Antialias": _boolean,
    "Sampling_Method": _one_of_ints(1, 2),
    "Antialias_Threshold": _number(lo=0),
    "Antialias_Depth": _integer(1, 9),
    "Antialias_Gamma": _number(above=0, hi=100),
    "Jitter": _boolean,
    "Jitter_Amount": _number(lo=0),
    "Output_File_Type": _file_type,
    "Output_Alpha": _boolean,
    "Grayscale_Output": _boolean,
    "Bits_Per_Color": _integer(5, 16),
    "Compression": _integer(0, 100),
    "Dither": _boolean,
    "Dither_Method": _dither_method,
    "File_Gamma": _gamma,
    "Display_Gamma": _gamma,
    "Bounding": _boolean,
    "Bounding_Threshold": _integer(0, INT32_MAX),
    "Bounding_Method": _one_of_ints(1, 2),
    "Light_Buffer": _boolean,
    "Vista_Buffer": _boolean,
    "Remove_Bounds": _boolean,
    "Split_Unions": _boolean,
    "High_Reproducibility": _boolean,
    "Radiosity_Vain_Pretrace": _boolean,
    "Version": _number(above=0, hi=10),
    "Render_Block_Size": _integer(4, 65536),
    "Render_Pattern": _integer(0, 5),
    "Render_Block_Step": _integer(0, INT32_MAX),
}

# Options whose value is a file inside the job folder; kept after the path checks.
_PATH_KEYS = ("Input_File_Name", "Include_Header")

_SHELL = "runs shell commands and is not allowed"
_SHELL_RETURN = "acts on a shell command's result and is not allowed"
_WRITES = "writes a file and is not allowed"
_HISTOGRAM = "writes a histogram file and is not allowed"
_RADIOSITY = "(radiosity data files) is not allowed in an INI: distren sets it (distren pack --radiosity-prepass)"

_REFUSED: dict[str, str] = {
    "Pre_Scene_Command": _SHELL,
    "Pre_Frame_Command": _SHELL,
    "Post_Scene_Command": _SHELL,
    "Post_Frame_Command": _SHELL,
    "User_Abort_Command": _SHELL,
    "Fatal_Error_Command": _SHELL,
    "Pre_Scene_Return": _SHELL_RETURN,
    "Pre_Frame_Return": _SHELL_RETURN,
    "Post_Scene_Return": _SHELL_RETURN,
    "Post_Frame_Return": _SHELL_RETURN,
    "User_Abort_Return": _SHELL_RETURN,
    "Fatal_Error_Return": _SHELL_RETURN,
    "Library_Path": "widens POV-Ray's include path and is not allowed; keep included files in the job folder",
    "Output_File_Name": "chooses where POV-Ray writes and is not allowed; distren names the output itself",
    "Debug_File": _WRITES,
    "Fatal_File": _WRITES,
    "Render_File": _WRITES,
    "Statistic_File": _WRITES,
    "Warning_File": _WRITES,
    "All_File": _WRITES,
    "Create_Ini": _WRITES,
    "Create_Histogram": _HISTOGRAM,
    "Histogram_Name": _HISTOGRAM,
    "Histogram_Type": _HISTOGRAM,
    "Histogram_Grid_Size": _HISTOGRAM,
    "Radiosity_File_Name": _RADIOSITY,
    "Radiosity_From_File": _RADIOSITY,
    "Radiosity_To_File": _RADIOSITY,
}

_DISPLAY = "distren renders without a display"
_CONSOLE = "distren keeps POV-Ray's console output as the frame's log"
_OUTPUT = "distren writes the output file itself"
_DROPPED: dict[str, str] = {
    "Display": _DISPLAY,
    "Pause_When_Done": _DISPLAY,
    "Verbose": _CONSOLE,
    "Video_Mode": _DISPLAY,
    "Palette": _DISPLAY,
    "Draw_Vistas": _DISPLAY,
    "Preview_Start_Size": _DISPLAY,
    "Preview_End_Size": _DISPLAY,
    "Test_Abort": "distren stops renders itself",
    "Test_Abort_Count": "distren stops renders itself",
    "Continue_Trace": "distren renders every frame from the start",
    "Create_Continue_Trace_Log": "distren renders every frame from the start",
    "Output_to_File": _OUTPUT,
    "Buffer_Output": _OUTPUT,
    "Buffer_Size": _OUTPUT,
    "Work_Threads": "distren chooses the number of threads",
    "Debug_Console": _CONSOLE,
    "Fatal_Console": _CONSOLE,
    "Render_Console": _CONSOLE,
    "Statistic_Console": _CONSOLE,
    "Warning_Console": _CONSOLE,
    "All_Console": _CONSOLE,
    "Append_File": _CONSOLE,
    "Warning_Level": _CONSOLE,
    "Max_Image_Buffer_Memory": "distren leaves memory tuning to POV-Ray",
    "Real_Time_Raytracing": _DISPLAY,
    "BSP_BaseAccessCost": "distren leaves BSP tuning to POV-Ray",
    "BSP_ChildAccessCost": "distren leaves BSP tuning to POV-Ray",
    "BSP_ISectCost": "distren leaves BSP tuning to POV-Ray",
    "BSP_MaxDepth": "distren leaves BSP tuning to POV-Ray",
    "BSP_MissChance": "distren leaves BSP tuning to POV-Ray",
}

_SUBSET_KEYS = ("Subset_Start_Frame", "Subset_End_Frame")
_SPECIAL = ("Declare", "Include_Ini", *_PATH_KEYS, *_SUBSET_KEYS)

_ALIASES = {"Bits_Per_Colour": "Bits_Per_Color", "Greyscale_Output": "Grayscale_Output"}

# Every option name POV-Ray 3.7 knows, by lower-case name, mapped to distren's canonical name.
_CANONICAL: dict[str, str] = {
    name.lower(): name for name in (*_KEPT, *_REFUSED, *_DROPPED, *_SPECIAL)
}
_CANONICAL.update({alias.lower(): name for alias, name in _ALIASES.items()})


@dataclass(frozen=True)
class _Switch:
    """One command-line switch of POV-Ray's table: `+<cmd><param>` or `-<cmd><param>`."""

    cmd: str
    key: str | None  # the option the parameter sets
    flag: str | None = None  # the on/off option that the + or - sets
    optional: bool = False  # whether the parameter may be left out


# In POV-Ray's order: a longer switch before the shorter one it starts with.
_SWITCHES = (
    _Switch("AG", "Antialias_Gamma"),
    _Switch("AM", "Sampling_Method"),
    _Switch("A", "Antialias_Threshold", "Antialias", optional=True),
    _Switch("BM", "Bounding_Method"),
    _Switch("BS", "Render_Block_Size"),
    _Switch("B", None, "Bounding"),
    _Switch("CC", None, "Create_Continue_Trace_Log"),
    _Switch("C", None, "Continue_Trace"),
    _Switch("D", "Video_Mode", "Display", optional=True),
    _Switch("EC", "End_Column"),
    _Switch("EF0", "Subset_End_Frame"),
    _Switch("EF", "Subset_End_Frame"),
    _Switch("EP", "Preview_End_Size"),
    _Switch("ER", "End_Row"),
    _Switch("F", "Output_File_Type", "Output_to_File", optional=True),
    _Switch("GA", "All_File", "All_Console", optional=True),
    _Switch("GD", "Debug_File", "Debug_Console", optional=True),
    _Switch("GF", "Fatal_File", "Fatal_Console", optional=True),
    _Switch("GI", "Create_Ini"),
    _Switch("GP", None, "Append_File"),
    _Switch("GR", "Render_File", "Render_Console", optional=True),
    _Switch("GS", "Statistic_File", "Statistic_Console", optional=True),
    _Switch("GW", "Warning_File", "Warning_Console", optional=True),
    _Switch("HI", "Include_Header"),
    _Switch("HR", None, "High_Reproducibility"),
    _Switch("H", "Height"),
    _Switch("I", "Input_File_Name"),
    _Switch("J", "Jitter_Amount", "Jitter", optional=True),
    _Switch("KC", None, "Cyclic_Animation"),
    _Switch("KI", "Initial_Clock"),
    _Switch("KFF", "Final_Frame"),
    _Switch("KFI", "Initial_Frame"),
    _Switch("KF", "Final_Clock"),
    _Switch("KLA", None, "Clockless_Animation"),
    _Switch("K", "Clock"),
    _Switch("L", "Library_Path"),
    _Switch("MB", "Bounding_Threshold", "Bounding", optional=True),
    _Switch("MI", "Max_Image_Buffer_Memory"),
    _Switch("MV", "Version"),
    _Switch("O", "Output_File_Name"),
    _Switch("P", None, "Pause_When_Done"),
    _Switch("Q", "Quality"),
    _Switch("RFI", None, "Radiosity_From_File"),
    _Switch("RFO", None, "Radiosity_To_File"),
    _Switch("RF", "Radiosity_File_Name"),
    _Switch("RS", "Render_Block_Step"),
    _Switch("RP", "Render_Pattern"),
    _Switch("RTR", None, "Real_Time_Raytracing"),
    _Switch("RVP", None, "Radiosity_Vain_Pretrace"),
    _Switch("R", "Antialias_Depth"),
    _Switch("SC", "Start_Column"),
    _Switch("SF0", "Subset_Start_Frame"),
    _Switch("SF", "Subset_Start_Frame"),
    _Switch("SP", "Preview_Start_Size"),
    _Switch("SR", "Start_Row"),
    _Switch("STP", "Frame_Step"),
    _Switch("SU", None, "Split_Unions"),
    _Switch("TH", "Dither_Method", "Dither", optional=True),
    _Switch("UA", None, "Output_Alpha"),
    _Switch("UD", None, "Draw_Vistas"),
    _Switch("UF", None, "Field_Render"),
    _Switch("UL", None, "Light_Buffer"),
    _Switch("UO", None, "Odd_Field"),
    _Switch("UR", None, "Remove_Bounds"),
    _Switch("UV", None, "Vista_Buffer"),
    _Switch("V", None, "Verbose"),
    _Switch("WL", "Warning_Level"),
    _Switch("WT", "Work_Threads"),
    _Switch("W", "Width"),
    _Switch("X", "Test_Abort_Count", "Test_Abort", optional=True),
)


# ---------------------------------------------------------------------------------------------
# Paths


def _find_file(text: str, root: Path, extension: str) -> str:
    """relative_file, also trying `text + extension` when text has no extension, as POV-Ray does."""
    try:
        return relative_file(text, root)
    except ValueError as exc:
        name = text.rsplit("/", 1)[-1]
        if "." in name or not name:
            raise
        try:
            return relative_file(text + extension, root)
        except ValueError:
            raise exc from None


def _show(text: str, limit: int = 60) -> str:
    """A hostile value, shortened and quoted, for messages."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


# ---------------------------------------------------------------------------------------------
# INI parsing


@dataclass
class IniOptions:
    """What an INI file asks of POV-Ray, after the checks.

    `options` maps canonical option names to canonical values (the last one wins);
    `declares` holds every `NAME=value` Declare in order; `subset` is the INI's
    Subset_Start_Frame/Subset_End_Frame (whole frames only), which distren does not pass on
    but `distren pack` uses as the default frame range; `files` lists, as relative paths in
    the order met, every file the INI names and distren checks: the INI itself, the INIs it
    includes, and each Input_File_Name and Include_Header (also those a later line overrides)."""

    options: dict[str, str] = field(default_factory=dict)
    declares: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    subset: tuple[int | None, int | None] = (None, None)
    files: list[str] = field(default_factory=list)


_DELIMS = frozenset(" \t\v\f,;#\"'[]=")  # where a key or switch name ends
_VALUE_END = frozenset(" \t\v\f,;#\"'")  # where an unquoted value ends
_BLANKS = " \t"


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in _BLANKS:
        pos += 1
    return pos


def _read_name(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] not in _DELIMS:
        pos += 1
    return pos


class _IniReader:
    """Reads one INI file and the INIs it includes into an IniOptions."""

    def __init__(self, root: Path):
        self.root = root
        self.result = IniOptions()
        self.stack: list[str] = []
        self.subset: list[int | None] = [None, None]
        self.reads = 0
        self.lines = 0

    # -- files ---------------------------------------------------------------------------------

    def read_file(self, rel: str, section: str | None, where: str | None) -> None:
        """Apply the options of the INI at `rel` (checked already); `where` names the including line."""
        if rel in self.stack:
            chain = " -> ".join([*self.stack[self.stack.index(rel):], rel])
            raise BadSettings(f"{where}: Include_Ini forms a cycle: {chain}")
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise BadSettings(f"{where}: Include_Ini nests deeper than {MAX_INCLUDE_DEPTH} files")
        self.reads += 1
        if self.reads > MAX_INI_READS:
            raise BadSettings(f"{where}: Include_Ini reads more than {MAX_INI_READS} INI files in all")
        path = self.root / rel
        if path.stat().st_size > MAX_INI_BYTES:
            raise BadSettings(f"{rel} is larger than {MAX_INI_BYTES} bytes; that is no INI file")
        text = path.read_bytes().decode("utf-8", errors="replace")
        self.stack.append(rel)
        self._note_file(rel)
        # Options before the first section header always apply; a named section only when asked for.
        active = True
        for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
            self.lines += 1
            if self.lines > MAX_INI_LINES:
                raise BadSettings(f"{rel}: the INI files hold more than {MAX_INI_LINES} lines in all")
            active = self._read_line(line, f"{rel} line {number}", active, section)
        self.stack.pop()

    # -- lines ---------------------------------------------------------------------------------

    def _read_line(self, line: str, where: str, active: bool, section: str | None) -> bool:
        """Apply one line; returns whether the lines after it are in an applied section."""
        pos = 0
        while True:
            pos = _skip_blanks(line, pos)
            if pos >= len(line):
                return active
            char = line[pos]
            if char == "[":
                end = line.find("]", pos + 1)
                name = line[pos + 1:] if end < 0 else line[pos + 1:end]
                active = section is not None and name.strip().lower() == section.lower()
                if not active:
                    return active
                pos = len(line) if end < 0 else end + 1
                continue
            if not active or char in ";#":
                return active
            if char in "+-":
                pos = self._switch(line, pos, where)
                continue
            if char in "\"'":
                end = line.find(char, pos + 1)
                if end < 0:
                    raise BadSettings(f"{where}: a quoted name has no closing {char}")
                self._bare_name(line[pos + 1:end], where)
                pos = end + 1
                continue
            if char.isascii() and (char.isalnum() or char == "_"):
                key_end = _read_name(line, pos)
                after = _skip_blanks(line, key_end)
                if after < len(line) and line[after] == "=":
                    self._option_line(line[pos:key_end], line, after + 1, where)
                    return active  # POV-Ray reads one option per line and skips the rest
            start = pos
            value, pos = self._read_plain(line, pos, smart=True)
            if not value:
                pos += 1  # a stray separator such as ','
                continue
            if "=" in value:
                # POV-Ray stops with a parse error here; distren drops the text.
                self._warn(where, f"unknown option {_show(line[start:].strip())} dropped")
                return active
            self._bare_name(value, where)

    def _read_plain(self, line: str, pos: int, smart: bool) -> tuple[str, int]:
        """An unquoted value as POV-Ray reads it. In "smart mode" a blank does not end the value
        when what follows looks like more of an unquoted path with spaces; then the value runs
        to the end of the line or a comment. POV-Ray decides that with a quirk kept here: it
        skips the first character of the next word before it looks for an option name."""
        start = pos
        while pos < len(line):
            char = line[pos]
            if char in " \t" and smart and self._path_continues(line, pos):
                end = len(line)
                for mark in ";#":
                    found = line.find(mark, pos)
                    if found >= 0:
                        end = min(end, found)
                return line[start:end].rstrip(), end
            if char in _VALUE_END:
                break
            pos += 1
        return line[start:pos], pos

    @staticmethod
    def _path_continues(line: str, pos: int) -> bool:
        pos = _skip_blanks(line, pos)
        if pos >= len(line) or line[pos] in ";#,":
            return False
        if line[pos] in "+-":
            return not (pos + 1 < len(line) and line[pos + 1].isalpha())
        name = line[pos + 1:_read_name(line, pos + 1)]
        return name.lower() not in _CANONICAL

    def _read_values(self, line: str, pos: int, key: str, where: str) -> tuple[list[str], int]:
        """The value(s) after `Key=`: one, or a comma-separated list (POV-Ray applies each)."""
        values: list[str] = []
        smart = key in (*_PATH_KEYS, "Include_Ini")
        while True:
            pos = _skip_blanks(line, pos)
            if pos < len(line) and line[pos] in "\"'":
                quote = line[pos]
                end = line.find(quote, pos + 1)
                if end < 0:
                    raise BadSettings(f"{where}: the value of {key} has no closing {quote}")
                values.append(line[pos + 1:end])
                pos = end + 1
            else:
                value, pos = self._read_plain(line, pos, smart=smart and not values)
                values.append(value)
            after = _skip_blanks(line, pos)
            if after < len(line) and line[after] == ",":
                pos = after + 1
                continue
            return values, pos

    def _option_line(self, name: str, line: str, pos: int, where: str) -> None:
        key = _CANONICAL.get(name.lower())
        if key is None:
            self._warn(where, f"unknown option {_show(name)} dropped")
            return
        if key in _REFUSED:
            raise BadSettings(f"{where}: {key} {_REFUSED[key]}")
        values, pos = self._read_values(line, pos, key, where)
        for value in values:
            self._assign(key, value, key, where)
        rest = line[pos:].strip()
        if rest and rest[0] not in ";#":
            self._warn(where, f"POV-Ray ignores the text after the {key} option: {_show(rest)}")

    # -- switches ------------------------------------------------------------------------------

    def _switch(self, line: str, pos: int, where: str) -> int:
        sign = line[pos]
        end = _read_name(line, pos + 1)
        name = line[pos + 1:end]
        quoted: str | None = None
        if end < len(line) and line[end] in "\"'":
            close = line.find(line[end], end + 1)
            if close < 0:
                raise BadSettings(f"{where}: the parameter of {sign}{name} has no closing {line[end]}")
            quoted = line[end + 1:close]
            end = close + 1
        shown = _show(line[pos:end], 40)
        for switch in _SWITCHES:
            if not name.upper().startswith(switch.cmd):
                continue
            param = name[len(switch.cmd):]
            if quoted is not None:
                if param:
                    break
                param = quoted
            if (param and switch.key is not None) or (not param and (switch.key is None or switch.optional)):
                self._apply_switch(switch, sign, param, shown, where)
                return end
        self._warn(where, f"unknown option {shown} dropped")
        return end

    def _apply_switch(self, switch: _Switch, sign: str, param: str, shown: str, where: str) -> None:
        def assign(key: str, value: str) -> None:
            self._assign(key, value, f"{key} (switch {shown})", where)

        if switch.cmd == "F" and param:
            # +F<type>[<bits>|g]: the output type, and its bit depth or grayscale.
            match = _FILE_TYPE_RE.fullmatch(param)
            if not match:
                raise BadSettings(f"{where}: bad value {_show(param)} for Output_File_Type (switch {shown}): "
                                  "expected a type letter, then bits per colour or g")
            if sign == "-":
                assign("Output_to_File", "off")
            assign("Output_File_Type", match.group(1))
            extra = match.group(2) or ""
            if extra.isdigit():
                assign("Bits_Per_Color", extra)
            elif extra:
                assign("Grayscale_Output", "on")
            return
        if switch.key in _REFUSED and param:
            assign(switch.key, param)  # raises before the flag's warning is given
        if switch.flag is not None:
            assign(switch.flag, "on" if sign == "+" else "off")
        if param and switch.key is not None:
            assign(switch.key, param)

    # -- options -------------------------------------------------------------------------------

    def _note_file(self, rel: str) -> None:
        if rel not in self.result.files:
            self.result.files.append(rel)

    def _warn(self, where: str, message: str) -> None:
        self.result.warnings.append(f"{where}: {message}")

    def _bad_value(self, where: str, shown: str, value: str, reason: str) -> BadSettings:
        return BadSettings(f"{where}: bad value {_show(value)} for {shown}: {reason}")

    def _assign(self, key: str, value: str, shown: str, where: str) -> None:
        """Apply one option given as `key` (canonical) = `value` (raw text)."""
        if key in _REFUSED:
            raise BadSettings(f"{where}: {shown} {_REFUSED[key]}")
        if key in _DROPPED:
            self._warn(where, f"{shown} dropped ({_DROPPED[key]})")
            return
        if key in _SUBSET_KEYS:
            self._subset(key, value, shown, where)
            return
        if key == "Include_Ini":
            self._include_ini(value, where)
            return
        if key in _PATH_KEYS:
            extension = ".pov" if key == "Input_File_Name" else ".inc"
            try:
                rel = _find_file(value.strip(), self.root, extension)
            except ValueError as exc:
                raise self._bad_value(where, shown, value, str(exc)) from None
            self.result.options[key] = rel
            self._note_file(rel)
            return
        validator = _declare if key == "Declare" else _KEPT[key]
        try:
            canonical = validator(value)
        except ValueError as exc:
            raise self._bad_value(where, shown, value, str(exc)) from None
        if key == "Declare":
            self.result.declares.append(canonical)
            return
        if key == "Output_File_Type" and len(value) > 1:
            self._warn(where, f"POV-Ray reads only the type letter of {shown}={value}; "
                              "set Bits_Per_Color for the bit depth")
        self.result.options[key] = canonical

    def _subset(self, key: str, value: str, shown: str, where: str) -> None:
        try:
            number = _parse_float(value)
        except ValueError as exc:
            raise self._bad_value(where, shown, value, str(exc)) from None
        index = _SUBSET_KEYS.index(key)
        if 0 < number < 1:
            self._warn(where, f"{shown}={value} (a fraction of the animation) ignored; "
                              "give frame numbers or distren pack --frames")
            self.subset[index] = None
            return
        if number > INT32_MAX:
            raise self._bad_value(where, shown, value, f"expected a frame number up to {INT32_MAX}")
        self.subset[index] = max(int(number), 0)
        self._warn(where, f"{shown} dropped (distren renders one frame at a time; "
                          "distren pack uses it as the default frame range)")

    def _include_ini(self, value: str, where: str) -> None:
        spec = value.strip()
        section: str | None = None
        if "[" in spec:
            spec, _, rest = spec.partition("[")
            section, close, _ = rest.partition("]")
            if not close:
                raise BadSettings(f"{where}: Include_Ini {_show(value)} has no closing ]")
        try:
            rel = _find_file(spec, self.root, ".ini")
        except ValueError as exc:
            raise BadSettings(f"{where}: Include_Ini {_show(value)}: {exc}") from None
        self.read_file(rel, section, where)

    def _bare_name(self, text: str, where: str) -> None:
        """A name alone on a line: POV-Ray reads a .pov as the scene, a name ending in / as a
        library path, and anything else as an INI file to include."""
        if not text:
            return
        if text.lower().endswith(".pov"):
            self._assign("Input_File_Name", text, f"Input_File_Name (the bare name {_show(text)})", where)
        elif text.endswith("/"):
            self._assign("Library_Path", text, f"Library_Path (the bare name {_show(text)})", where)
        else:
            self._include_ini(text, where)


def parse_ini(path: Path, root: Path) -> IniOptions:
    """Read the INI file at `path` (absolute, or relative to the job folder `root`) and the INIs
    it includes. File names in INIs are relative to root, POV-Ray's working directory, not to
    the INI's own folder. Raises BadSettings for a refused option, a bad value, a file outside
    root, an Include_Ini cycle or nesting deeper than MAX_INCLUDE_DEPTH."""
    root = Path(root)
    path = Path(path)
    try:
        if path.is_absolute():
            resolved = path.resolve(strict=True)
            text = resolved.relative_to(root.resolve()).as_posix()
        else:
            text = path.as_posix()
        rel = relative_file(text, root)
    except (ValueError, OSError) as exc:
        raise BadSettings(f"INI file {path.as_posix()}: {exc}") from None
    reader = _IniReader(root)
    reader.read_file(rel, None, None)
    reader.result.subset = (reader.subset[0], reader.subset[1])
    return reader.result


# ---------------------------------------------------------------------------------------------
# Plans and command lines


@dataclass
class PovrayPlan:
    """How a job renders: the scene, the checked options and the animation's frame range."""

    scene: str
    options: dict[str, str]
    declares: list[str]
    warnings: list[str]
    initial_frame: int
    final_frame: int
    animated: bool

    @property
    def frame_digits(self) -> int:
        """How many digits POV-Ray pads frame numbers in output names to: those of
        Final_Frame, plus one frame when the animation is cyclic (POV-Ray's own quirk)."""
        final = self.final_frame + (1 if self.options.get("Cyclic_Animation") == "on" else 0)
        return len(str(final))


def _setting_path(settings: dict[str, str], key: str, root: Path) -> str:
    try:
        return relative_file(settings[key], root)
    except ValueError as exc:
        raise BadSettings(f"setting <{key}> {_show(settings[key])}: {exc}") from None


def _setting_value(settings: dict[str, str], key: str, validator: Validator) -> str:
    try:
        return validator(settings[key].strip())
    except ValueError as exc:
        raise BadSettings(f"setting <{key}> {_show(settings[key])}: {exc}") from None


def _apply_overrides(settings: dict[str, str], options: dict[str, str]) -> None:
    """The job's settings beat the INI's options."""
    simple = (
        ("width", "Width", _integer(1, 16384)),
        ("height", "Height", _integer(1, 16384)),
        ("initial-frame", "Initial_Frame", _integer(0, INT32_MAX)),
        ("final-frame", "Final_Frame", _integer(0, INT32_MAX)),
        ("initial-clock", "Initial_Clock", _number()),
        ("final-clock", "Final_Clock", _number()),
    )
    for key, option, validator in simple:
        if key in settings:
            options[option] = _setting_value(settings, key, validator)
    if "antialias" in settings:
        text = settings["antialias"].strip().lower()
        if text in ("off", "on"):
            options["Antialias"] = text
        else:
            try:
                threshold = _number(lo=0)(text)
            except ValueError:
                raise BadSettings(f"setting <antialias> {_show(settings['antialias'])}: "
                                  "expected off or a threshold such as 0.3") from None
            options["Antialias"] = "on"
            options["Antialias_Threshold"] = threshold


def check_job_folder(root: Path) -> None:
    """Refuse a job folder with a top-level povray.ini (in any case): POV-Ray, run in the job
    folder, would read it in place of the system configuration, unchecked."""
    try:
        names = [p.name for p in Path(root).iterdir()]
    except OSError as exc:
        raise BadSettings(f"cannot read the job folder: {exc}") from None
    for name in names:
        if name.lower() == "povray.ini":
            raise BadSettings(f"the job folder holds {name}, which POV-Ray would read as its own "
                              "configuration; rename it and name it in <ini>")


def plan(settings: dict[str, str], root: Path, *, check_folder: bool = True) -> PovrayPlan:
    """Check a job's povray settings against its folder `root` and work out how it renders.

    `settings` are the children of the `<backend name="povray">` element: the keys of
    POVRAY_SETTINGS only. `scene` is required unless the INI names one with Input_File_Name
    (`scene` wins). The overrides `width`, `height`, `antialias` ("off" or a threshold),
    `initial-frame`, `final-frame`, `initial-clock` and `final-clock` beat the INI. Every file
    must be a regular file inside root, named by a plain relative path. Width, Height and
    Output_File_Type default to DEFAULT_OPTIONS. With `check_folder` (the default) the folder
    itself is checked too (check_job_folder); `distren pack`, which checks a source folder
    rather than a package, turns that off. Raises BadSettings naming the problem."""
    root = Path(root)
    for key in settings:
        if key not in POVRAY_SETTINGS:
            raise BadSettings(f"unknown povray setting <{key}>; known settings: " + ", ".join(POVRAY_SETTINGS))
    if check_folder:
        check_job_folder(root)

    options: dict[str, str] = {}
    declares: list[str] = []
    warnings: list[str] = []
    if "ini" in settings:
        parsed = parse_ini(Path(_setting_path(settings, "ini", root)), root)
        options, declares, warnings = dict(parsed.options), list(parsed.declares), list(parsed.warnings)
    if "scene" in settings:
        scene = _setting_path(settings, "scene", root)
    elif "Input_File_Name" in options:
        scene = options["Input_File_Name"]
    else:
        raise BadSettings("no scene: give <scene>, or an <ini> that sets Input_File_Name")
    options.pop("Input_File_Name", None)
    _apply_overrides(settings, options)
    options = {**{k: v for k, v in DEFAULT_OPTIONS.items() if k not in options}, **options}

    # POV-Ray's front end renders an animation unless the frames are 0..0 or 1..1 (an absent
    # Initial_Frame or Final_Frame counting as 0), and then clamps them as below.
    raw_initial = int(options.get("Initial_Frame", "0"))
    raw_final = int(options.get("Final_Frame", "0"))
    animated = (raw_initial, raw_final) not in ((0, 0), (1, 1))
    initial = max(int(options.get("Initial_Frame", "1")), 0)
    final = max(int(options.get("Final_Frame", "1")), initial)
    if animated and initial == final and options.get("Cyclic_Animation") != "on":
        warnings.append(f"Initial_Frame and Final_Frame are both {initial}: POV-Ray's clock is "
                        "then not a number (it divides by zero)")
    return PovrayPlan(scene, options, declares, warnings, initial, final, animated)


def check_frames(plan: PovrayPlan, frame_ids: Iterable[int]) -> None:
    """Refuse frames the plan cannot render: in an animation any frame outside
    initial_frame..final_frame; for a still, more than one frame. Raises BadSettings naming
    the first offending frame."""
    ids = list(frame_ids)
    if not ids:
        raise BadSettings("the job has no frames")
    if plan.animated:
        for frame in ids:
            if not plan.initial_frame <= frame <= plan.final_frame:
                raise BadSettings(f"frame {frame} is outside the animation's frames "
                                  f"{plan.initial_frame}-{plan.final_frame}")
    elif len(ids) > 1:
        raise BadSettings(f"frame {ids[1]}: the scene is a still (it sets no animation frames), "
                          "so the job can have only one frame")


_NEEDS_QUOTES = re.compile(r"[\s;#',\[\]=]")


def _arg_path(text: str, what: str) -> str:
    """A path as one POV-Ray argument, quoted when POV-Ray would split or cut it."""
    if not text or '"' in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadSettings(f"{what} {_show(text)} cannot be passed to POV-Ray safely")
    return f'"{text}"' if _NEEDS_QUOTES.search(text) else text


def _checked_option(key: str, value: str) -> str:
    """`Key=value` for one plan option, checked once more: only kept options with canonical
    values (or plain relative paths) ever reach POV-Ray."""
    if key in _PATH_KEYS:
        if value.startswith("/") or ".." in value.split("/"):
            raise BadSettings(f"option {key}={_show(value)} is not a relative path")
        return f"{key}={_arg_path(value, key)}"
    validator = _KEPT.get(key)
    if validator is None:
        raise BadSettings(f"option {key} is not one distren passes to POV-Ray")
    try:
        canonical = validator(value)
    except ValueError as exc:
        raise BadSettings(f"option {key}={_show(value)}: {exc}") from None
    if canonical != value:
        raise BadSettings(f"option {key}={_show(value)} is not in canonical form")
    return f"{key}={value}"


def frame_args(plan: PovrayPlan, frame: int, output_prefix: str, threads: int | None = None,
               last: int | None = None) -> list[str]:
    """The argv after `povray` that renders `frame` as `povray scene.ini +SF<frame> +EF<frame>`
    would (through frame `last` when given: a chunk), writing `<output_prefix><frame>.<ext>` (see
    output_file) for each. POV-Ray must run with the job folder as its working directory. Every
    option is re-checked here."""
    last = frame if last is None else last
    for value in (frame, last):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadSettings(f"frame must be an int, not {type(value).__name__}")
    if last < frame or (last != frame and not plan.animated):
        raise BadSettings(f"frames {frame}-{last} are not a range of the animation")
    if plan.animated:
        check_frames(plan, [frame, last])
    args = [_checked_option(key, value) for key, value in plan.options.items()]
    for declare in plan.declares:
        try:
            if _declare(declare) != declare:
                raise ValueError("not in canonical form")
        except ValueError as exc:
            raise BadSettings(f"Declare {_show(declare)}: {exc}") from None
        args.append(f"Declare={declare}")
    if plan.scene.startswith("/") or ".." in plan.scene.split("/"):
        raise BadSettings(f"scene {_show(plan.scene)} is not a relative path")
    args += [
        f"Input_File_Name={_arg_path(plan.scene, 'scene')}",
        "Output_to_File=on",
        f"Output_File_Name={_arg_path(output_prefix, 'output prefix')}",
        "Display=off",
        "Pause_When_Done=off",
    ]
    if plan.animated:
        args += [f"Subset_Start_Frame={frame}", f"Subset_End_Frame={last}"]
        if last != frame:
            args.append("Frame_Step=1")   # a chunk renders every frame of its range, whatever the INI's step
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 512:
            raise BadSettings(f"threads must be an int from 1 to 512, not {threads!r}")
        args.append(f"Work_Threads={threads}")
    return args


def output_file(plan: PovrayPlan, frame: int, output_prefix: str) -> str:
    """The name of the image `frame_args(plan, frame, output_prefix)` makes POV-Ray write: the
    prefix, the frame number zero-padded to frame_digits (animations only) and the extension of
    the output type."""
    extension = OUTPUT_EXTENSIONS[plan.options.get("Output_File_Type", "N")]
    if not plan.animated:
        return f"{output_prefix}.{extension}"
    return f"{output_prefix}{frame:0{plan.frame_digits}d}.{extension}"

"""Fuzzing the two parsers every package meets first, in-process:

- distren.tarballs.safe_extract on mutated, truncated and randomly built tarballs: it returns a
  fresh folder inside the parent holding only regular files and directories, or raises
  BadPackage, and never creates anything beside it;
- distren.job.spec.parse_job_xml on random and mutated XML: a JobSpec or a DistrenError
  (BadJobXML, BadJob, BadURL), in bounded time.
"""

from __future__ import annotations

import glob
import io
import os
import stat
import tarfile
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distren.errors import BadJob, BadJobXML, BadPackage, BadURL
from distren.job.spec import parse_job_xml
from distren.tarballs import TarLimits, safe_extract

FUZZ = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
LIMITS = TarLimits(max_members=50, max_total_size=200_000, max_file_size=100_000)
ESCAPES = "/tmp/distren-fuzz-*"

# ---------------------------------------------------------------------------
# tarballs


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, link, 0
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    return info, (data if info.size else None)


def _tar(members, compress: str = "", fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:" + compress, format=fmt) as t:
        for info, data in members:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


_BASE_MEMBERS = [
    _member("distrenjob.xml", data=b"<distrenjob/>"),
    _member("dir", tarfile.DIRTYPE),
    _member("dir/scene.pov", data=b"sphere { 0, 1 }\n" * 20),
    _member("dir/sub/deep.inc", data=b"#declare X = 1;\n"),
    _member("n" * 120, data=b"long name, pax header"),
]
BASES = [
    _tar(_BASE_MEMBERS),
    _tar(_BASE_MEMBERS, fmt=tarfile.GNU_FORMAT),
    _tar(_BASE_MEMBERS[:4], fmt=tarfile.USTAR_FORMAT),
    _tar(_BASE_MEMBERS, "gz"),
    _tar(_BASE_MEMBERS, "bz2"),
    _tar(_BASE_MEMBERS, "xz"),
]

names = st.one_of(
    st.sampled_from(["a", "a/b", "./a", "a/", ".", "./", "..", "../x", "a/../../x", "/tmp/distren-fuzz-abs",
                     "/", "_distren/x", "a\\b", "a\x00b", "a\x01b", "é", "a//b", "a/./b", "b" * 300,
                     "/".join("d" * 40), "distrenjob.xml", "a/b/c", "x" * 255]),
    st.text(alphabet=st.characters(min_codepoint=1, max_codepoint=0x2FF), min_size=1, max_size=30),
)
kinds = st.sampled_from([tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                         tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE, b"Z", b"7"])
links = st.sampled_from(["", "a", "../../tmp/distren-fuzz-link", "/tmp/distren-fuzz-link", "a/b", ".", "/"])


@st.composite
def random_tarballs(draw) -> bytes:
    members = [_member(draw(names), draw(kinds), draw(st.binary(max_size=600)), draw(links))
               for _ in range(draw(st.integers(1, 8)))]
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
    try:
        return _tar(members, draw(st.sampled_from(["", "gz"])), fmt)
    except (ValueError, UnicodeError, tarfile.HeaderError) as exc:  # tarfile cannot write some of them
        return repr(exc).encode()


@st.composite
def mutated_tarballs(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "splice"]))
        if not data:
            break
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0, 0x20, 0x2F, 0x30, 0x37, 0x78, 0xFF, draw(st.integers(0, 255))]))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        else:  # a header field rewritten: name, size, typeflag, linkname, magic
            field = draw(st.sampled_from([(0, 100), (124, 12), (156, 1), (157, 100), (257, 8)]))
            start = (pos // 512) * 512 + field[0]
            data[start:start + field[1]] = draw(st.binary(min_size=field[1], max_size=field[1]))
    return bytes(data)


def _check_extract(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="distren-fuzzing-") as tmp:   # (not an ESCAPES name)
        root = Path(tmp)
        parent = root / "parent"
        parent.mkdir()
        archive = root / "archive"
        archive.write_bytes(data)
        try:
            out = safe_extract(archive, parent, LIMITS, reserved=("_distren",))
        except BadPackage:
            assert list(parent.iterdir()) == [], "a refused archive left files behind"
        else:
            assert out.parent == parent and list(parent.iterdir()) == [out]
            for dirpath, dirnames, filenames in os.walk(out):
                for n in dirnames + filenames:
                    mode = os.lstat(os.path.join(dirpath, n)).st_mode
                    assert stat.S_ISREG(mode) or stat.S_ISDIR(mode), os.path.join(dirpath, n)
        assert sorted(p.name for p in root.iterdir()) == ["archive", "parent"], "something beside the parent"
    assert glob.glob(ESCAPES) == [], "an escape target exists"


@FUZZ
@given(random_tarballs())
def test_safe_extract_random_members(data):
    _check_extract(data)


@FUZZ
@given(mutated_tarballs())
def test_safe_extract_mutated(data):
    _check_extract(data)


@FUZZ
@given(st.binary(max_size=2048))
def test_safe_extract_noise(data):
    _check_extract(data)


# ---------------------------------------------------------------------------
# distrenjob.xml

GOOD = b"""<?xml version="1.0"?>
<distrenjob version="1">
  <name>fuzz</name>
  <priority>3</priority>
  <backend name="povray"><ini>scene.ini</ini><width>32</width></backend>
  <backend name="ffmpeg"/>
  <frames>
    <range first="0" last="9"><depends>distren://alpha/1/2</depends></range>
    <frame id="10" backend="ffmpeg"><depends>0</depends><depends>9</depends></frame>
  </frames>
</distrenjob>
"""
TOKENS = [b"<", b">", b"/>", b"</", b"&", b"&amp;", b"&x;", b"&#0;", b"&#x110000;", b"<!DOCTYPE d>", b"<!ENTITY",
          b"<![CDATA[", b"]]>", b"<?xml version='1.0' encoding='bogus'?>", b"<?xml version='1.0' encoding='UTF-16'?>",
          b"<?pi x?>", b"<!--", b"-->", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\xc3", b'"', b"'", b"=",
          b"-1", b"9223372036854775807", b"9223372036854775808", b"99999999999999999999999", b"+5", b" 0 ",
          b"distren://alpha/1/2", b"distren://x/0/0", b"distren://alpha/99999999999999999999/0", b"<frame id=\"0\"/>",
          b"<range first=\"0\" last=\"40\"/>", b"<depends>3</depends>", b"<backend name=\"blender\"/>",
          b"xmlns=\"urn:x\"", b"xmlns:xi=\"http://www.w3.org/2001/XInclude\"", b"<xi:include href=\"/etc/passwd\"/>"]


@st.composite
def mutated_xml(draw) -> bytes:
    data = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["token", "token", "delete", "flip", "truncate"]))
        if op == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 20))]
        elif op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


ids = st.one_of(st.integers(0, 60), st.sampled_from(["-1", "9223372036854775807", "9223372036854775808", "+3",
                                                      " 4 ", "007", "1e3", "", "x"]))
deps = st.one_of(ids.map(str), st.sampled_from(["distren://alpha/1/2", "distren://alpha/5/0", "distren://b/0/0",
                                                 "distren://alpha/1", "distren://alpha/99999999999999999999/0"]))


@st.composite
def generated_xml(draw) -> bytes:
    """Documents close to the schema: random frames, ranges, dependencies and backends."""
    parts = [f"<name>{draw(st.sampled_from(['j', '', 'x' * 250, 'a&amp;b']))}</name>"]
    if draw(st.booleans()):
        parts.append(f"<priority>{draw(st.sampled_from(['0', '-1000', '1001', 'x', '+7']))}</priority>")
    backends = draw(st.lists(st.sampled_from(["povray", "ffmpeg", "blender", "maya", "Bad", "povray"]),
                             min_size=0, max_size=3))
    for b in backends:
        settings_ = "".join(f"<{k}>{v}</{k}>" for k, v in draw(st.lists(
            st.tuples(st.sampled_from(["ini", "scene", "width", "codec"]), st.sampled_from(["1", "a.ini", ""])),
            max_size=3)))
        parts.append(f'<backend name="{b}">{settings_}</backend>')
    frames = []
    for _ in range(draw(st.integers(0, 6))):
        dep_xml = "".join(f"<depends>{d}</depends>" for d in draw(st.lists(deps, max_size=3)))
        backend = draw(st.sampled_from(["", ' backend="ffmpeg"', ' backend="nope"']))
        if draw(st.booleans()):
            frames.append(f'<frame id="{draw(ids)}"{backend}>{dep_xml}</frame>')
        else:
            frames.append(f'<range first="{draw(ids)}" last="{draw(ids)}"{backend}>{dep_xml}</range>')
    if draw(st.booleans()) or frames:
        parts.append(f"<frames>{''.join(frames)}</frames>")
    return f'<?xml version="1.0"?><distrenjob version="1">{"".join(parts)}</distrenjob>'.encode()


def _check_xml(data: bytes) -> None:
    start = time.monotonic()
    try:
        spec = parse_job_xml(data, "alpha", 7, max_frames=50)
    except (BadJobXML, BadJob, BadURL) as exc:
        assert exc.message and len(exc.message) < 5000
        assert "root:x:0:0" not in exc.message
    else:
        ids_ = spec.frame_ids()
        assert len(ids_) == len(set(ids_)) <= 50
        assert all(0 <= i <= 2**63 - 1 for i in ids_)
    assert time.monotonic() - start < 5, "parse_job_xml took too long"


@FUZZ
@given(mutated_xml())
def test_parse_job_xml_mutated(data):
    _check_xml(data)


@FUZZ
@given(generated_xml())
def test_parse_job_xml_generated(data):
    _check_xml(data)


@FUZZ
@given(st.binary(max_size=512) | st.text(max_size=300).map(str.encode))
def test_parse_job_xml_noise(data):
    _check_xml(data)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


_ORIGINAL: dict[str, bytes] = {}


@FUZZ
@given(st.sampled_from([3, 4, 5]), st.data())
def test_compressed_bit_flip_is_refused_or_harmless(base, data):
    """One flipped bit in a compressed package: refused (the gzip CRC, bzip2 and xz checks), or
    extracted with exactly the original files; never silently different files."""
    raw = bytearray(BASES[base])
    pos = data.draw(st.integers(10, len(raw) - 1))
    raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    with tempfile.TemporaryDirectory(prefix="distren-fuzzing-") as tmp:   # (not an ESCAPES name)
        root = Path(tmp)
        if base not in _ORIGINAL:
            (root / "orig").write_bytes(BASES[base])
            _ORIGINAL[base] = _files(safe_extract(root / "orig", root, LIMITS))
        (root / "archive").write_bytes(bytes(raw))
        (root / "parent").mkdir()
        try:
            out = safe_extract(root / "archive", root / "parent", LIMITS)
        except BadPackage:
            return
        assert _files(out) == _ORIGINAL[base], f"flipped bit at byte {pos} gave different files, not an error"

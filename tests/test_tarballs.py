"""Tests for distren.tarballs: strict extraction of hostile archives and
deterministic writing.

Hostile archives are built in tmp_path with tarfile, and by patching header
bytes where tarfile will not write them. Every refusal must raise BadPackage,
say what is wrong, and leave the scratch parent directory empty.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import stat
import tarfile
import time
from pathlib import Path

import pytest

from distren import tarballs
from distren.errors import BadPackage
from distren.tarballs import (
    MAX_HEADER_SIZE,
    TarLimits,
    iter_tar_files,
    safe_extract,
    tar_directory_entries,
    write_tar,
)

Member = tuple[tarfile.TarInfo, "bytes | None"]


# --- archive builders -------------------------------------------------------


def reg(name: str, data: bytes = b"x", mode: int = 0o644, **pax: str) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def directory(name: str, mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    return info, None


def special(name: str, kind: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def retype(member: Member, kind: bytes) -> Member:
    member[0].type = kind
    return member


def build(
    path: Path,
    members: list[Member],
    mode: str = "w",
    format: int = tarfile.PAX_FORMAT,
) -> Path:
    with tarfile.open(path, mode, format=format) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


def tar_bytes(members: list[Member], format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def set_checksum(header: bytearray) -> None:
    """Recompute the checksum of a hand-edited 512-byte ustar header."""
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir()
    return path


def refused(archive: Path, scratch: Path, expected: str, **kwargs) -> str:
    """Assert safe_extract refuses archive with a message containing expected."""
    with pytest.raises(BadPackage) as info:
        safe_extract(archive, scratch, **kwargs)
    message = info.value.message
    assert expected in message, message
    assert list(scratch.iterdir()) == [], "scratch directory was not cleaned up"
    return message


def modes(root: Path) -> dict[str, int]:
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.lstat().st_mode)
        for path in root.rglob("*")
    }


# --- hostile archives -------------------------------------------------------

HOSTILE: dict[str, tuple[list[Member], str]] = {
    "symlink": ([special("evil", tarfile.SYMTYPE, "/etc/passwd")], "member 'evil': symbolic links are not allowed"),
    "hardlink": ([reg("a"), special("b", tarfile.LNKTYPE, "a")], "member 'b': hard links are not allowed"),
    "hardlink outside": ([special("b", tarfile.LNKTYPE, "/etc/passwd")], "hard links are not allowed"),
    "char device": ([special("tty", tarfile.CHRTYPE)], "member 'tty': character devices are not allowed"),
    "block device": ([special("sda", tarfile.BLKTYPE)], "member 'sda': block devices are not allowed"),
    "fifo": ([special("pipe", tarfile.FIFOTYPE)], "member 'pipe': fifos are not allowed"),
    "contiguous file": ([retype(reg("c"), tarfile.CONTTYPE)], "member 'c': contiguous files are not allowed"),
    "unknown type": ([special("v", b"Z")], "member 'v': unsupported member type"),
    "absolute": ([reg("/x")], "member '/x': absolute path"),
    "double slash absolute": ([reg("//x")], "member '//x': absolute path"),
    "absolute dir": ([directory("/tmp")], "member '/tmp': absolute path"),
    "dotdot": ([reg("../x")], "member '../x': name contains a '..' component"),
    "nested dotdot": ([reg("a/../../x")], "member 'a/../../x': name contains a '..' component"),
    "dotdot dir": ([directory("a/..")], "'..' component"),
    "bare dotdot": ([directory("..")], "'..' component"),
    "backslash": ([reg("a\\..\\b")], "name contains a backslash"),
    "newline": ([reg("a\nb")], r"member 'a\nb': name contains a control character"),
    "tab": ([reg("a\tb")], "name contains a control character"),
    "escape char": ([reg("a\x1b[2Jb")], "name contains a control character"),
    "c1 control": ([reg("a\x85b")], "name contains a control character"),
    "NUL via pax": ([reg("safe", path="a\x00b")], r"member 'a\x00b': name contains a NUL byte"),
    "empty name via pax": ([reg("safe", path="")], "member '': empty name"),
    "dot as file": ([reg(".")], "member '.': empty name"),
    "pax path overrides safe name": ([reg("safe.txt", path="../evil")], "member '../evil': name contains a '..' component"),
    "non-utf8 name": ([reg("x", path="caf\udce9")], "not valid UTF-8"),
    "duplicate file": ([reg("a"), reg("a")], "member 'a': duplicate path 'a' (file)"),
    "duplicate after normalising": ([reg("./d/a"), reg("d//a")], "member 'd//a': duplicate path 'd/a' (file)"),
    "file then dir": ([reg("a"), directory("a")], "duplicate path 'a' (file and directory)"),
    "dir then file": ([directory("a"), reg("a")], "duplicate path 'a' (file and directory)"),
    "implicit dir then file": ([reg("a/b"), reg("a")], "duplicate path 'a' (file and directory)"),
    "file then child": ([reg("a"), reg("a/b")], "member 'a/b': duplicate path 'a' (file and directory)"),
    "negative size via pax": ([reg("neg", b"", size="-1024")], "member 'neg': negative size"),
    "pax sparse": (
        [reg("s", **{"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "s"})],
        "pax header: GNU sparse files are not allowed",
    ),
    "long digit run in pax": ([reg("x", comment="1" * 100_000)], "a number longer than 64 digits"),
    "oversized pax header": ([reg("x", comment="y" * (MAX_HEADER_SIZE + 10))], f"extended headers larger than {MAX_HEADER_SIZE} bytes"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_member_refused(case: str, tmp_path: Path, scratch: Path) -> None:
    members, expected = HOSTILE[case]
    archive = build(tmp_path / "hostile.tar", members)
    refused(archive, scratch, expected)


def test_symlink_then_file_through_it(tmp_path: Path, scratch: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = build(
        tmp_path / "a.tar",
        [special("lnk", tarfile.SYMTYPE, str(outside)), reg("lnk/pwned", b"owned")],
    )
    refused(archive, scratch, "member 'lnk': symbolic links are not allowed")
    assert list(outside.iterdir()) == []


def test_cve_2025_4517_symlink_chain(tmp_path: Path, scratch: Path) -> None:
    """The published shape: nested long directories with a symlink per level,
    a symlink whose resolved path passes PATH_MAX, an escaping symlink and a
    file written through it. Generous limits make sure the link itself is what
    stops it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    component, steps = "d" * 247, "abcdefghijklmnop"
    members: list[Member] = []
    path = step_path = ""
    for step in steps:
        members.append(directory(os.path.join(path, component)))
        members.append(special(os.path.join(path, step), tarfile.SYMTYPE, component))
        path = os.path.join(path, component)
        step_path = os.path.join(step_path, step)
    long_link = os.path.join(step_path, "l" * 254)
    members.append(special(long_link, tarfile.SYMTYPE, "../" * len(steps)))
    members.append(
        special("escape", tarfile.SYMTYPE, f"{long_link}/{'../' * 32}{outside}")
    )
    members.append(reg("escape/pwned", b"owned"))
    archive = build(tmp_path / "cve.tar", members)
    limits = TarLimits(max_name_length=100_000, max_depth=1000)
    refused(archive, scratch, "member 'a': symbolic links are not allowed", limits=limits)
    assert list(outside.iterdir()) == []

    # The same chain without its first links, so a later link is met first.
    archive = build(tmp_path / "cve2.tar", members[-3:])
    refused(archive, scratch, "symbolic links are not allowed", limits=limits)
    assert list(outside.iterdir()) == []


def test_long_path_symlink(tmp_path: Path, scratch: Path) -> None:
    target = "x/" * 3000 + "../" * 3000 + "../../etc"
    archive = build(tmp_path / "a.tar", [special("long", tarfile.SYMTYPE, target), reg("long/f")])
    refused(archive, scratch, "member 'long': symbolic links are not allowed")


def test_gnu_long_name_is_checked(tmp_path: Path, scratch: Path) -> None:
    name = "x" * 120 + "/../../evil"
    archive = build(tmp_path / "a.tar", [reg(name)], format=tarfile.GNU_FORMAT)
    message = refused(archive, scratch, "name contains a '..' component")
    assert repr(name[:100]) in message


def test_gnu_sparse_member(tmp_path: Path, scratch: Path) -> None:
    info, data = reg("holes", b"")
    info.type = tarfile.GNUTYPE_SPARSE
    archive = build(tmp_path / "a.tar", [(info, data)], format=tarfile.GNU_FORMAT)
    refused(archive, scratch, "member 'holes': GNU sparse files are not allowed")


def test_negative_size_in_header(tmp_path: Path, scratch: Path) -> None:
    """A base-256 size of -1, which tarfile never writes (cf. CVE-2025-8194)."""
    raw = bytearray(tar_bytes([reg("neg", b"")], format=tarfile.USTAR_FORMAT))
    header = raw[:512]
    header[124:136] = b"\xff" * 12
    set_checksum(header)
    raw[:512] = header
    archive = tmp_path / "neg.tar"
    archive.write_bytes(bytes(raw))
    refused(archive, scratch, "member 'neg': negative size")


def test_pax_header_cannot_hide_records_in_padding(tmp_path: Path, scratch: Path) -> None:
    raw = bytearray(tar_bytes([reg("ok", comment="c")]))
    # The first block is the pax header, the second its records; tarfile
    # would parse records written into the padding after the declared size.
    assert raw[512:1024].startswith(b"13 comment=c\n")
    raw[512 + 13 : 512 + 13 + 13] = b"13 path=evil\n"
    archive = tmp_path / "pad.tar"
    archive.write_bytes(bytes(raw))
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["evil"]  # what plain tarfile makes of it
    refused(archive, scratch, "pax header: non-zero padding")


def test_pax_digit_runs_are_refused_fast(tmp_path: Path, scratch: Path) -> None:
    """tarfile 3.11.7 needs minutes for this header (CVE-2024-6232)."""
    archive = build(tmp_path / "a.tar", [reg("x", comment="1" * 500_000)])
    start = time.perf_counter()
    refused(archive, scratch, "longer than 64 digits")
    assert time.perf_counter() - start < 2


def test_chained_extended_headers_are_capped(tmp_path: Path, scratch: Path) -> None:
    """Many GNU long-name headers in front of one member add up."""
    size = 200_000  # each long name, with its NUL
    raw = tar_bytes([reg("y" * (size - 1))], format=tarfile.GNU_FORMAT)
    longname = raw[: 512 + tarfile.TarInfo()._block(size)]
    archive = tmp_path / "chain.tar"
    archive.write_bytes(longname * (MAX_HEADER_SIZE // size + 1) + raw)
    refused(archive, scratch, "extended headers larger than")


@pytest.mark.parametrize(
    ("members", "limits", "expected"),
    [
        ([reg("a" * 21)], TarLimits(max_name_length=20), "name longer than 20 characters"),
        ([directory("d" * 30)], TarLimits(max_name_length=20), "name longer than 20 characters"),
        ([reg("a/b/c/d")], TarLimits(max_depth=3), "member 'a/b/c/d': deeper than 3 levels"),
        ([reg(f"f{i}") for i in range(5)], TarLimits(max_members=3), "more than 3 members"),
        ([directory(f"d{i}") for i in range(5)], TarLimits(max_members=4), "more than 4 members"),
        ([reg("big", b"b" * 200)], TarLimits(max_file_size=100), "member 'big': 200 bytes exceeds the limit of 100 bytes per file"),
        ([reg("a", b"a" * 200), reg("b", b"b" * 200)], TarLimits(max_total_size=300), "member 'b': total size exceeds 300 bytes"),
    ],
)
def test_limits(members: list[Member], limits: TarLimits, expected: str, tmp_path: Path, scratch: Path) -> None:
    archive = build(tmp_path / "a.tar", members)
    refused(archive, scratch, expected, limits=limits)


def test_limits_at_the_boundary_pass(tmp_path: Path, scratch: Path) -> None:
    members = [reg("a" * 20, b"1" * 100), reg("b/c/d", b"2" * 100), reg("e", b"3" * 100)]
    archive = build(tmp_path / "a.tar", members)
    limits = TarLimits(
        max_members=3, max_total_size=300, max_file_size=100, max_name_length=20, max_depth=3
    )
    assert safe_extract(archive, scratch, limits=limits).is_dir()


def test_limits_validate() -> None:
    with pytest.raises(ValueError):
        TarLimits(max_members=-1)
    with pytest.raises(ValueError):
        TarLimits(max_depth=True)


def test_member_cap_checked_while_iterating(tmp_path: Path, scratch: Path) -> None:
    """The cap fires before later (here: missing) members are read."""
    members = [reg(f"f{i}", os.urandom(100_000)) for i in range(10)]
    data = gzip.compress(tar_bytes(members))
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(data[: len(data) * 6 // 10])
    refused(archive, scratch, "corrupt archive")
    refused(archive, scratch, "more than 3 members", limits=TarLimits(max_members=3))


def test_reserved_top_level_name(tmp_path: Path, scratch: Path) -> None:
    reserved = ("_distren",)
    for members in ([reg("_distren/state.json")], [directory("./_distren")], [reg("_distren")]):
        archive = build(tmp_path / "a.tar", members)
        refused(archive, scratch, "top-level name '_distren' is reserved", reserved=reserved)
    archive = build(tmp_path / "ok.tar", [reg("data/_distren"), reg("_distren2")])
    assert safe_extract(archive, scratch, reserved=reserved).is_dir()


class Zeros(io.RawIOBase):
    """A reader of `size` zero bytes that never holds them all in memory."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def test_gzip_bomb_one_member(tmp_path: Path, scratch: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 50 * 1024**2
        tar.addfile(info, Zeros(info.size))
    assert archive.stat().st_size < 1024**2
    refused(archive, scratch, "member 'zeros'", limits=TarLimits(max_total_size=1024**2))


def test_gzip_bomb_many_members_writes_little(tmp_path: Path, scratch: Path, monkeypatch) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for i in range(100):
            info = tarfile.TarInfo(f"z{i:03}")
            info.size = 512 * 1024
            tar.addfile(info, Zeros(info.size))

    on_disk: list[int] = []
    real_rmtree = shutil.rmtree

    def measuring_rmtree(path, *args, **kwargs):
        on_disk.append(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(tarballs.shutil, "rmtree", measuring_rmtree)
    refused(archive, scratch, "total size exceeds 1048576 bytes", limits=TarLimits(max_total_size=1024**2))
    assert on_disk and on_disk[0] <= 1024**2


def test_copy_counts_bytes_actually_read(tmp_path: Path, scratch: Path, monkeypatch) -> None:
    """Data beyond a member's declared size is refused, not written.

    tarfile never hands out more than the declared size, so simulate a reader
    that does."""
    archive = build(tmp_path / "a.tar", [reg("f", b"0123456789")])
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, member: io.BytesIO(b"z" * 5000))
    refused(archive, scratch, "member 'f': more data than its declared size")


@pytest.mark.parametrize("compress", ["gz", "xz", "bz2", None])
def test_truncated_archive(compress: str | None, tmp_path: Path, scratch: Path) -> None:
    raw = tar_bytes([reg("noise", os.urandom(300_000))])
    if compress == "gz":
        raw = gzip.compress(raw)
    elif compress == "xz":
        raw = lzma.compress(raw)
    elif compress == "bz2":
        raw = bz2.compress(raw)
    archive = tmp_path / "cut.tar"
    archive.write_bytes(raw[: len(raw) // 2])
    refused(archive, scratch, "corrupt archive")


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, I am not a tarball\n" * 40, gzip.compress(b"plain text, gzipped\n" * 100), lzma.compress(b"text\n" * 100)],
    ids=["empty", "text", "gzipped text", "xz text"],
)
def test_not_a_tarball(content: bytes, tmp_path: Path, scratch: Path) -> None:
    archive = tmp_path / "junk"
    archive.write_bytes(content)
    refused(archive, scratch, "not a tar archive (plain, gzip, bzip2 or xz)")


def test_corrupt_gzip(tmp_path: Path, scratch: Path) -> None:
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + os.urandom(2000))
    with pytest.raises(BadPackage):
        safe_extract(archive, scratch)
    assert list(scratch.iterdir()) == []


def test_missing_archive_is_bad_package(tmp_path: Path, scratch: Path) -> None:
    refused(tmp_path / "missing.tar", scratch, "corrupt archive")


# --- archives that extract --------------------------------------------------


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_extract_nested(mode: str, tmp_path: Path, scratch: Path) -> None:
    area = retype(reg("legacy.txt", b"old"), tarfile.AREGTYPE)
    members = [
        directory("."),
        directory("top", mode=0o777),
        reg("top/sub/deep/file.txt", b"deep", mode=0o6755),
        reg("./readme.txt", b"read me", mode=0o600),
        directory("top/"),  # a directory listed twice is fine
        reg("implicit/a/b.txt", b"b"),
        reg("x" * 150, b"long pax name"),
        reg("caf\u00e9/\u65e5\u672c.txt", b"unicode"),
        area,
        reg("empty", b""),
    ]
    archive = build(tmp_path / "good.tar", members, mode=mode)
    dest = safe_extract(archive, scratch)
    assert dest.parent == scratch
    assert (dest / "top/sub/deep/file.txt").read_bytes() == b"deep"
    assert (dest / "readme.txt").read_bytes() == b"read me"
    assert (dest / "implicit/a/b.txt").read_bytes() == b"b"
    assert (dest / ("x" * 150)).read_bytes() == b"long pax name"
    assert (dest / "caf\u00e9/\u65e5\u672c.txt").read_bytes() == b"unicode"
    assert (dest / "legacy.txt").read_bytes() == b"old"
    assert (dest / "empty").read_bytes() == b""
    assert modes(dest) == {
        "top": 0o755,
        "top/sub": 0o755,
        "top/sub/deep": 0o755,
        "top/sub/deep/file.txt": 0o644,
        "readme.txt": 0o644,
        "implicit": 0o755,
        "implicit/a": 0o755,
        "implicit/a/b.txt": 0o644,
        "x" * 150: 0o644,
        "caf\u00e9": 0o755,
        "caf\u00e9/\u65e5\u672c.txt": 0o644,
        "legacy.txt": 0o644,
        "empty": 0o644,
    }


def test_modes_ignore_umask(tmp_path: Path, scratch: Path) -> None:
    archive = build(tmp_path / "a.tar", [reg("d/f", b"f")])
    old = os.umask(0o077)
    try:
        dest = safe_extract(archive, scratch)
    finally:
        os.umask(old)
    assert modes(dest) == {"d": 0o755, "d/f": 0o644}


def test_gnu_format_and_global_pax_header(tmp_path: Path, scratch: Path) -> None:
    archive = build(tmp_path / "gnu.tar", [reg("g" * 120 + "/f", b"gnu")], format=tarfile.GNU_FORMAT)
    dest = safe_extract(archive, scratch)
    assert (dest / ("g" * 120) / "f").read_bytes() == b"gnu"

    # git archive writes a global pax header holding the commit id.
    archive = tmp_path / "git.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "abc123"}) as tar:
        info, data = reg("f", b"git")
        tar.addfile(info, io.BytesIO(data))
    assert (safe_extract(archive, scratch) / "f").read_bytes() == b"git"


def test_empty_archive_gives_empty_directory(tmp_path: Path, scratch: Path) -> None:
    archive = build(tmp_path / "empty.tar", [])
    dest = safe_extract(archive, scratch)
    assert list(dest.iterdir()) == []


def test_each_extraction_gets_a_fresh_directory(tmp_path: Path, scratch: Path) -> None:
    archive = build(tmp_path / "a.tar", [reg("f")])
    first, second = safe_extract(archive, scratch), safe_extract(archive, scratch)
    assert first != second and first.parent == second.parent == scratch


# --- writing ----------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "scenes" / "parts").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "scene.pov").write_text("camera {}\n")
    # Over CHUNK_SIZE, so files are copied in several chunks; repetitive, so xz is quick.
    (root / "scenes" / "parts" / "a.inc").write_bytes(os.urandom(1000) * 1100 + b"tail")
    (root / "scenes-b.txt").write_text("b")
    (root / ("n" * 150)).write_text("long")
    os.chmod(root / "scene.pov", 0o755)
    return root


class WriteOnly(io.RawIOBase):
    """A non-seekable sink, like a socket or a pipe."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        self.data += chunk
        return len(chunk)


@pytest.mark.parametrize("compress", [None, "gz", "xz"])
def test_write_tar_is_deterministic(compress: str | None, tree: Path, tmp_path: Path) -> None:
    entries = tar_directory_entries(tree)
    first = tmp_path / "first.tar"
    with open(first, "wb") as out:
        write_tar(out, entries, compress)
    time.sleep(0.01)
    for _, path in entries:
        os.utime(path, (1_000_000, 1_000_000))
    second = tmp_path / "a-different-name.tar"
    with open(second, "wb") as out:
        write_tar(out, entries, compress)
    sink = WriteOnly()
    write_tar(sink, entries, compress)
    assert first.read_bytes() == second.read_bytes() == bytes(sink.data)

    with tarfile.open(first, "r:*") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [name for name, _ in entries]
    for member in members:
        assert member.isreg()
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname, member.mode) == (
            0, 0, 0, "", "", 0o644,
        )


def test_write_tar_keeps_given_order(tree: Path) -> None:
    entries = [("z.pov", tree / "scene.pov"), ("a/b.txt", tree / "scenes-b.txt")]
    buffer = io.BytesIO()
    write_tar(buffer, entries)
    buffer.seek(0)
    assert [name for name, _, _ in iter_tar_files(buffer)] == ["z.pov", "a/b.txt"]


@pytest.mark.parametrize("compress", [None, "gz", "xz"])
def test_write_then_extract_round_trip(compress: str | None, tree: Path, tmp_path: Path, scratch: Path) -> None:
    archive = tmp_path / "package.tar"
    with open(archive, "wb") as out:
        write_tar(out, tar_directory_entries(tree), compress)
    dest = safe_extract(archive, scratch)
    for name, path in tar_directory_entries(tree):
        assert (dest / name).read_bytes() == path.read_bytes()
    assert {name for name, _ in tar_directory_entries(dest)} == {
        name for name, _ in tar_directory_entries(tree)
    }


@pytest.mark.parametrize("arcname", ["", "/x", "../x", "a/../b", "./a", "a/", "a//b", "a\\b", "a\nb", "."])
def test_write_tar_refuses_bad_arcnames(arcname: str, tree: Path) -> None:
    with pytest.raises(BadPackage):
        write_tar(io.BytesIO(), [(arcname, tree / "scene.pov")])


def test_write_tar_refuses_duplicates_and_non_files(tree: Path) -> None:
    with pytest.raises(BadPackage, match="duplicate archive name"):
        write_tar(io.BytesIO(), [("a", tree / "scene.pov"), ("a", tree / "scenes-b.txt")])
    with pytest.raises(BadPackage, match="is not a regular file"):
        write_tar(io.BytesIO(), [("d", tree / "scenes")])
    fifo = tree / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BadPackage, match="is not a regular file"):
        write_tar(io.BytesIO(), [("f", fifo)])
    with pytest.raises(ValueError):
        write_tar(io.BytesIO(), [], compress="bz2")


def test_tar_directory_entries(tree: Path) -> None:
    entries = tar_directory_entries(tree)
    names = [name for name, _ in entries]
    assert names == sorted(names)
    assert names == ["n" * 150, "scene.pov", "scenes-b.txt", "scenes/parts/a.inc"]
    assert all(path == tree / name for name, path in entries)


def test_tar_directory_entries_refuses_links_and_specials(tree: Path, tmp_path: Path) -> None:
    (tree / "scenes" / "link.inc").symlink_to(tree / "scene.pov")
    with pytest.raises(BadPackage, match="'scenes/link.inc' is a symbolic link"):
        tar_directory_entries(tree)
    (tree / "scenes" / "link.inc").unlink()
    (tree / "dirlink").symlink_to(tmp_path)
    with pytest.raises(BadPackage, match="'dirlink' is a symbolic link"):
        tar_directory_entries(tree)
    (tree / "dirlink").unlink()
    os.mkfifo(tree / "pipe")
    with pytest.raises(BadPackage, match="'pipe' is not a regular file or directory"):
        tar_directory_entries(tree)
    with pytest.raises(BadPackage, match="is not a directory"):
        tar_directory_entries(tree / "scene.pov")


# --- iter_tar_files ---------------------------------------------------------


@pytest.mark.parametrize("compress", [None, "gz", "xz"])
def test_iter_tar_files(compress: str | None, tree: Path, tmp_path: Path) -> None:
    entries = tar_directory_entries(tree)
    archive = tmp_path / "p.tar"
    with open(archive, "wb") as out:
        write_tar(out, entries, compress)
    for source in (archive, io.BytesIO(archive.read_bytes())):
        seen = [(name, info.size, data.read()) for name, info, data in iter_tar_files(source)]
        assert seen == [(name, path.stat().st_size, path.read_bytes()) for name, path in entries]


def test_iter_tar_files_refuses_links_and_junk(tmp_path: Path) -> None:
    archive = build(tmp_path / "a.tar", [directory("d"), reg("d/f", b"f"), special("l", tarfile.SYMTYPE, "d/f")])
    files = iter_tar_files(archive)
    name, _, data = next(files)
    assert (name, data.read()) == ("d/f", b"f")
    with pytest.raises(BadPackage, match="member 'l': not a regular file"):
        next(files)
    with pytest.raises(BadPackage, match="not a tar archive"):
        list(iter_tar_files(io.BytesIO(b"junk" * 200)))


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([reg("../x")], "member '../x': name contains a '..' component"),
        ([reg("./x")], "member './x': archive names must be normalised relative paths"),
        ([reg("a\\b")], "name contains a backslash"),
        ([reg("x", comment="1" * 1000)], "a number longer than 64 digits"),
        ([reg("neg", b"", size="-1")], "member 'neg': negative size"),
    ],
)
def test_iter_tar_files_checks_names_and_headers(members: list[Member], expected: str, tmp_path: Path) -> None:
    archive = build(tmp_path / "a.tar", members)
    with pytest.raises(BadPackage) as info:
        list(iter_tar_files(archive))
    assert expected in info.value.message


def test_iter_tar_files_truncated(tmp_path: Path) -> None:
    raw = gzip.compress(tar_bytes([reg("a", os.urandom(50_000)), reg("b", os.urandom(50_000))]))
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(raw[: len(raw) * 3 // 4])
    with pytest.raises(BadPackage, match="corrupt archive"):
        for _name, _info, data in iter_tar_files(archive):
            data.read()


def test_iter_tar_files_leaves_file_open(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    buffer = io.BytesIO()
    write_tar(buffer, [("f", tmp_path / "f")], compress="gz")
    buffer.seek(0)
    assert [name for name, _, _ in iter_tar_files(buffer)] == ["f"]
    assert not buffer.closed


def test_extract_into_a_named_folder(tmp_path: Path, scratch: Path) -> None:
    """`into`: the folder is made and filled; one that exists is never used; a refused
    archive leaves no folder behind, and the same members are refused as without it."""
    good = build(tmp_path / "good.tar", [reg("a/b.txt", b"hello")])
    dest = tmp_path / "deps" / "alpha-1-0"
    dest.parent.mkdir()
    assert safe_extract(good, scratch, into=dest) == dest
    assert (dest / "a" / "b.txt").read_bytes() == b"hello" and list(scratch.iterdir()) == []
    with pytest.raises(FileExistsError):
        safe_extract(good, scratch, into=dest)
    assert (dest / "a" / "b.txt").read_bytes() == b"hello"
    for case, (members, expected) in HOSTILE.items():
        archive = build(tmp_path / f"hostile-{len(case)}.tar", members)
        target = tmp_path / "deps" / "hostile"
        with pytest.raises(BadPackage) as info:
            safe_extract(archive, scratch, into=target)
        assert expected in info.value.message and not target.exists(), case


def test_write_tar_writes_large_members_as_tarfile_does(tmp_path: Path) -> None:
    """Members over the copy size (1 MiB) go through in pieces of that size: the bytes are those
    tarfile writes with its own small records and copies."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    small = tmp_path / "small.txt"
    small.write_bytes(b"after the big one\n")
    ours = WriteOnly()
    write_tar(ours, [("big.bin", big), ("small.txt", small)])
    reference = io.BytesIO()
    with tarfile.open(fileobj=reference, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for name, path in (("big.bin", big), ("small.txt", small)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = (
                path.stat().st_size, 0o644, 0, 0, 0, "", "")
            with open(path, "rb") as f:
                tar.addfile(info, f)
    assert bytes(ours.data) == reference.getvalue()


# --- the header guard walks the archive as tarfile does (public APIs only) ---


def test_tarballs_uses_no_private_python_internals() -> None:
    """No `import _module` and no `obj._name` on anything but our own objects: a private part
    of tarfile or lzma that a Python release moves would make every package unreadable."""
    import ast

    tree = ast.parse(Path(tarballs.__file__).read_text())
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            private += [alias.name for alias in node.names if alias.name.startswith("_")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("_") \
                and node.module != "__future__":
            private.append(node.module)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                private.append(ast.unparse(node))
        elif isinstance(node, ast.FunctionDef) and node.name.startswith("_") and not node.name.startswith("__"):
            # overriding a private method of a stdlib class is using its internals too
            parent = next((c for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and node in c.body), None)
            if parent is not None and any(ast.unparse(base).startswith(("tarfile.", "lzma.", "gzip.", "bz2."))
                                          for base in parent.bases):
                private.append(f"{parent.name}.{node.name}")
    assert private == []


def test_pax_size_record_moves_the_next_header(tmp_path: Path, scratch: Path) -> None:
    """A pax "size" record replaces the header's size (tarfile writes one past 8 GiB): the guard
    must find the next header where tarfile does, or it vets the wrong bytes."""
    raw = bytearray(tar_bytes([reg("a", b"", size="600"), reg("b", b"bee")]))
    # the pax header (2 blocks), a's header, then b's header where a's 600 bytes (2 blocks) go
    assert raw[1536:1537] == b"b"
    raw[1536:1536] = bytes(range(256)) * 2 + b"\x01" * 88 + bytes(424)  # a's data, padded
    archive = tmp_path / "paxsize.tar"
    archive.write_bytes(bytes(raw))
    with tarfile.open(archive) as tar:
        assert [(m.name, m.size) for m in tar] == [("a", 600), ("b", 3)]
    dest = safe_extract(archive, scratch)
    assert (dest / "a").read_bytes() == bytes(range(256)) * 2 + b"\x01" * 88
    assert (dest / "b").read_bytes() == b"bee"


def test_global_pax_size_is_refused(tmp_path: Path, scratch: Path) -> None:
    """tarfile applies a global "size" to each member's size but not to where the next header
    lies; such an archive has no single reading."""
    archive = tmp_path / "gsize.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT, pax_headers={"size": "5"}) as tar:
        info, data = reg("f", b"0123456789")
        tar.addfile(info, io.BytesIO(data))
    refused(archive, scratch, "pax header: a global header may not set the size")


def test_refusals_come_in_archive_order(tmp_path: Path, scratch: Path) -> None:
    """The guard reads ahead of tarfile but raises only when tarfile reaches the refused header:
    the first bad member is the one named."""
    raw = bytearray(tar_bytes([reg("/abs"), reg("neg", b"")], format=tarfile.USTAR_FORMAT))
    header = raw[1024:1536]
    header[124:136] = b"\xff" * 12
    set_checksum(header)
    raw[1024:1536] = header
    archive = tmp_path / "order.tar"
    archive.write_bytes(bytes(raw))
    refused(archive, scratch, "member '/abs': absolute path")
    del raw[:1024]  # without the first member, the second one's header is refused
    archive.write_bytes(bytes(raw))
    refused(archive, scratch, "member 'neg': negative size")


def test_concatenated_xz_streams(tmp_path: Path, scratch: Path) -> None:
    """As lzma.LZMAFile: streams one after the other are one archive; bytes after the last
    stream that are no xz stream are ignored (the tar trailer is checked)."""
    raw = tar_bytes([reg("f", b"x" * 5000)])
    archive = tmp_path / "cat.tar.xz"
    archive.write_bytes(lzma.compress(raw[:3000]) + lzma.compress(raw[3000:]) + b"not an xz stream, ignored")
    with lzma.open(archive) as xz:
        assert xz.read() == raw  # what lzma.LZMAFile makes of it
    assert (safe_extract(archive, scratch) / "f").read_bytes() == b"x" * 5000


def test_xz_decoder_memory_is_capped(tmp_path: Path, scratch: Path, monkeypatch) -> None:
    raw = tar_bytes([reg("f", b"x")])
    archive = tmp_path / "dict.tar.xz"
    archive.write_bytes(lzma.compress(raw, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 64 * 1024**2}]))
    assert (safe_extract(archive, tmp_path) / "f").read_bytes() == b"x"
    monkeypatch.setattr(tarballs, "XZ_MEMLIMIT", 16 * 1024**2)
    refused(archive, scratch, "Memory usage limit")

"""Strict tar extraction and deterministic tar writing.

Job packages arrive as tarballs from other machines, so extraction trusts
nothing. The tarfile module is used only to *parse* headers: Python 3.11.7's
extraction filters can be bypassed (CVE-2025-4517 and relatives), so this module
never calls TarFile.extract/extractall. safe_extract admits only regular files
and directories with plain relative names, and creates every file and directory
itself, into a fresh scratch directory that is removed again on any error.

Header parsing is hardened as well: tarfile reads the archive as a stream
through a guard that walks the headers first. Extended headers (pax and GNU
long names) are size-capped before tarfile reads them, and pax records are checked with a
linear-time parser before tarfile's own regular expressions see them (3.11.7
backtracks badly on some inputs, CVE-2024-6232). Negative sizes and GNU sparse
members are refused before tarfile acts on them (CVE-2025-8194). The xz
decoder's memory is capped. Only public APIs of tarfile, gzip, bz2 and lzma are
used.

write_tar writes byte-for-byte reproducible PAX archives: fixed order, mtime 0,
owner 0/"" and mode 0o644 for every member, and compression headers without
timestamps or file names.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import BadPackage

CHUNK_SIZE = 1024 * 1024
"""Files are copied in and out of archives in chunks of this many bytes."""

MAX_HEADER_SIZE = 1024 * 1024
"""Most bytes of pax and GNU long-name headers allowed in front of one member."""

_MAX_DIGIT_RUN = 64  # longest run of ASCII digits allowed in a pax header
_SHOW_LIMIT = 100  # member names are shortened to this in messages

_METADATA_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
_REFUSED_TYPES = {
    tarfile.SYMTYPE: "symbolic links",
    tarfile.LNKTYPE: "hard links",
    tarfile.CHRTYPE: "character devices",
    tarfile.BLKTYPE: "block devices",
    tarfile.FIFOTYPE: "fifos",
    tarfile.CONTTYPE: "contiguous files",
    tarfile.GNUTYPE_SPARSE: "GNU sparse files",
}
_NOT_A_TARBALL = "not a tar archive (plain, gzip, bzip2 or xz)"


@dataclass(frozen=True)
class TarLimits:
    """Caps that safe_extract enforces; sizes are in bytes, name length in characters."""

    max_members: int = 10_000
    max_total_size: int = 2 * 1024**3
    max_file_size: int = 2 * 1024**3
    max_name_length: int = 255
    max_depth: int = 32

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TarLimits.{name} must be an int >= 0, got {value!r}")


# ---------------------------------------------------------------------------
# Member names


def _show(name: str) -> str:
    """Quote a member name for a message, shortened to _SHOW_LIMIT characters."""
    if len(name) > _SHOW_LIMIT:
        return repr(name[:_SHOW_LIMIT]) + "..."
    return repr(name)


def _refuse(name: str, reason: str) -> BadPackage:
    """Return the BadPackage for member `name` refused for `reason`."""
    return BadPackage(f"member {_show(name)}: {reason}")


def _split_name(name: str) -> list[str]:
    """Check that a member name is a safe relative path and return its components.

    "." and empty components are dropped, so "./a/" and "a" give ["a"]; the
    result is empty for the archive root ("." or "./"). Raises BadPackage for
    empty, absolute or non-UTF-8 names, "..", NUL, control characters and
    backslashes.
    """
    if not name:
        raise _refuse(name, "empty name")
    if "\0" in name:
        raise _refuse(name, "name contains a NUL byte")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in name):
        raise _refuse(name, "name contains a control character")
    if "\\" in name:
        raise _refuse(name, "name contains a backslash")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse(name, "name is not valid UTF-8") from None
    if name.startswith("/"):
        raise _refuse(name, "absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise _refuse(name, "name contains a '..' component")
    return parts


# ---------------------------------------------------------------------------
# Hardened header parsing


def _check_pax_records(data: bytes, padding: bytes) -> dict[bytes, bytes]:
    """Check pax header data in linear time and return its records; raise BadPackage if malformed.

    Each record is "<length> <keyword>=<value>\\n", where length counts the
    whole record. Also refuses long digit runs (tarfile's hdrcharset search
    is quadratic in them), GNU sparse keywords, and non-zero padding (tarfile
    would parse it as more records). A keyword given twice keeps its last
    value, as in tarfile.
    """
    if padding.strip(b"\0"):
        raise BadPackage("pax header: non-zero padding after the records")
    if re.search(rb"[0-9]{%d}" % (_MAX_DIGIT_RUN + 1), data):
        raise BadPackage(f"pax header: a number longer than {_MAX_DIGIT_RUN} digits")
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        length_text = data[pos:space] if space > pos else b""
        if not length_text.isdigit():
            raise BadPackage(f"pax header: malformed record at byte {pos}")
        end = pos + int(length_text)
        if end <= space + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise BadPackage(f"pax header: bad record length at byte {pos}")
        keyword, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or not keyword:
            raise BadPackage(f"pax header: malformed record at byte {pos}")
        try:
            keyword.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPackage(f"pax header: keyword is not UTF-8 at byte {pos}") from None
        if keyword.startswith(b"GNU.sparse."):
            raise BadPackage("pax header: GNU sparse files are not allowed")
        records[keyword] = value
        pos = end
    return records


def _pax_size(value: bytes) -> int:
    """The size a pax "size" record gives, read as tarfile reads it (a bad number is 0)."""
    try:
        return int(value.decode("utf-8", "surrogateescape"))
    except ValueError:
        return 0


def _blocks(size: int) -> int:
    """size rounded up to whole tar blocks."""
    return -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


# The member types the tarfile documentation lists; tarfile skips the data of regular files and
# of any type not in this list, and reads none after the others (directories, links, devices).
_TARFILE_TYPES = (
    tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE,
    tarfile.FIFOTYPE, tarfile.CONTTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.GNUTYPE_SPARSE,
)

# What may follow the last member: the end-of-archive marker (two zero blocks) and zero padding
# up to the record size (10 KiB for tar, more for some writers). Anything else is refused.
MAX_TRAILER = 1024 * 1024

# What the _HeaderGuard expects next in the stream.
_HEADER, _PAX_DATA, _DATA, _TRAILER = "header", "pax data", "data", "trailer"


class _HeaderGuard:
    """Reads the decompressed archive for tarfile, walking and vetting its headers first.

    tarfile reads the archive through this object, in order: it reads headers and data and
    skips forward, never back (seeking back is refused). The guard keeps its
    own account of where each header block lies, the way tarfile computes it (a member's data
    follows its header, rounded up to 512 bytes; a pax "size" record replaces the header's
    size), and checks every header and pax record before the bytes that complete it are handed
    on, so tarfile never parses one that the guard refuses: negative sizes and sparse members,
    extended headers over MAX_HEADER_SIZE in front of one member, malformed pax records and a
    "size" in a global pax header (tarfile would apply it to the member's size but not to where
    the next header lies). A refusal is raised at the read that would hand on the refused
    header's first byte, so refusals come in archive order. Where tarfile sees the end (an
    all-zero or unreadable header block), the guard counts what follows: see check_end.

    Hand-written because it is the security boundary of intake and tarfile has no public hook
    between reading a header and acting on it; it uses public APIs only (TarInfo.frombuf and
    the documented type constants), so it does not break when tarfile's internals change.
    """

    def __init__(self, source: BinaryIO):
        self._source = source
        self._offset = 0  # bytes handed on so far
        self._state = _HEADER
        self._left = tarfile.BLOCKSIZE  # bytes of the current unit still to come
        self._unit_start = 0  # offset of the current unit's first byte
        self._unit = bytearray()  # the header block or pax data being collected
        self._pax_type = b""
        self._pax_length = 0
        self._metadata_bytes = 0  # extended headers in front of the coming member
        self._next_size: int | None = None  # a pax "size" for the coming member
        self._refusal: BadPackage | None = None
        self._trailer = 0  # bytes from tarfile's end of the archive on
        self._trailer_clean = True  # and all of them zero

    def read(self, size: int = -1) -> bytes:
        """Return the next size bytes of the archive (fewer only at its end), vetted."""
        if size < 0:
            size = CHUNK_SIZE
        pieces = []
        while size > 0:
            piece = self._read_some(size)
            if not piece:
                break
            pieces.append(piece)
            size -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _read_some(self, size: int) -> bytes:
        if self._refusal is not None:
            raise self._refusal
        data = self._source.read(size)
        if not data:
            if self._state == _HEADER:  # a cut header block: tarfile takes it for the end
                self._count_trailer(bytes(self._unit))
                self._unit.clear()
                self._state = _TRAILER
            return data
        cut = self._walk(data)
        self._offset += cut
        if cut == 0:
            assert self._refusal is not None
            raise self._refusal
        return data[:cut] if cut < len(data) else data

    def tell(self) -> int:
        return self._offset

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Skip forward to offset (tarfile skips the data of members it is not asked for)."""
        if whence == os.SEEK_CUR:
            offset += self._offset
        elif whence != os.SEEK_SET:
            raise io.UnsupportedOperation("the archive is read in order")
        if offset < self._offset:
            raise io.UnsupportedOperation("the archive is read in order: no seeking back")
        while offset > self._offset and self._read_some(min(offset - self._offset, CHUNK_SIZE)):
            pass
        return self._offset

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _walk(self, data: bytes) -> int:
        """Follow the archive's structure through data; return how much of it may be handed on."""
        pos = 0
        while pos < len(data):
            if self._state == _TRAILER:
                self._count_trailer(data[pos:])
                break
            take = min(self._left, len(data) - pos)
            if self._state != _DATA:
                self._unit += data[pos : pos + take]
            pos += take
            self._left -= take
            if self._left == 0:
                try:
                    self._unit_done()
                except BadPackage as exc:
                    self._refusal = exc
                    return max(0, self._unit_start - self._offset)
                self._unit_start = self._offset + pos
        return len(data)

    def _unit_done(self) -> None:
        """Vet the header block, pax data or member data just completed; choose what comes next."""
        unit, self._unit = bytes(self._unit), bytearray()
        if self._state == _HEADER:
            self._header_done(unit)
        elif self._state == _PAX_DATA:
            records = _check_pax_records(unit[: self._pax_length], unit[self._pax_length :])
            if b"size" in records:
                if self._pax_type == tarfile.XGLTYPE:
                    raise BadPackage("pax header: a global header may not set the size")
                if self._next_size is None:  # the first of chained headers wins, as in tarfile
                    self._next_size = _pax_size(records[b"size"])
            self._expect(_HEADER, tarfile.BLOCKSIZE)
        else:
            self._expect(_HEADER, tarfile.BLOCKSIZE)

    def _header_done(self, block: bytes) -> None:
        """Vet a complete header block."""
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:  # zeros or no header: tarfile ends the archive here
            self._state = _TRAILER
            self._count_trailer(block)
            return
        if info.size < 0:
            raise _refuse(info.name, "negative size")
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise _refuse(info.name, "GNU sparse files are not allowed")
        if info.type in _METADATA_TYPES:
            self._metadata_bytes += info.size
            if self._metadata_bytes > MAX_HEADER_SIZE:
                raise BadPackage(f"extended headers larger than {MAX_HEADER_SIZE} bytes")
            if info.type in _PAX_TYPES:
                self._pax_type, self._pax_length = info.type, info.size
                self._expect(_PAX_DATA, _blocks(info.size))
            else:  # a GNU long name or link: tarfile reads it as a name
                self._expect(_DATA, _blocks(info.size))
            return
        size = info.size if self._next_size is None else self._next_size
        if size < 0:
            raise _refuse(info.name, "negative size")
        self._metadata_bytes, self._next_size = 0, None
        if info.isreg() or info.type not in _TARFILE_TYPES:
            self._expect(_DATA, _blocks(size))
        else:
            self._expect(_HEADER, tarfile.BLOCKSIZE)

    def _expect(self, state: str, length: int) -> None:
        if length == 0:  # no data: the next header follows at once
            state, length = _HEADER, tarfile.BLOCKSIZE
        self._state, self._left = state, length

    def _count_trailer(self, data: bytes) -> None:
        self._trailer += len(data)
        if self._trailer_clean and data.count(0) != len(data):
            self._trailer_clean = False

    def check_end(self) -> None:
        """Read what follows the last member and refuse it unless it is a proper end.

        tarfile takes a cut or damaged header after the first member, or a missing end marker,
        for the end of the archive, and never reads a compressed stream to its end (so gzip's
        and bzip2's checksums go unchecked). What follows the last member must be zeros, at
        least the end-of-archive marker (two zero blocks), ending within MAX_TRAILER bytes, and
        the decompressor must reach the end of its stream cleanly (its checksum verified).
        """
        while True:
            if not self._trailer_clean:
                raise BadPackage("data after the last member that is not the end of the archive "
                                 "(a damaged or truncated header?)")
            if self._trailer > MAX_TRAILER:
                raise BadPackage(f"more than {MAX_TRAILER} bytes after the end of the archive")
            if not self.read(64 * 1024):
                break
        if self._state != _TRAILER:
            raise BadPackage("the archive ends inside a member (truncated?)")
        if self._trailer < 2 * tarfile.BLOCKSIZE:
            raise BadPackage("the archive ends without its end-of-archive marker (truncated?)")


# The xz format lets the archive choose the decoder's dictionary (up to 1.5 GiB): cap the
# decoder's memory. `xz -9` needs 65 MiB.
XZ_MEMLIMIT = 128 * 1024 * 1024


class _XzReader(io.RawIOBase):
    """Decompresses xz with a decoder that refuses streams needing more than XZ_MEMLIMIT.

    lzma.LZMAFile takes no memory limit, so this drives lzma.LZMADecompressor itself, as
    LZMAFile does: concatenated streams are read one after the other, output is produced at most
    as much as asked for (no bomb is ever whole in memory), a stream cut short is an EOFError,
    and what follows the last stream is ignored when it is no xz stream. Closing it leaves raw
    open.
    """

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self._decoder = self._new_decoder()
        self._ended = False

    @staticmethod
    def _new_decoder() -> lzma.LZMADecompressor:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._ended:
            if self._decoder.eof:  # the next stream, or the end
                compressed = self._decoder.unused_data or self._raw.read(CHUNK_SIZE)
                if not compressed:
                    self._ended = True
                    break
                self._decoder = self._new_decoder()
                try:
                    data = self._decoder.decompress(compressed, len(buffer))
                except lzma.LZMAError:  # trailing bytes that are no xz stream
                    self._ended = True
                    break
            else:
                compressed = self._raw.read(CHUNK_SIZE) if self._decoder.needs_input else b""
                if self._decoder.needs_input and not compressed:
                    raise EOFError("the xz data ends before its end-of-stream marker")
                data = self._decoder.decompress(compressed, len(buffer))
            if data:
                buffer[: len(data)] = data
                return len(data)
        return 0


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """Return a reader of raw's decompressed content, sniffing the compression."""
    start = raw.tell()
    magic = raw.read(6)
    raw.seek(start)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return io.BufferedReader(_XzReader(raw), CHUNK_SIZE)
    return raw


@contextlib.contextmanager
def _open_checked(archive: Path | BinaryIO) -> Iterator[tuple[tarfile.TarFile, _HeaderGuard]]:
    """Open a plain, gzip, bzip2 or xz tarball for reading in order, with vetted headers.

    archive is a path or a seekable binary file, which is left open. The archive is read in
    order, once: a member's data can be read only while it is the current member.
    """
    with contextlib.ExitStack() as stack:
        raw = archive
        if isinstance(archive, (str, os.PathLike)):
            raw = stack.enter_context(open(archive, "rb"))
        stream = _decompressed(raw)
        if stream is not raw:
            stack.enter_context(stream)  # closing a decompressor leaves raw open
        guard = _HeaderGuard(stream)
        try:
            tar = tarfile.open(fileobj=guard, mode="r:")
        except tarfile.ReadError:
            raise BadPackage(_NOT_A_TARBALL) from None
        with tar:
            yield tar, guard


def _corrupt(exc: Exception) -> BadPackage:
    """Return the BadPackage reporting an unexpected error while reading an archive."""
    return BadPackage(f"corrupt archive: {str(exc) or type(exc).__name__}")


# ---------------------------------------------------------------------------
# Extraction


class _Extractor:
    """Extracts the members of one archive into dest, checking each in turn."""

    def __init__(self, dest: Path, limits: TarLimits, reserved: tuple[str, ...]):
        self.dest = dest
        self.limits = limits
        self.reserved = reserved
        self.kinds: dict[str, str] = {}  # relative path -> "file" or "dir"
        self.members = 0
        self.declared = 0  # total declared size of files so far
        self.written = 0  # total bytes actually written so far

    def extract(self, tar: tarfile.TarFile) -> None:
        """Extract every member of tar; raise BadPackage at the first bad one."""
        # Iterating a TarFile reads one header at a time, so the member cap
        # stops a huge archive without reading the rest of it.
        for member in tar:
            self.members += 1
            if self.members > self.limits.max_members:
                raise BadPackage(f"more than {self.limits.max_members} members")
            parts = self._check(member)
            if member.isdir():
                if parts:  # "." or "./" is the extraction root itself
                    self._make_dirs(member.name, parts)
            else:
                self._write_file(tar, member, parts)

    def _check(self, member: tarfile.TarInfo) -> list[str]:
        """Check type, sizes and name of a member; return its path components."""
        name = member.name
        if member.type in _REFUSED_TYPES:
            raise _refuse(name, f"{_REFUSED_TYPES[member.type]} are not allowed")
        if member.type not in _FILE_TYPES and member.type != tarfile.DIRTYPE:
            raise _refuse(name, f"unsupported member type {member.type!r}")
        if member.sparse is not None:
            raise _refuse(name, "GNU sparse files are not allowed")
        if member.size < 0:
            raise _refuse(name, "negative size")
        if len(name) > self.limits.max_name_length:
            raise _refuse(
                name, f"name longer than {self.limits.max_name_length} characters"
            )
        parts = _split_name(name)
        if not parts and not member.isdir():
            raise _refuse(name, "empty name")
        if len(parts) > self.limits.max_depth:
            raise _refuse(name, f"deeper than {self.limits.max_depth} levels")
        if parts and parts[0] in self.reserved:
            raise _refuse(name, f"top-level name {parts[0]!r} is reserved")
        if member.isreg():
            if member.size > self.limits.max_file_size:
                raise _refuse(
                    name,
                    f"{member.size} bytes exceeds the limit of "
                    f"{self.limits.max_file_size} bytes per file",
                )
            self.declared += member.size
            if self.declared > self.limits.max_total_size:
                raise _refuse(
                    name, f"total size exceeds {self.limits.max_total_size} bytes"
                )
        return parts

    def _make_dirs(self, name: str, parts: list[str]) -> None:
        """Create each missing directory of parts, refusing clashes with files."""
        for depth in range(1, len(parts) + 1):
            relative = "/".join(parts[:depth])
            kind = self.kinds.get(relative)
            if kind == "dir":
                continue
            if kind == "file":
                raise _refuse(name, f"duplicate path {relative!r} (file and directory)")
            path = self.dest / relative
            try:
                os.mkdir(path, 0o755)
            except FileExistsError:
                # Only we write here, so this is unexpected: accept only a real directory.
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise _refuse(name, f"{relative!r} exists and is not a directory") from None
            except OSError as exc:
                raise _refuse(name, f"cannot create directory: {exc.strerror}") from exc
            os.chmod(path, 0o755)  # mkdir's mode is reduced by the umask
            self.kinds[relative] = "dir"

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str]) -> None:
        """Create the file for member and copy its data, counting written bytes."""
        relative = "/".join(parts)
        if relative in self.kinds:
            kind = "file" if self.kinds[relative] == "file" else "file and directory"
            raise _refuse(member.name, f"duplicate path {relative!r} ({kind})")
        self._make_dirs(member.name, parts[:-1])
        self.kinds[relative] = "file"

        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.dest / relative, flags, 0o644)
        except OSError as exc:
            raise _refuse(member.name, f"cannot create file: {exc.strerror}") from exc
        with open(fd, "wb") as out, tar.extractfile(member) as source:
            os.fchmod(fd, 0o644)  # the umask may have narrowed the mode
            copied = 0
            while chunk := source.read(CHUNK_SIZE):
                copied += len(chunk)
                # Check before writing, so no cap is ever exceeded on disk.
                if copied > member.size:
                    raise _refuse(member.name, "more data than its declared size")
                if copied > self.limits.max_file_size:
                    raise _refuse(member.name, "file exceeds the size limit")
                if self.written + copied > self.limits.max_total_size:
                    raise _refuse(member.name, "archive exceeds the total size limit")
                out.write(chunk)
        if copied != member.size:
            raise _refuse(member.name, f"truncated: {copied} of {member.size} bytes")
        self.written += copied




def safe_extract(
    archive: Path,
    parent: Path,
    limits: TarLimits = TarLimits(),
    reserved: tuple[str, ...] = (),
    into: Path | None = None,
) -> Path:
    """Extract a tarball into a fresh directory under parent and return its path.

    The archive may be plain, gzip, bzip2 or xz compressed. Only regular files
    (written 0o644) and directories (0o755) are admitted; top-level names in
    `reserved` are refused. On any failure the new directory is removed again
    and BadPackage is raised, naming the offending member and the reason.

    With `into`, that directory is made (it must not exist yet; its parent must)
    and used instead of a fresh one under parent: a dependency's output goes
    straight where the render reads it, without a rename.
    """
    if into is not None:
        os.mkdir(into, 0o700)   # FileExistsError: never into a directory that exists
        dest = Path(into)
    else:
        dest = Path(tempfile.mkdtemp(dir=parent))
    try:
        with _open_checked(archive) as (tar, guard):
            _Extractor(dest, limits, reserved).extract(tar)
            guard.check_end()
    except BaseException as exc:
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(exc, BadPackage) or not isinstance(exc, Exception):
            raise
        raise _corrupt(exc) from exc
    return dest


# ---------------------------------------------------------------------------
# Writing and re-reading our own archives


def _check_arcname(arcname: str) -> None:
    """Refuse an arcname that is not a normalised, safe relative path."""
    parts = _split_name(arcname)
    if "/".join(parts) != arcname:
        raise _refuse(arcname, "archive names must be normalised relative paths")


def _open_regular_file(path: Path) -> BinaryIO:
    """Open path for reading; raise BadPackage if it is not a regular file.

    O_NONBLOCK keeps a fifo from hanging the open; it does nothing for files.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadPackage(f"{str(path)!r} is not a regular file")
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def write_tar(
    out: BinaryIO,
    entries: Iterable[tuple[str, Path]],
    compress: str | None = None,
) -> None:
    """Write a deterministic PAX tarball of entries (arcname, file path) to out.

    Members appear in the order given, each with mtime 0, uid/gid 0, empty
    owner names and mode 0o644; file data is streamed. compress is None, "gz"
    or "xz". The same inputs always give the same bytes. out need not be
    seekable and is left open. Raises BadPackage for an unsafe or duplicate
    arcname or a path that is not a regular file.
    """
    if compress not in (None, "gz", "xz"):
        raise ValueError(f"compress must be None, 'gz' or 'xz', not {compress!r}")
    with contextlib.ExitStack() as stack:
        sink: BinaryIO = out
        if compress == "gz":
            # Our own GzipFile: tarfile's "w|gz" stamps the time and file name.
            sink = stack.enter_context(
                gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0)
            )
        elif compress == "xz":
            sink = stack.enter_context(lzma.LZMAFile(out, mode="wb"))
        tar = stack.enter_context(
            # data copied and written in CHUNK_SIZE pieces (tarfile's stream copies 16 KiB at a
            # time into 10 KiB records; larger copies into small records would be quadratic)
            tarfile.open(
                fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                bufsize=CHUNK_SIZE, copybufsize=CHUNK_SIZE,
            )
        )
        seen: set[str] = set()
        for arcname, path in entries:
            _check_arcname(arcname)
            if arcname in seen:
                raise _refuse(arcname, "duplicate archive name")
            seen.add(arcname)
            with _open_regular_file(path) as source:
                info = tarfile.TarInfo(arcname)
                info.size = os.fstat(source.fileno()).st_size
                info.mode = 0o644
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, source)


def tar_directory_entries(root: Path) -> list[tuple[str, Path]]:
    """List every regular file under root as (relative posix path, path), sorted.

    Raises BadPackage for a symbolic link or anything that is neither a
    regular file nor a directory; links are never followed.
    """
    root = Path(root)
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        raise BadPackage(f"{str(root)!r} is not a directory")
    entries: list[tuple[str, Path]] = []
    pending = [(root, "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as scan:
            for entry in scan:
                relative = prefix + entry.name
                if entry.is_symlink():
                    raise BadPackage(f"{relative!r} is a symbolic link")
                if entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), relative + "/"))
                elif entry.is_file(follow_symlinks=False):
                    entries.append((relative, Path(entry.path)))
                else:
                    raise BadPackage(f"{relative!r} is not a regular file or directory")
    entries.sort(key=lambda entry: entry[0])
    return entries


class _MemberData(io.RawIOBase):
    """The data of one archive member, reporting corrupt data as BadPackage."""

    def __init__(self, data: BinaryIO):
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            chunk = self._data.read(len(buffer))
        except BadPackage:
            raise
        except Exception as exc:  # EOFError, zlib.error, lzma.LZMAError, tarfile.ReadError
            raise _corrupt(exc) from exc
        buffer[: len(chunk)] = chunk
        return len(chunk)


def iter_tar_files(
    archive: Path | BinaryIO,
) -> Iterator[tuple[str, tarfile.TarInfo, BinaryIO]]:
    """Yield (name, info, data) for each regular file of a tarball, in archive order.

    Meant for re-reading archives made by write_tar (to re-bundle them), so it
    expects what write_tar makes: normalised relative names and regular files.
    Directories are skipped; any other member, or an unsafe name, raises
    BadPackage. Headers are parsed with the same hardening as safe_extract,
    but sizes are not capped: use safe_extract for untrusted packages.
    archive is a path or a seekable binary file (left open); the data objects
    can be read only while the iteration is still running.
    """
    try:
        with _open_checked(archive) as (tar, _guard):
            for member in tar:
                if member.isdir():
                    continue
                if member.type not in _FILE_TYPES or member.sparse is not None:
                    raise _refuse(member.name, "not a regular file or directory")
                if member.size < 0:
                    raise _refuse(member.name, "negative size")
                _check_arcname(member.name)
                yield member.name, member, _MemberData(tar.extractfile(member))
    except BadPackage:
        raise
    except Exception as exc:  # truncated or corrupt data: EOFError, zlib, lzma, ...
        raise _corrupt(exc) from exc

"""Strict tar extraction and deterministic tar writing.

Job packages arrive as tarballs from other machines, so extraction trusts
nothing. The tarfile module is used only to *parse* headers: Python 3.11.7's
extraction filters can be bypassed (CVE-2025-4517 and relatives), so this module
never calls TarFile.extract/extractall. safe_extract admits only regular files
and directories with plain relative names, and creates every file and directory
itself, into a fresh scratch directory that is removed again on any error.

Header parsing is hardened as well. Extended headers (pax and GNU long names)
are size-capped before tarfile reads them, and pax records are checked with a
linear-time parser before tarfile's own regular expressions see them (3.11.7
backtracks badly on some inputs, CVE-2024-6232). Negative sizes and GNU sparse
members are refused before tarfile acts on them (CVE-2025-8194).

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


def _check_pax_records(data: bytes, padding: bytes) -> None:
    """Check pax header data in linear time; raise BadPackage if malformed.

    Each record is "<length> <keyword>=<value>\\n", where length counts the
    whole record. Also refuses long digit runs (tarfile's hdrcharset search
    is quadratic in them), GNU sparse keywords, and non-zero padding (tarfile
    would parse it as more records).
    """
    if padding.strip(b"\0"):
        raise BadPackage("pax header: non-zero padding after the records")
    if re.search(rb"[0-9]{%d}" % (_MAX_DIGIT_RUN + 1), data):
        raise BadPackage(f"pax header: a number longer than {_MAX_DIGIT_RUN} digits")
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 21)
        length_text = data[pos:space] if space > pos else b""
        if not length_text.isdigit():
            raise BadPackage(f"pax header: malformed record at byte {pos}")
        end = pos + int(length_text)
        if end <= space + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise BadPackage(f"pax header: bad record length at byte {pos}")
        keyword, equals, _ = data[space + 1 : end - 1].partition(b"=")
        if not equals or not keyword:
            raise BadPackage(f"pax header: malformed record at byte {pos}")
        try:
            keyword.decode("utf-8")
        except UnicodeDecodeError:
            raise BadPackage(f"pax header: keyword is not UTF-8 at byte {pos}") from None
        if keyword.startswith(b"GNU.sparse."):
            raise BadPackage("pax header: GNU sparse files are not allowed")
        pos = end


class _HeaderGuard:
    """A read-through wrapper over the decompressed archive that vets headers.

    _CheckedTarInfo tells it about every header before tarfile processes it;
    it refuses negative sizes and sparse members, caps the extended headers in
    front of one member at MAX_HEADER_SIZE, and checks pax data on its way to
    tarfile's parser.
    """

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._metadata_bytes = 0
        self._pending_pax: int | None = None

    def check_header(self, info: tarfile.TarInfo) -> None:
        """Vet a header that tarfile has decoded but not yet acted on."""
        if info.size < 0:
            raise _refuse(info.name, "negative size")
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise _refuse(info.name, "GNU sparse files are not allowed")
        if info.type not in _METADATA_TYPES:
            self._metadata_bytes = 0
            return
        self._metadata_bytes += info.size
        if self._metadata_bytes > MAX_HEADER_SIZE:
            raise BadPackage(f"extended headers larger than {MAX_HEADER_SIZE} bytes")
        if info.type in _PAX_TYPES:
            self._pending_pax = info.size  # the next read is this header's data

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if self._pending_pax is not None:
            length, self._pending_pax = self._pending_pax, None
            _check_pax_records(data[:length], data[length:])
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._stream.seekable()


class _CheckedTarInfo(tarfile.TarInfo):
    """TarInfo that lets the _HeaderGuard vet each header before it is processed.

    _proc_member is the hook tarfile documents for subclasses; it runs for
    every header, including those chained behind pax and GNU long-name headers.
    """

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        tar.fileobj.check_header(self)
        return super()._proc_member(tar)


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
        return _xz_reader(raw)
    return raw


# The xz format lets the archive choose the decoder's dictionary (up to 1.5 GiB): cap the
# decoder's memory. `xz -9` needs 65 MiB.
XZ_MEMLIMIT = 128 * 1024 * 1024


def _xz_reader(raw: BinaryIO) -> BinaryIO:
    """An LZMAFile whose decoder refuses archives that need more than XZ_MEMLIMIT.
    LZMAFile itself takes no memory limit; its reader does (Python 3.11's _compression)."""
    import _compression

    reader = lzma.LZMAFile(raw, mode="rb")
    reader._buffer = io.BufferedReader(_compression.DecompressReader(
        raw, lzma.LZMADecompressor, trailing_error=lzma.LZMAError, memlimit=XZ_MEMLIMIT))
    return reader


@contextlib.contextmanager
def _open_checked(archive: Path | BinaryIO) -> Iterator[tarfile.TarFile]:
    """Open a plain, gzip, bzip2 or xz tarball for reading with hardened headers.

    archive is a path or a seekable binary file, which is left open.
    """
    with contextlib.ExitStack() as stack:
        raw = archive
        if isinstance(archive, (str, os.PathLike)):
            raw = stack.enter_context(open(archive, "rb"))
        stream = _decompressed(raw)
        if stream is not raw:
            stack.enter_context(stream)  # closing a decompressor leaves raw open
        try:
            tar = tarfile.open(
                fileobj=_HeaderGuard(stream), mode="r:", tarinfo=_CheckedTarInfo
            )
        except tarfile.ReadError:
            raise BadPackage(_NOT_A_TARBALL) from None
        with tar:
            yield tar


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


# What may follow the last member: the end-of-archive marker (two zero blocks) and zero padding
# up to the record size (10 KiB for tar, more for some writers). Anything else is refused.
MAX_TRAILER = 1024 * 1024


def _check_end(tar: tarfile.TarFile) -> None:
    """tarfile takes a cut or damaged header after the first member, or a missing end marker,
    for the end of the archive, and never reads a compressed stream to its end (so gzip's and
    bzip2's checksums go unchecked). Read what follows the last member: it must be zeros, at
    least the end-of-archive marker, ending within MAX_TRAILER bytes, and the decompressor must
    reach the end of its stream cleanly (its checksum verified)."""
    stream = tar.fileobj
    stream.seek(tar.offset)
    rest = 0
    while chunk := stream.read(64 * 1024):
        rest += len(chunk)
        if chunk.count(0) != len(chunk):
            raise BadPackage("data after the last member that is not the end of the archive "
                             "(a damaged or truncated header?)")
        if rest > MAX_TRAILER:
            raise BadPackage(f"more than {MAX_TRAILER} bytes after the end of the archive")
    if rest < 2 * tarfile.BLOCKSIZE:
        raise BadPackage("the archive ends without its end-of-archive marker (truncated?)")


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
        with _open_checked(archive) as tar:
            _Extractor(dest, limits, reserved).extract(tar)
            _check_end(tar)
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
        with _open_checked(archive) as tar:
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

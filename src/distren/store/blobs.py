"""A content-addressed blob store: seed tarballs, frame tarballs and bundles, named by SHA-256.

A blob is written to a temporary file inside the store, fsynced, then renamed into place, so a
reader (or a restart after kill -9) never sees a half-written blob. Writers stream: nothing is
held whole in memory. Several small blobs (a chunk's frame outputs) can be committed as a group:
written, made durable together, renamed, made durable together (`BlobStore.put_many`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from ..errors import NotFound, TooLarge

_HASH_RE = re.compile(r"[0-9a-f]{64}")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


class BlobWriter:
    """Receives a blob in chunks; `commit()` verifies and publishes it, `abort()` drops it."""

    def __init__(self, store: "BlobStore", max_size: int | None):
        self._store = store
        self._max_size = max_size
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="blob-")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._max_size is not None and self.size > self._max_size:
            self.abort()
            raise TooLarge(f"body exceeds the limit of {self._max_size} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def close(self, sync: bool = True) -> None:
        """Finish writing (flush, fsync unless `sync` is False: the caller syncs) without
        publishing: the file at `path` can be read."""
        if not self._file.closed:
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
            self._file.close()

    def commit(self, expect_sha256: str | None = None, sync: bool = True) -> Blob:
        """Publish the blob under its hash (verified against `expect_sha256` when given).
        `sync=False` only within `BlobStore.put_many`, which makes the group durable."""
        self.close(sync)
        digest = self._hash.hexdigest()
        if expect_sha256 is not None and digest != expect_sha256:
            self.path.unlink(missing_ok=True)
            raise ValueError(f"hash mismatch: expected {expect_sha256}, got {digest}")
        self._store._publish(self.path, digest, sync)
        return Blob(digest, self.size)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "BlobWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


class BlobStore:
    """Blobs live at `<root>/<first two hex digits>/<hash>`; temporary files in `<root>/tmp`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Temporary files left by a crash are never visible as blobs; clear them.
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        if not _HASH_RE.fullmatch(sha256):
            raise NotFound(f"no blob {sha256!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def open(self, sha256: str) -> BinaryIO:
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFound(f"no blob {sha256}") from None

    def writer(self, max_size: int | None = None) -> BlobWriter:
        return BlobWriter(self, max_size)

    def put_file(self, src: Path) -> Blob:
        """Copy a file into the store (streamed)."""
        with self.writer() as w, open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                w.write(chunk)
            return w.commit()

    def adopt(self, path: Path, expect_sha256: str) -> Blob:
        """Move a finished file (inside the store's tmp folder, e.g. a resumed download) into
        the store after checking its hash; ValueError when it does not match (file removed)."""
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
            os.fsync(f.fileno())
        if h.hexdigest() != expect_sha256:
            path.unlink(missing_ok=True)
            raise ValueError(f"hash mismatch: expected {expect_sha256}, got {h.hexdigest()}")
        self._publish(path, expect_sha256)
        return Blob(expect_sha256, size)

    def put_many(self, writes: list[Callable[[BinaryIO], None]]) -> list[Blob]:
        """Several blobs, each written by one callable into the file it is given, committed as a
        group: all written, one file-system sync (their data durable), all renamed into place,
        one more sync (their names durable). A chunk of 50 frame outputs costs two syncs instead
        of a hundred fsyncs. On any error no blob of the group is left half-written (the ones
        already published are whole, and content-addressed: harmless)."""
        writers: list[BlobWriter] = []
        try:
            for write in writes:
                w = self.writer()
                writers.append(w)
                write(w)
                w.close(sync=False)
            _sync_filesystem(self.tmp_dir, [w.path for w in writers])
            blobs = [w.commit(sync=False) for w in writers]
        except BaseException:
            for w in writers:
                w.abort()
            raise
        _sync_filesystem(self.root, sorted({self.path(b.sha256).parent for b in blobs}))
        return blobs

    def _publish(self, tmp: Path, digest: str, sync: bool = True) -> None:
        final = self.path(digest)
        final.parent.mkdir(exist_ok=True)
        if final.exists():
            tmp.unlink()
            return
        os.replace(tmp, final)
        if sync:
            _fsync_path(final.parent)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def _sync_filesystem(anchor: Path, paths: list[Path]) -> None:
    """Make `paths` (files, or folders whose entries changed) durable: one syncfs(2) of the
    file system holding `anchor` where the C library has it (Linux), else one fsync each.
    (Python's os module has no syncfs; ctypes reaches the C library's.)"""
    if not paths:
        return
    if _syncfs is not None and len(paths) > 1:
        fd = os.open(anchor, os.O_RDONLY)
        try:
            if _syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in paths:
        _fsync_path(path)

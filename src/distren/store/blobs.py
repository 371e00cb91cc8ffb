"""A content-addressed blob store: seed tarballs, frame tarballs and bundles, named by SHA-256.

A blob is written to a temporary file inside the store, fsynced, then renamed into place, so a
reader (or a restart after kill -9) never sees a half-written blob. Writers stream: nothing is
held whole in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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

    def close(self) -> None:
        """Finish writing (flush, fsync) without publishing: the file at `path` can be read."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def commit(self, expect_sha256: str | None = None) -> Blob:
        """Publish the blob under its hash (verified against `expect_sha256` when given)."""
        self.close()
        digest = self._hash.hexdigest()
        if expect_sha256 is not None and digest != expect_sha256:
            self.path.unlink(missing_ok=True)
            raise ValueError(f"hash mismatch: expected {expect_sha256}, got {digest}")
        self._store._publish(self.path, digest)
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

    def _publish(self, tmp: Path, digest: str) -> None:
        final = self.path(digest)
        final.parent.mkdir(exist_ok=True)
        if final.exists():
            tmp.unlink()
            return
        os.replace(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

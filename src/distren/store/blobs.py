"""A content-addressed blob store: seed tarballs, frame tarballs and bundles, named by SHA-256.

A blob is written to a temporary file inside the store, fsynced, then renamed into place, so a
reader (or a restart after kill -9) never sees a half-written blob. Writers stream: nothing is
held whole in memory, and the hash is computed as the bytes arrive (a blob is never read again
to hash it). Several small blobs (a chunk's frame outputs) can be committed as a group:
written, made durable together, renamed, made durable together (`BlobStore.put_many`: one
`syncfs` each, shared with the threads syncing at the same time; where the C library has no
syncfs, each file fsynced before the renames and each folder after).

Blobs are reclaimed when nothing references them (server/storage.py, from the database's
counts). A blob just published, or one a render or a download is using, is *pinned* in memory
until its user lets go (`release`): the store never removes a pinned blob, and pinning,
publishing and removing happen under one lock, so a blob cannot vanish between its arrival and
the moment its reference is recorded. Pins die with the process; what they protected and was
never referenced is an orphan that the start-up sweep finds.

`StreamWriter` feeds a writer from the event loop: the chunks of a request body are gathered
into batches, and each batch is hashed and written in a thread while the next one arrives.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import os
import re
import tempfile
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, BinaryIO, Callable, TypeVar

from ..errors import NotFound, TooLarge

T = TypeVar("T")

_HASH_RE = re.compile(r"[0-9a-f]{64}")
CHUNK = 1024 * 1024
# A writer asks the kernel to start writing its file to disk every this many bytes
# (sync_file_range): the fsync at the end then finds little left to write.
WRITEBACK_EVERY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


class BlobWriter:
    """Receives a blob in chunks; `commit()` verifies and publishes it, `abort()` drops it.

    With `name`, the writer continues the temporary file of that name in the store's tmp folder
    (a download resumed with HTTP Range): the bytes already there are read once, to hash them."""

    def __init__(self, store: "BlobStore | None", max_size: int | None, name: str | None = None,
                 tmp_dir: Path | None = None):
        self._store = store
        self._max_size = max_size
        self._hash = hashlib.sha256()
        self.size = 0
        if name is None:
            fd, path = tempfile.mkstemp(dir=tmp_dir or store.tmp_dir, prefix="blob-")
            self.path = Path(path)
            self._file = os.fdopen(fd, "wb")
        else:
            self.path = store.tmp_dir / name
            self._file = open(self.path, "ab")
            with open(self.path, "rb") as f:
                while chunk := f.read(CHUNK):
                    self._hash.update(chunk)
                    self.size += len(chunk)
        self._synced = False
        self._unsynced = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._max_size is not None and self.size > self._max_size:
            self.abort()
            raise TooLarge(f"body exceeds the limit of {self._max_size} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)
        self._unsynced += len(chunk)
        if self._unsynced >= WRITEBACK_EVERY:
            self._unsynced = 0
            _start_writeback(self._file)

    def write_many(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def restart(self) -> None:
        """Drop what was written so far (a resumed download whose server sent it all again)."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self.size = self._unsynced = 0

    def sync(self) -> None:
        """Make the data written so far durable (fsync), also after `close(sync=False)`."""
        if self._file.closed:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            self._file.flush()
            os.fsync(self._file.fileno())
        self._synced = True

    def close(self, sync: bool = True) -> None:
        """Finish writing (flush, fsync unless `sync` is False: the caller syncs) without
        publishing: the file at `path` can be read."""
        if not self._file.closed:
            if sync and not self._synced:
                self.sync()
            self._file.close()

    def digest(self) -> str:
        return self._hash.hexdigest()

    def commit(self, expect_sha256: str | None = None) -> Blob:
        """Publish the blob under its hash (verified against `expect_sha256` when given),
        durable, pinned (`BlobStore.release`). (A group of blobs: `write_group` and
        `BlobStore.publish_group`.)"""
        digest = self.digest()
        if expect_sha256 is not None and digest != expect_sha256:
            self.abort()
            raise ValueError(f"hash mismatch: expected {expect_sha256}, got {digest}")
        self.close()
        if not self._synced:   # (closed before without a sync: `close(sync=False)`)
            self.sync()
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


# Threads that hash and write the batches of streamed bodies (StreamWriter).
_stream_threads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-stream")


class StreamWriter:
    """Feeds a BlobWriter from the event loop without blocking it: chunks are gathered into
    batches of `batch` bytes; a full batch is hashed and written in a thread while the next one
    arrives (at most two batches held: memory stays bounded). The size cap is checked as the
    chunks arrive. An error of the thread (a full disk) is raised by the next `write` or by
    `finish`."""

    def __init__(self, writer: BlobWriter, batch: int = 4 * CHUNK):
        self.writer = writer
        self.batch = batch
        self.size = writer.size
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._busy: Future | None = None

    async def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        limit = self.writer._max_size
        if limit is not None and self.size > limit:
            raise TooLarge(f"body exceeds the limit of {limit} bytes")
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= self.batch:
            await self._flush()

    async def _flush(self) -> None:
        await self._wait()
        if self._pending:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            self._busy = _stream_threads.submit(self.writer.write_many, batch)

    async def _wait(self) -> None:
        if self._busy is not None:
            busy, self._busy = self._busy, None
            await asyncio.wrap_future(busy)

    async def finish(self) -> BlobWriter:
        """Everything written (not yet synced or published): the writer, for `commit`."""
        await self._flush()
        await self._wait()
        return self.writer

    def abort(self) -> None:
        """Drop the blob, once the batch in a thread (if any) has ended."""
        self._pending = []
        busy, self._busy = self._busy, None
        if busy is None:
            self.writer.abort()
        else:
            busy.add_done_callback(lambda _: self.writer.abort())


class BlobStore:
    """Blobs live at `<root>/<first two hex digits>/<hash>`; temporary files in `<root>/tmp`.
    `bytes` is the size of the published blobs (counted by the start-up sweep, then as blobs
    are published and removed)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        # Temporary files left by a crash are never visible as blobs; clear them.
        for leftover in self.tmp_dir.iterdir():
            leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._pins: Counter[str] = Counter()
        # blobs chosen for removal (not pinned then); a pin or a publish takes a blob back
        self._doomed: set[str] = set()
        self.bytes = 0

    # -- pins ---------------------------------------------------------------------------
    def pin(self, sha256: str) -> bool:
        """Pin a blob that is there (False, nothing pinned, when it is not): it stays until
        `release`."""
        with self._lock:
            if not self.path(sha256).is_file():
                return False
            self._doomed.discard(sha256)
            self._pins[sha256] += 1
            return True

    def release(self, sha256s) -> None:
        """Let go of pins taken by `pin`, or by publishing (`commit`, `put_many`)."""
        with self._lock:
            for sha256 in sha256s:
                if self._pins[sha256] <= 1:
                    del self._pins[sha256]
                else:
                    self._pins[sha256] -= 1

    def pinned(self, sha256: str) -> bool:
        return sha256 in self._pins

    def doom(self, sha256s) -> list[str]:
        """Choose blobs for removal: those not pinned now (returned). Until `remove` moves
        them, a pin or a publish of the same blob takes it back (it is in use again)."""
        with self._lock:
            chosen = [s for s in sha256s if s not in self._pins]
            self._doomed.update(chosen)
        return chosen

    def remove(self, sha256: str, trash: Path) -> bool:
        """Move a doomed blob into `trash` (a folder on the same file system, emptied by the
        caller), unless it was taken back meanwhile. True when it is gone (moved, or was not
        there). Safe in a thread: the choice and the move hold the lock, as pins and publishing
        do."""
        path = f"{self.root}/{sha256[:2]}/{sha256}"   # plain strings: pathlib costs more than the syscalls
        with self._lock:
            if sha256 not in self._doomed:
                return False
            self._doomed.discard(sha256)
            if not _HASH_RE.fullmatch(sha256):
                return True
            try:
                size = os.stat(path).st_size
                os.replace(path, f"{trash}/{sha256}")
                self.bytes -= size
            except FileNotFoundError:
                pass
        return True

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

    def resume(self, name: str, max_size: int | None = None) -> BlobWriter:
        """A writer that continues the temporary file `name` (made if missing): a download
        resumed with HTTP Range. The bytes already there are read once, to hash them."""
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a temporary file name: {name!r}")
        return BlobWriter(self, max_size, name)

    def put_file(self, src: Path) -> Blob:
        """Copy a file into the store (streamed); pinned, as every blob published."""
        with self.writer() as w, open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                w.write(chunk)
            return w.commit()

    def put_many(self, writes: list[Callable[[BinaryIO], None]], tmp_dir: Path | None = None) -> list[Blob]:
        """Several blobs, each written by one callable into the file it is given, committed as a
        group: `write_group`, then `publish_group`. A chunk of 50 frame outputs costs two
        syncfs (data, then names) instead of a hundred fsyncs. The blobs are pinned (`release`)."""
        return self.publish_group(write_group(writes, tmp_dir or self.tmp_dir))

    def publish_group(self, staged: list[tuple[str, str, int]]) -> list[Blob]:
        """Publish files written by `write_group` (in this process or another) under their
        hashes, then one syncfs makes their names durable. Pinned (`release`). On any error
        the files not published yet are removed (those published are whole, and
        content-addressed: harmless) and nothing stays pinned."""
        blobs: list[Blob] = []
        try:
            for path, digest, size in staged:
                if not _HASH_RE.fullmatch(digest):
                    raise ValueError(f"not a blob hash: {digest!r}")
                self._publish(Path(path), digest, sync=False)
                blobs.append(Blob(digest, size))
        except BaseException:
            for path, _, _ in staged[len(blobs):]:
                Path(path).unlink(missing_ok=True)
            self.release(b.sha256 for b in blobs)
            raise
        # their names durable (the data was made durable by `write_group`); threads syncing at
        # once share one syncfs (`_GroupSync`): each is a journal commit that stalls the file
        # system's other writers, the database's among them, for some milliseconds
        if not _sync_filesystem(self.root):
            for folder in sorted({self.path(b.sha256).parent for b in blobs}):
                _fsync_path(folder)
        return blobs

    def _publish(self, tmp: Path, digest: str, sync: bool = True) -> None:
        """Rename into place (or drop the copy when the blob is there) and pin it: the caller
        releases it once its reference is recorded, or it is not to be. Pinned only once it is
        in place: a copy that went meanwhile (its work folder removed under it) raises and
        pins nothing."""
        final = self.path(digest)
        final.parent.mkdir(exist_ok=True)
        with self._lock:
            if final.exists():
                tmp.unlink()
            else:
                size = tmp.stat().st_size
                os.replace(tmp, final)
                self.bytes += size
            self._doomed.discard(digest)
            self._pins[digest] += 1
        if sync:
            _fsync_path(final.parent)


async def finish_pinned(work: Awaitable[T], let_go: Callable[[T], None]) -> T:
    """Await `work`, a step that pins blobs and returns what it pinned (blobs it published, or
    hashes it pinned), as a task of its own. A caller cancelled meanwhile (a render killed, a
    request whose client went away) cannot stop it: a thread runs to its end whatever happens
    to the coroutine that awaited it. So it ends on its own and `let_go` gets its result then
    (what the caller would have released; the server's `Storage.written` makes published blobs
    candidates for reclaiming). Without this, a cancel between the pins and the caller's own
    release leaves blobs pinned for the life of the process."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        def abandoned(done: asyncio.Future) -> None:
            if not done.cancelled() and done.exception() is None:   # (a step that fails pins nothing)
                let_go(done.result())
        task.add_done_callback(abandoned)
        raise


def hashes(blobs: "Blob | list[Blob]") -> list[str]:
    """The hashes of a blob or a list of blobs."""
    return [b.sha256 for b in (blobs if isinstance(blobs, list) else [blobs])]


def write_group(writes: list[Callable[[BinaryIO], None]], tmp_dir: Path) -> list[tuple[str, str, int]]:
    """Files for blobs, each written by one callable into the file it is given, in `tmp_dir`
    (on the blob store's file system), their data then made durable (one syncfs, else an
    fsync each). Returns `(path, sha256, size)` each, to be published by
    `BlobStore.publish_group`. Needs no BlobStore: an output process (server/outputs.py) runs it. `tmp_dir` is best a folder of the
    caller's (a render's work folder): creating files is the costly part on ext4, and creations
    in one folder wait for each other. On any error none of the files is left."""
    writers: list[BlobWriter] = []
    try:
        for write in writes:
            w = BlobWriter(None, None, tmp_dir=tmp_dir)
            writers.append(w)
            write(w)
            w.close(sync=False)
        # the data durable before any of them has its name: a name is never seen (by another
        # writer of the same content, or after a crash) before its data is on disk
        if not _sync_filesystem(tmp_dir):
            for w in writers:
                _fsync_path(w.path)
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return [(str(w.path), w.digest(), w.size) for w in writers]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


class _GroupSync:
    """syncfs calls shared by the threads that ask at the same time (group commit): a caller
    needs a sync that starts after it asked; one that finds a sync running waits for it and
    then for the next, which one of the waiters runs for all of them. Each syncfs is a journal
    commit that stalls the file system's other writers (the database's on the event loop among
    them) for some milliseconds: several slots publishing at once pay one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._asked = 0      # tickets handed out
        self._covered = 0    # tickets whose sync has ended
        self._ok = True
        self._running = False

    def sync(self, anchor: Path) -> bool:
        with self._cond:
            self._asked += 1
            mine = self._asked
            while self._covered < mine:
                if self._running:
                    self._cond.wait()
                    continue
                self._running, upto = True, self._asked
                self._cond.release()
                ok = False
                try:
                    ok = _syncfs_once(anchor)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._covered, self._ok = upto, ok
                    self._cond.notify_all()
            return self._ok


def _syncfs_once(anchor: Path) -> bool:
    try:
        fd = os.open(anchor, os.O_RDONLY)
    except OSError:
        return False
    try:
        return _syncfs(fd) == 0
    finally:
        os.close(fd)


_group_syncs: dict[int, _GroupSync] = {}   # one per file system (st_dev)
_group_syncs_lock = threading.Lock()


def _sync_filesystem(anchor: Path) -> bool:
    """syncfs(2) of the file system holding `anchor`, where the C library has it (Linux),
    shared with the threads asking at the same time (`_GroupSync`): every file's data and
    every name on it made durable. False when there is none (or it failed): the caller fsyncs
    what it needs. (Python's os module has no syncfs; ctypes reaches the C library's.)"""
    if _syncfs is None:
        return False
    try:
        device = os.stat(anchor).st_dev
    except OSError:
        return False
    with _group_syncs_lock:
        group = _group_syncs.setdefault(device, _GroupSync())
    return group.sync(anchor)


_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(f: BinaryIO) -> None:
    """Ask the kernel to start writing the file's dirty pages to disk now, without waiting for
    them (Linux's sync_file_range; elsewhere nothing): a hint, durability is still the fsync's."""
    if _sync_file_range is not None:
        f.flush()
        _sync_file_range(f.fileno(), 0, 0, SYNC_FILE_RANGE_WRITE)

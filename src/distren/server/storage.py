"""The data folder's disk: blobs and scene folders reclaimed when nothing uses them, the
start-up sweep, disk use, the free-space reserve (`--min-free-bytes`) and `--keep-finished`.

What references a blob is known in one place: the database's `blob_refs` counts, kept by
triggers on every cell that names a blob (store/db.py), in the transaction that changes the
cell. A count that falls to 0 appends the blob (with its scene folder `scenes/<hash>` and its
preview) to `blob_free` as a candidate; the collector takes candidates in batches, each in one
transaction on the event loop: the blobs not referenced again meanwhile and not pinned
(store/blobs.py: in use by a render, a download, a response, or just written and not yet
referenced) are renamed into `trash/` and their rows deleted; the trash is emptied in a
thread. A kill -9 at any point leaves no reference to a missing blob:
a candidate row not yet deleted is taken again after the restart, and what a crash left
unreferenced (a blob written just before it, a copy of a peer's blob) is an orphan that the
start-up sweep finds by comparing the folders with the counts.

Copies of peers' blobs (seeds a renderer fetched, their extracted scenes, dependency outputs
of peers' frames) are pinned while a lease here uses them and kept `--keep-peer-copies`
seconds after the last one ended (the next frames of the same job do not fetch them again);
then they are candidates like any other.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Iterable, TypeVar

from .. import failpoints
from ..errors import Conflict, NotFound, StorageFull
from ..store.blobs import _HASH_RE, finish_pinned, hashes

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("distren.storage")

T = TypeVar("T")

# Candidates the collector takes at a time (the rows on the event loop, the files in a thread).
BATCH = 200
# How often the storage loop runs: lingering peer copies, the free-space check, a collection.
PERIOD = 1.0
# pins let go in a thread above this many (release_many)
RELEASE_IN_THREAD = 1000
# Scratch folders (tmp, work, trash) and previews are measured by a walk, at most this often.
WALK_SECONDS = 5.0


class Storage:
    """Reclaiming, measuring and guarding the data folder of one server (see the module)."""

    def __init__(self, core: "Core"):
        self.core = core
        self.blobs = core.blobs
        self.conn: sqlite3.Connection = core.conn
        self.data = core.data
        self.trash = core.data / "trash"
        self.trash.mkdir(exist_ok=True)
        # as strings, for the collector's renames (pathlib costs more than the syscalls)
        self._trash, self._scenes, self._previews = str(self.trash), str(core.scenes_dir), str(core.previews_dir)
        config = core.config
        self.min_free = config.min_free_bytes
        self.keep_peer_copies = config.keep_peer_copies
        self.keep_finished = None if config.keep_finished is None else config.keep_finished * 86400.0
        # peers' copies no lease uses any more: hash -> when they become candidates (monotonic)
        self._linger: dict[str, float] = {}
        # the scene folders' sizes, and their sum (installed in threads, reclaimed on the loop)
        self.scene_bytes: dict[str, int] = {}
        self.scenes_total = 0
        self._scenes_lock = threading.Lock()
        self.low = False   # the free space is below the reserve (an episode: logged once)
        self._walked: tuple[float, dict] | None = None
        self._walking: asyncio.Future | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._last_keep = 0.0

    # -- life ----------------------------------------------------------------------------
    async def start(self) -> None:
        """The start-up sweep (in a thread; nothing else runs yet), then the storage loop."""
        orphans = await asyncio.to_thread(self.sweep)
        self.mark(orphans)
        self.check_free()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="storage")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        assert self._wake is not None
        failing = None   # the last failure logged with its traceback (a lasting one is logged once)
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), PERIOD)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self.check_free()
                self._end_lingering()
                await self.collect()
                await self._keep_finished()
                if failing is not None:
                    log.info("reclaiming disk space works again")
                    failing = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if repr(exc) != failing:
                    log.exception("reclaiming disk space failed; trying again every %g s", PERIOD)
                    failing = repr(exc)

    # -- references ----------------------------------------------------------------------
    def mark(self, sha256s: Iterable[str]) -> None:
        """Blobs that may be referenced by nothing (written, then refused; orphans): each a
        candidate unless the database references it."""
        rows = [(s, s) for s in sha256s]
        if rows:
            with _tx(self.conn) as c:
                c.executemany("INSERT INTO blob_free(sha256) SELECT ? WHERE NOT EXISTS"
                              " (SELECT 1 FROM blob_refs WHERE sha256=?)", rows)
            self.wake()

    def release(self, sha256s: Iterable[str], *, written: bool = False, peer_copy: bool = False) -> None:
        """Let go of pins. `written`: the pins of blobs just written, whose reference has been
        recorded (or was not to be): they become candidates unless referenced. `peer_copy`:
        copies of a peer's blobs, kept `--keep-peer-copies` seconds more. Otherwise the pins
        of referenced blobs in use (a render, a response)."""
        sha256s = list(sha256s)
        self.blobs.release(sha256s)
        self._released(sha256s, written, peer_copy)

    async def written(self, work: Awaitable[T]) -> T:
        """Await `work`, a step that writes blobs and returns them pinned (a `Blob` or a list);
        a caller cancelled meanwhile lets them go as `release(written=True)` once it ends
        (`store.blobs.finish_pinned`). Every await of a publishing step goes through here."""
        return await finish_pinned(work, lambda got: self.release(hashes(got), written=True))

    def release_many(self, sha256s: list[str], *, peer_copy: bool = False) -> None:
        """`release` of pins in use (`peer_copy`: copies of a peer's blobs); the pins of many
        (a video frame's dependencies) are let go in a thread, not on the event loop. Not
        awaited: nothing waits for it, and a cancelled caller cannot leave pins held."""
        if len(sha256s) <= RELEASE_IN_THREAD:
            self.release(sha256s, peer_copy=peer_copy)
            return
        if peer_copy:   # kept a while from now: set before the pins go (a collection meanwhile)
            self._linger_from_now(sha256s)
        try:
            done = asyncio.get_running_loop().run_in_executor(None, self.blobs.release, sha256s)
        except RuntimeError:   # no loop, or its executor is shut down: here and now
            self.release(sha256s, peer_copy=peer_copy)
            return
        done.add_done_callback(lambda _: self._released(sha256s, False, peer_copy, lingering=True))

    def _linger_from_now(self, sha256s: list[str]) -> None:
        until = time.monotonic() + self.keep_peer_copies
        self._linger.update(dict.fromkeys(sha256s, until))

    def _released(self, sha256s: list[str], written: bool, peer_copy: bool, lingering: bool = False) -> None:
        """After pins went: peer copies linger (`lingering`: set already), written blobs become
        candidates, others wake the collector."""
        if peer_copy:
            if not lingering:
                self._linger_from_now(sha256s)
            if self.keep_peer_copies <= 0:
                self._end_lingering()
        elif written:
            self.mark(sha256s)
        else:
            self.wake()

    def _end_lingering(self) -> None:
        now = time.monotonic()
        due = [s for s, until in self._linger.items() if until <= now and not self.blobs.pinned(s)]
        for s in due:
            del self._linger[s]
        self.mark(due)

    async def collect(self) -> int:
        """Reclaim every candidate that is not referenced, pinned or lingering, BATCH at a time:
        the event loop only reads and deletes rows (a transaction each); the files are moved
        to the trash and the trash emptied in a thread. Returns how many blobs went."""
        after, total = 0, 0
        while True:
            now = time.monotonic()
            rows = self.conn.execute(
                "SELECT f.id, f.sha256, r.refs FROM blob_free f LEFT JOIN blob_refs r ON r.sha256 = f.sha256"
                " WHERE f.id > ? ORDER BY f.id LIMIT ?", (after, BATCH)).fetchall()
            if not rows:
                break
            after = rows[-1][0]
            # referenced again meanwhile: not a candidate any more; pinned or lingering: later.
            # (No reference is recorded without a pin first, and a pin takes a doomed blob back:
            # what is doomed here is not referenced when the thread moves it.)
            doomed = self.blobs.doom(sorted({r[1] for r in rows if r[2] is None
                                             and self._linger.get(r[1], 0) <= now}))
            gone = set(await asyncio.to_thread(self._reclaim, doomed)) if doomed else set()
            for s in gone:
                self._linger.pop(s, None)
            done = [r[0] for r in rows if r[2] is not None or r[1] in gone]
            if done:
                with _tx(self.conn) as c:
                    c.executemany("DELETE FROM blob_free WHERE id=?", ((i,) for i in done))
            total += len(gone)
            if len(rows) < BATCH:
                break
        return total

    def _reclaim(self, sha256s: list[str]) -> list[str]:
        """In a thread: move the doomed blobs, with their scene folders and previews, to the
        trash, and empty it. Returns the blobs that went."""
        gone = [s for s in sha256s if self.blobs.remove(s, self.trash)]
        for s in gone:
            self._trash_extras(s)
        if gone:
            failpoints.hit("reclaim")
            empty(self.trash)
        return gone

    def _trash_extras(self, sha256: str) -> None:
        """A reclaimed blob's scene folder, preview and unpacked output go with it."""
        if not _HASH_RE.fullmatch(sha256):
            return
        self.core.unpacked.discard(sha256, self.trash)
        if sha256 in self.scene_bytes:   # (every scene folder there is, is counted)
            try:
                os.replace(f"{self._scenes}/{sha256}", f"{self._trash}/{sha256}.scene")
            except FileNotFoundError:
                pass
            self._count_scene(sha256, None)
        try:
            os.replace(f"{self._previews}/{sha256[:2]}/{sha256}.png", f"{self._trash}/{sha256}.png")
        except FileNotFoundError:
            pass

    # -- the start-up sweep ------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Empty the trash; count the blobs' and scenes' bytes; return the hashes of blobs,
        scene folders and previews that nothing references (orphans of a crash, or of a
        version that did not reclaim). Runs in a thread before the server serves. Outputs kept
        unpacked (store/unpacked.py) are dropped: their accounting is in memory."""
        empty(self.trash)   # (first: a start-up killed while emptying it left things there)
        self.core.unpacked.reset(self.trash)
        empty(self.trash)
        reader = sqlite3.connect(self.core.data / "distren.sqlite3", timeout=30)
        try:
            referenced = {r[0] for r in reader.execute("SELECT sha256 FROM blob_refs")}
        finally:
            reader.close()
        orphans: list[str] = []
        total = 0
        for sub in _dirs(self.blobs.root):
            if len(sub.name) != 2:
                continue
            for entry in os.scandir(sub):
                if _HASH_RE.fullmatch(entry.name):
                    total += entry.stat().st_size
                    if entry.name not in referenced:
                        orphans.append(entry.name)
        self.blobs.bytes = total
        for scene in _dirs(self.core.scenes_dir):
            if not _HASH_RE.fullmatch(scene.name):
                continue
            if scene.name in referenced or self.blobs.has(scene.name):
                self._count_scene(scene.name, tree_bytes(scene))
            else:
                orphans.append(scene.name)
        previews = self.core.previews_dir
        for other in _dirs(previews.parent):
            if other != previews:   # previews of an earlier preview version: never served again
                os.replace(other, self.trash / f"previews-{other.name}")
        for sub in _dirs(previews):
            for entry in os.scandir(sub):
                sha256 = entry.name.removesuffix(".png")
                if _HASH_RE.fullmatch(sha256) and sha256 not in referenced and not self.blobs.has(sha256):
                    orphans.append(sha256)
        empty(self.trash)
        return sorted(set(orphans))

    def scene_installed(self, sha256: str, folder: Path) -> None:
        """Count a scene folder just installed (its size measured in the installing thread)."""
        self._count_scene(sha256, tree_bytes(folder))

    def _count_scene(self, sha256: str, size: int | None) -> None:
        with self._scenes_lock:
            self.scenes_total -= self.scene_bytes.pop(sha256, 0)
            if size is not None:
                self.scene_bytes[sha256] = size
                self.scenes_total += size

    # -- disk use and the reserve -----------------------------------------------------------
    def free_bytes(self) -> int:
        st = os.statvfs(self.data)
        return st.f_bavail * st.f_frsize

    def check_free(self) -> int:
        """The free bytes of the data folder's file system; tells the log when they fall below
        the reserve and when they are back above it (once each, not per request)."""
        free = self.free_bytes()
        low = free < self.min_free
        if low != self.low:
            self.low = low
            if low:
                log.warning("data folder %s has %d bytes free, below --min-free-bytes %d: new packages are "
                            "refused (507) and no peers' frames are taken until space is freed",
                            self.data, free, self.min_free)
            else:
                log.warning("data folder %s has %d bytes free again (--min-free-bytes %d): packages are taken",
                            self.data, free, self.min_free)
        return free

    def refuse_if_low(self, incoming: int = 0) -> None:
        """507 `storage_full` when a new package of `incoming` bytes would leave less than the
        reserve free."""
        free = self.check_free()
        if free - incoming < self.min_free:
            raise StorageFull(f"the data folder has {free} bytes free; this server keeps {self.min_free} bytes "
                              "free (--min-free-bytes): new packages are refused until space is freed")

    async def usage(self) -> dict:
        """Disk use, bytes: `blobs`, `scenes` and `unpacked` (counted as they change), `previews` and
        `scratch` (tmp, work and trash folders; a walk in a thread at most every WALK_SECONDS),
        the file system's `free` bytes and the reserve."""
        walked = self._walked
        if walked is None or time.monotonic() - walked[0] > WALK_SECONDS:
            if self._walking is None or self._walking.done():
                self._walking = asyncio.ensure_future(asyncio.to_thread(self._walk))
            walked = await asyncio.shield(self._walking)
        return {"blobs": self.blobs.bytes, "scenes": self.scenes_total, "unpacked": self.core.unpacked.bytes,
                **walked[1],
                "free": self.check_free(), "min_free": self.min_free, "low": self.low}

    def _walk(self) -> tuple[float, dict]:
        core = self.core
        scratch = sum(tree_bytes(d) for d in (core.tmp_dir, core.work_dir, self.trash, self.blobs.tmp_dir))
        self._walked = (time.monotonic(), {"previews": tree_bytes(core.previews_dir), "scratch": scratch})
        return self._walked

    # -- keep-finished ---------------------------------------------------------------------
    async def _keep_finished(self) -> None:
        """Delete the jobs that finished more than --keep-finished ago (those that frames of
        other jobs here still wait for stay), a check every tenth of that time (0.5 s to 60 s)."""
        if self.keep_finished is None:
            return
        now = time.monotonic()
        if now - self._last_keep < min(60.0, max(0.5, self.keep_finished / 10)):
            return
        self._last_keep = now
        sched = self.core.scheduler
        after = 0
        while jobs := sched.finished_before(sched.clock() - self.keep_finished, after=after):
            for job in jobs:
                try:
                    await self.core.job_operations.run(job, sched.delete_steps(job))
                except (Conflict, NotFound):
                    continue   # waited for by unfinished frames, or deleted meanwhile
                log.info("deleted job %d: finished more than --keep-finished ago", job)
            after = jobs[-1]
        self.wake()


class _tx:
    """A write transaction on the server's connection (BEGIN IMMEDIATE ... COMMIT)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _dirs(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def tree_bytes(folder: Path) -> int:
    """Bytes of the regular files under a folder (not following links)."""
    total = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                elif e.is_file(follow_symlinks=False):
                    total += e.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                pass
    return total


def empty(folder: Path) -> None:
    """Remove everything in a folder (the trash), leaving the folder."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass

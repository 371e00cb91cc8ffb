"""The server's core: owns the database, blob store, scheduler and backends, takes packages
in, and builds bundles. The HTTP app (app.py) and the embedded renderer use it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import multiprocessing
import os
import shutil
import signal
import sqlite3
import tarfile
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from .. import __version__, failpoints, previews
from ..backends.base import Backend, find_backends, start_probes
from ..backends.sandbox import prepare_scene
from ..files import atomic_file
from ..errors import BadJob, BadJobXML, BadPackage, Conflict, DistrenError, NotFound, StorageFull
from ..metrics import Metrics
from ..job.spec import JOB_XML_NAME, MAX_XML_BYTES, RESERVED_NAMES, parse_job_xml
from ..scheduler import Scheduler
from ..store import db
from ..store.blobs import Blob, BlobStore, BlobWriter
from ..store.unpacked import UnpackedOutputs
from ..tarballs import iter_tar_files, safe_extract
from ..url import check_server_name
from .config import ServerConfig
from .outputs import OutputStore
from .storage import Storage


class Core:
    def __init__(self, config: ServerConfig, backends: dict[str, Backend] | None = None):
        check_server_name(config.name)
        self.config = config
        self.name = config.name
        data = Path(config.data)
        check_data_folder(data)
        data.mkdir(parents=True, exist_ok=True)
        self.data = data
        # the database first: from now on the folder is recognisably distren's
        self.conn = db.connect(data / DB_NAME)
        self._checkpointer = db.Checkpointer(data / DB_NAME, self.conn)
        self.blobs = BlobStore(data / "blobs")
        self.scenes_dir = data / "scenes"
        self.work_dir = data / "work"
        self.tmp_dir = data / "tmp"
        for d in (self.scenes_dir, self.work_dir, self.tmp_dir):
            d.mkdir(exist_ok=True)
        # outputs of frames rendered here kept unpacked for the frames here that wait for them
        # (emptied by the storage's start-up sweep)
        self.unpacked = UnpackedOutputs(data / "unpacked", UNPACKED_BUDGET)
        # Leftovers of a crash: half-extracted scratch folders and frame work folders.
        for d in (self.work_dir, self.tmp_dir):
            for child in d.iterdir():
                _remove(child)
        self.scheduler = Scheduler(self.conn, self.name, max_failures=config.max_failures,
                                   retry_elsewhere=config.retry_elsewhere)
        self.scheduler.discard_intake()
        self.job_operations = JobOperations()
        self._scene_locks: dict[str, list] = {}
        self._scene_locks_guard = threading.Lock()
        self.backends = find_backends() if backends is None else backends
        start_probes(self.backends.values())   # the renderers' versions, asked all at once
        self.lease_owner = f"local:{self.name}"
        # Packages are unpacked and checked in worker processes: hostile input never shares
        # the server's interpreter (a parser crash costs a worker, not the server), and the
        # CPU work does not hold the event loop's GIL.
        self._intake_pool = None
        if config.intake_processes and backends is None:
            self._intake_pool = self._new_intake_pool()
        # previews are made from frame outputs (as hostile as packages) in a worker of their
        # own, started at the first request; made once, cached under the output's hash
        self.metrics = Metrics()   # its snapshot (slots, peers) is given by the app
        self.previews_dir = data / "previews" / previews.VERSION
        self._preview_pool: ProcessPoolExecutor | None = None
        self._previews_making: dict[str, asyncio.Future] = {}
        self._bundles_making: dict[tuple[int, str], asyncio.Future] = {}
        # reclaiming blobs and scenes, disk use, the free-space reserve, --keep-finished
        self.storage = Storage(self)
        # frames' outputs are written into the blob store by a process of their own (outputs.py)
        self.outputs = OutputStore(self, config.output_processes if backends is None and config.slots else 0)

    def _new_intake_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(self.config.intake_processes, initializer=_intake_worker_init,
                                   mp_context=multiprocessing.get_context("spawn"))
        pool.submit(os.getpid)  # start the worker now, not on the first submit
        return pool

    def draining(self) -> bool:
        """Whether the server is drained (`POST /server/drain`): kept in the database, so a
        drained server stays drained across restarts until it is undrained."""
        return db.get_meta(self.conn, "draining") == "1"

    def set_draining(self, on: bool) -> None:
        db.set_meta(self.conn, "draining", "1" if on else None)

    def available_backends(self) -> list[str]:
        return [name for name, b in self.backends.items() if b.available()]

    def server_info(self) -> dict:
        return {
            "name": self.name,
            "url": f"distren://{self.name}",
            "version": __version__,
            "slots": self.config.slots,
            "backends": {
                name: {"available": b.available(), "version": b.version()} for name, b in self.backends.items()
            },
        }

    # -- intake --------------------------------------------------------------------------
    def new_upload(self) -> BlobWriter:
        return self.blobs.writer(self.config.max_job_bytes)

    async def submit(self, upload: BlobWriter) -> dict:
        """Check an uploaded package and create its job. Raises a DistrenError (4xx) naming
        the problem; then nothing of the package is left behind."""
        job = self.scheduler.begin_job()
        seed: Blob | None = None
        try:
            # flushed for the checker to read; made durable (fsync) in a thread meanwhile
            await asyncio.to_thread(upload.close, False)
            syncing = asyncio.ensure_future(asyncio.to_thread(upload.sync))
            syncing.add_done_callback(lambda t: t.cancelled() or t.exception())
            args = (upload.path, self.tmp_dir, self.config.tar_limits, self.name, job, self.config.max_frames,
                    tuple(self.config.peers))
            try:
                if self._intake_pool is not None:
                    try:
                        spec, scratch, warnings = await asyncio.get_running_loop().run_in_executor(
                            self._intake_pool, check_package, *args)
                    except BrokenProcessPool:
                        self._intake_pool = self._new_intake_pool()  # the next package gets a new worker
                        raise BadPackage("the package crashed the checker; it was refused") from None
                else:
                    spec, scratch, warnings = await asyncio.to_thread(check_package, *args, backends=self.backends)
            finally:
                await asyncio.wait({syncing})   # the file is not removed under the fsync
            try:
                syncing.result()   # OSError: a full disk
                for name in spec.backends():
                    if not self.backends[name].available():
                        if not self.config.peers and not self.config.slurm:   # Slurm workers may have it
                            raise BadJob(f"this server cannot render {name!r} frames: "
                                         f"{self.backends[name].executable} is not installed")
                        warnings.append(f"{name} is not installed here; only peers or workers that have it can render those frames")
                problems = self.scheduler.check_external_deps(spec, job)
                if problems:
                    raise BadJob("; ".join(problems))
                seed = await self.storage.written(asyncio.to_thread(upload.commit))
                await asyncio.to_thread(self._install_scene, scratch, seed.sha256)
                failpoints.hit("intake")
            finally:
                await asyncio.to_thread(_remove, scratch)
            await run_steps(self.scheduler.activate_job_steps(job, spec, seed))
        except OSError as exc:
            upload.abort()
            self.scheduler.drop_job(job)
            raise StorageFull(f"cannot store the package: {exc.strerror or exc}") from None
        except BaseException:
            upload.abort()
            self.scheduler.drop_job(job)
            raise
        finally:
            if seed is not None:   # referenced by the job now, or reclaimed (refused, dropped)
                self.storage.release([seed.sha256], written=True)
        return {**self.scheduler.job(job), "warnings": warnings}

    def _install_scene(self, scratch: Path, sha256: str) -> None:
        final = self.scenes_dir / sha256
        if final.exists():
            return
        prepare_scene(scratch)
        try:
            os.replace(scratch, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # another thread installed the same scene first: theirs is as good
            _remove(scratch)
            return
        self.storage.scene_installed(sha256, final)

    def scene(self, sha256: str) -> Path:
        """The extracted scene folder of a seed blob, extracting it again when missing: once,
        however many renders of its frames ask at the same time (they wait for it)."""
        final = self.scenes_dir / sha256
        if final.is_dir():
            return final
        with self._scene_lock(sha256):
            if not final.is_dir():
                scratch = safe_extract(self.blobs.path(sha256), self.tmp_dir, self.config.tar_limits,
                                       reserved=RESERVED_NAMES)
                try:
                    self._install_scene(scratch, sha256)
                finally:
                    _remove(scratch)
        return final

    @contextlib.contextmanager
    def _scene_lock(self, sha256: str):
        """A lock per seed being extracted (the table holds only seeds someone waits for)."""
        with self._scene_locks_guard:
            entry = self._scene_locks.setdefault(sha256, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._scene_locks_guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._scene_locks[sha256]

    # -- outputs -------------------------------------------------------------------------
    def extract_output(self, blob: Blob, dest: Path) -> None:
        """A dependency's output into dest, a new folder: its copy kept unpacked when this
        server has one (store/unpacked.py), else its tarball unpacked (strictly: removed again
        on any refusal)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.unpacked.take(blob.sha256, dest):
            self.metrics.dependencies.labels("kept").inc()
            return
        safe_extract(self.blobs.path(blob.sha256), self.tmp_dir, self.config.tar_limits, into=dest)
        self.metrics.dependencies.labels("unpacked").inc()

    async def bundle(self, job: int) -> Blob:
        """The job's bundle: every finished frame's files as `<frame>/<file>`, in frame order,
        as a blob, pinned (the caller releases it once served: `storage.release`). Kept for
        the count of done frames (a running job's partial bundle too): it is made again only
        once more frames are done, and the one it replaces is reclaimed. One making per job and
        count, however many ask at once; database work stays on the event loop, the tar
        writing runs in a thread."""
        for _ in range(5):
            key, cached = self.scheduler.cached_bundle(job)
            if cached is not None and self.blobs.pin(cached):
                return Blob(cached, self.blobs.path(cached).stat().st_size)
            blob = await self._once(self._bundles_making, (job, key), lambda: self._make_bundle(job))
            if self.blobs.pin(blob.sha256):   # (a newer bundle may have replaced it meanwhile)
                return blob
        raise Conflict(f"the bundle of job {job} keeps changing while it is made; ask again")

    async def _make_bundle(self, job: int) -> Blob:
        outputs = self.scheduler.done_outputs(job)
        blob = await self.storage.written(asyncio.to_thread(self._write_bundle, outputs))
        try:
            self.scheduler.set_cached_bundle(job, f"done:{len(outputs)}", blob.sha256)
        finally:
            self.storage.release([blob.sha256], written=True)
        self.metrics.bundles.inc()
        return blob

    @staticmethod
    async def _once(making: dict, key, make):
        """`make()` once per key at a time, however many ask meanwhile: they all await it."""
        future = making.get(key)
        if future is None:
            future = asyncio.ensure_future(make())
            making[key] = future
            future.add_done_callback(lambda _f: making.pop(key, None))
        return await asyncio.shield(future)

    def _write_bundle(self, outputs: list[tuple[int, Blob]]) -> Blob:
        with self.blobs.writer() as w:
            with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as out:
                for i, (frame, blob) in enumerate(outputs):
                    if i == len(outputs) // 2:
                        failpoints.hit("bundle")
                    for name, member, stream in iter_tar_files(self.blobs.path(blob.sha256)):
                        info = tarfile.TarInfo(f"{frame}/{name}")
                        info.size = member.size
                        info.mode = 0o644
                        info.mtime = 0
                        out.addfile(info, stream)
            return w.commit()

    # -- previews --------------------------------------------------------------------------
    async def preview(self, job: int, frame: int) -> tuple[Path, str]:
        """The preview PNG of a done frame and its ETag; made at the first request (in the
        preview worker), then read from the cache. Raises NotFound, Conflict (not done) or
        previews.NoPreview."""
        output = self.scheduler.frame_output(job, frame)
        path = self.previews_dir / output.sha256[:2] / f"{output.sha256}.png"
        etag = f'"{output.sha256[:32]}-{previews.VERSION}"'
        if not path.is_file():   # one making per output, however many ask at once
            await self._once(self._previews_making, output.sha256, lambda: self._make_preview(output, path))
        return path, etag

    async def _make_preview(self, output: Blob, path: Path) -> None:
        if not self.blobs.pin(output.sha256):   # held while the preview worker reads it
            raise NotFound(f"the output {output.sha256} is gone (its job was deleted)")
        try:
            await self._make_preview_of(output, path)
        finally:
            self.storage.release([output.sha256])

    async def _make_preview_of(self, output: Blob, path: Path) -> None:
        if self._preview_pool is None:
            self._preview_pool = ProcessPoolExecutor(1, initializer=_preview_worker_init,
                                                     mp_context=multiprocessing.get_context("spawn"))
        try:
            png = await asyncio.get_running_loop().run_in_executor(
                self._preview_pool, previews.make_preview, self.blobs.path(output.sha256), self.tmp_dir)
        except BrokenProcessPool:
            self._preview_pool = None   # the next preview gets a new worker
            raise previews.NoPreview("the frame's image crashed the preview maker") from None
        await asyncio.to_thread(_write_atomically, path, png)

    def close(self) -> None:
        if self._preview_pool is not None:
            self._preview_pool.shutdown(cancel_futures=True)
        if self._intake_pool is not None:
            self._intake_pool.shutdown(cancel_futures=True)
        self.outputs.close()
        self._checkpointer.stop()
        self.conn.close()


class JobOperations:
    """Cancel, retry and delete of one job run one after the other (each is a series of
    transactions with the event loop running between them: two interleaved could leave a
    cancelled job with ready frames). Jobs differ: their operations run side by side."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}

    async def run(self, job: int, steps):
        lock, users = self._locks.get(job, (asyncio.Lock(), 0))
        self._locks[job] = (lock, users + 1)
        try:
            async with lock:
                return await run_steps(steps, failpoint="operation")
        finally:
            lock, users = self._locks[job]
            if users == 1:
                del self._locks[job]
            else:
                self._locks[job] = (lock, users - 1)


async def run_steps(steps, failpoint: str | None = None):
    """Run a scheduler `*_steps` generator on the event loop, letting everything else run
    between its bounded transactions. Returns the generator's return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
        if failpoint:
            failpoints.hit(failpoint)
        await asyncio.sleep(0)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


_worker_backends: dict[str, Backend] | None = None
DB_NAME = "distren.sqlite3"


def check_data_folder(data: Path) -> None:
    """The data folder must be new, empty, or one distren made (it holds the database): at
    start-up the server clears its own scratch folders in it (`tmp`, `work`, `blobs/tmp`), which
    must never be anybody else's."""
    if not data.exists():
        return
    if not data.is_dir():
        raise DistrenError(f"--data {data}: not a folder")
    if (data / DB_NAME).is_file():
        return
    if any(data.iterdir()):
        raise DistrenError(f"--data {data}: the folder is not empty and holds no distren data; "
                           "give a new or empty folder")


def prepare_data_folder(data: Path) -> None:
    """The data folder, checked (see check_data_folder), made if new, and written to once: a
    folder the server cannot use is refused before it starts, naming what failed."""
    check_data_folder(data)
    try:
        data.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=data)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DistrenError(f"--data {data}: cannot write to the data folder: {exc.strerror or exc}") from None


def check_database(data: Path) -> None:
    """An existing database opens (and is upgraded to this distren's schema) before the server
    starts: a version problem is one line, not a failed start-up."""
    if (data / DB_NAME).is_file():
        try:
            db.connect(data / DB_NAME).close()
        except sqlite3.Error as exc:   # not a database, a locked or read-only one
            raise DistrenError(f"--data {data}: cannot open the database {DB_NAME}: {exc}") from None


def _intake_worker_init() -> None:
    """An intake worker dies with the server (also on kill -9) and yields the CPU to it."""
    _worker_init(5)


def _worker_init(nice: int) -> None:
    """A worker process of the server's dies with it (also on kill -9); `nice` > 0 yields the
    CPU to the server."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if nice:
        os.nice(nice)


PREVIEW_MEMORY = 4 << 30   # address space of the preview worker
# most bytes of frame outputs kept unpacked for the frames that wait for them (store/unpacked.py)
UNPACKED_BUDGET = 1 << 30


def _preview_worker_init() -> None:
    """The preview worker: as an intake worker, and within PREVIEW_MEMORY of address space (a
    decoder that runs away fails the preview, not the machine)."""
    import resource

    _intake_worker_init()
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (PREVIEW_MEMORY, PREVIEW_MEMORY))


def _write_atomically(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def check_package(path: Path, tmp_dir: Path, tar_limits, server: str, job: int, max_frames: int,
                  peers: tuple[str, ...], backends: dict[str, Backend] | None = None):
    """Unpack a package strictly into a fresh scratch folder under tmp_dir and check it all:
    distrenjob.xml, frames, dependencies (on this server or a peer), each backend's settings.
    Returns (spec, scratch folder, warnings); on any problem removes the folder and raises a
    DistrenError naming it. Runs in an intake worker process (or a thread)."""
    global _worker_backends
    if backends is None:
        if _worker_backends is None:
            _worker_backends = find_backends()
        backends = _worker_backends
    scratch = safe_extract(path, tmp_dir, tar_limits, reserved=RESERVED_NAMES)
    try:
        xml_path = scratch / JOB_XML_NAME
        if not xml_path.is_file():
            raise BadJobXML(f"the package has no {JOB_XML_NAME} at its top level")
        size = xml_path.stat().st_size
        if size > MAX_XML_BYTES:
            raise BadJobXML(f"{JOB_XML_NAME} is {size} bytes; the limit is {MAX_XML_BYTES}")
        spec = parse_job_xml(xml_path.read_bytes(), server, job, max_frames)
        for name in spec.backends():
            if name not in backends:
                known = ", ".join(sorted(backends)) or "none"
                raise BadJob(f"unknown backend {name!r} (this server knows: {known})")
        for frame in spec.frames:
            for dep in frame.depends:
                if dep.server != server and dep.server not in peers:
                    raise BadJob(
                        f"frame {frame.id} depends on {dep}: server {dep.server!r} is not this server or a peer"
                    )
        warnings = []
        for name, settings in spec.backends().items():
            warnings += backends[name].check(settings, scratch, spec.frames_of(name))
        return spec, scratch, warnings
    except BaseException:
        _remove(scratch)
        raise

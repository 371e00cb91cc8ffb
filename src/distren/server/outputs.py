"""Storing what a render wrote: each frame's output tarball into the blob store and, for the
frames that frames here wait for, the files kept unpacked (store/unpacked.py).

The writing runs in a process of its own, the output process (`ServerConfig.output_processes`,
1; 0: a thread of the server, as the embedded server of `distren render` does): it writes the
tarballs (hashing them) and gathers the kept files in the render's work folder, and makes them
durable; the server then only publishes them (a rename and a pin each, one sync) and puts the
kept folders in place. Measured on this project's 2-core machine (benchmarks/scale.py, a render
that costs nothing, chunks of 50 frames): in the server's threads this step took about 105 ms
a chunk against some 20 ms alone, because four slots' threads doing hundreds of short system
calls each trade the interpreter lock with each other and with the event loop; one thread for
all slots was faster (about 0.7 ms a frame) but still shared the lock. A process has its own.

A render's outputs are the renderer's files (hostile): the output process reads them as the
server's thread did (regular files only, `tarballs.write_tar`), and holds nothing of the
server's (no database, no pins): what it returns is checked when it is published.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

from ..store.blobs import Blob, write_group
from ..store.unpacked import stage
from ..tarballs import write_tar

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("distren.outputs")

Staged = tuple[list[tuple[str, str, int]], list[tuple[str, int] | None]]


def stage_outputs(outputs: list[list[Path]], root: Path, keep: list[bool]) -> Staged:
    """One tarball a frame (deterministic; its files named relative to `root`) written and
    synced in root's parent (the render's work folder), then the files of the frames marked in
    `keep` moved into folders there (`store.unpacked.stage`). Runs in the output process or
    in a thread."""
    scratch = root.parent

    def tarball(files: list[Path]):
        return lambda out: write_tar(out, [(p.relative_to(root).as_posix(), p) for p in files])

    staged = write_group([tarball(files) for files in outputs], scratch)
    parts = [stage(files, root, scratch) if kept else None for files, kept in zip(outputs, keep)]
    return staged, parts


def _init(nice: int) -> None:
    from .core import _worker_init
    _worker_init(nice)


class OutputStore:
    def __init__(self, core: "Core", processes: int):
        self.core = core
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = self._new_pool() if processes else None

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(self.processes, initializer=_init, initargs=(0,),
                                   mp_context=multiprocessing.get_context("spawn"))
        pool.submit(int)   # start the process now, not at the first render
        return pool

    def keeping(self) -> bool:
        """Whether outputs are kept unpacked now: the disk above its reserve, the budget not
        spent."""
        return not self.core.storage.low and self.core.unpacked.bytes < self.core.unpacked.budget

    async def store(self, outputs: list[list[Path]], root: Path, keep: list[bool], remove: Path | None) -> list[Blob]:
        """The frames' outputs stored (pinned until `storage.release(..., written=True)`), the
        kept ones in place; then the folder `remove` (the work folder) is removed, when given.
        Kept files only while `keeping()`."""
        if not self.keeping():
            keep = [False] * len(keep)
        staged: Staged | None = None
        pool = self._pool
        if pool is not None:
            try:
                staged = await asyncio.get_running_loop().run_in_executor(pool, stage_outputs, outputs, root, keep)
            except BrokenProcessPool:
                if self._pool is pool:   # (the slots that waited on it replace it once)
                    log.error("the output process ended unexpectedly; starting another (this chunk in a thread)")
                    self._pool = self._new_pool()
                    pool.shutdown(wait=False)
                # what the process had gathered of the kept files is gone with it: none kept
                keep = [False] * len(keep)
        return await asyncio.to_thread(self._store, outputs, root, keep, staged, remove)

    def _store(self, outputs, root, keep, staged: Staged | None, remove: Path | None) -> list[Blob]:
        if staged is None:
            staged = stage_outputs(outputs, root, keep)
        files, parts = staged
        try:
            blobs = self.core.blobs.publish_group(files)
        except BaseException:
            for part in parts:
                if part is not None:
                    shutil.rmtree(part[0], ignore_errors=True)
            raise
        for blob, part in zip(blobs, parts):
            if part is not None:
                self.core.unpacked.install(blob.sha256, *part)
        if remove is not None:
            shutil.rmtree(remove, True)
        return blobs

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

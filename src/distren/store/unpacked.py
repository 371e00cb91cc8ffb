"""Frame outputs kept unpacked for the frames of this server that depend on them.

A frame that depends on others gets their outputs unpacked into its work folder
(`deps/<server>/<job>/<frame>/`) before it renders. Unpacking a dependency's output tarball
costs a folder and a file created per dependency, the tarball read and checked: about 0.2-0.5
ms each on ext4, all of it between the last frame's end and the dependent's start. A video
frame of a 100,000-frame job waited that long for 100,000 of them.

So when this server renders a frame that a waiting frame here depends on, the files the
renderer just wrote (and that were just written into the output tarball) are moved into
`unpacked/<output sha256>/` instead of being deleted with the work folder: their names are
the tarball's member names, each becomes mode 0644 as extraction would make it. The
dependent's preparation moves the folder into its work folder (one rename) instead of
unpacking the tarball. An entry is used once (the render's work folder is removed after it);
a second dependent of the same output, or one whose entry was not kept, unpacks the tarball
as before: this is a cache, never the only copy.

Keyed by the output's content hash, an entry can never be stale: it holds exactly that
tarball's files. Only regular files with one link are adopted (a renderer cannot slip in a
symbolic link or a second name for a file), and the renderer's processes have ended before
(its sandbox is gone), so nothing writes to them after the tarball was made. Entries are
bounded by `budget` bytes; a blob reclaimed takes its entry with it (storage.py), and the
whole folder is emptied at start-up (its accounting lives in memory).
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import threading
from pathlib import Path

from .blobs import _HASH_RE


_names = itertools.count()


def stage(files: list[Path], root: Path, scratch: Path) -> tuple[str, int] | None:
    """Move `files` (named relative to `root`) into a new folder in `scratch`, each file mode
    0644, as unpacking their output tarball would make them: `(folder, bytes)` for
    `UnpackedOutputs.install`, or None, nothing moved, when a file is not a plain regular
    file with one link (a renderer's symbolic link or second name for a file is never kept).
    Needs no UnpackedOutputs: an output process (server/outputs.py) runs it. `scratch` is
    best a folder of the caller's (a render's work folder): folders made in one folder wait
    for each other on ext4."""
    total = 0
    modes = []
    try:
        for f in files:
            st = os.lstat(f)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return None
            total += st.st_size
            modes.append(stat.S_IMODE(st.st_mode))
    except OSError:
        return None
    part = Path(scratch) / f".part-{os.getpid()}-{next(_names)}"
    try:
        os.mkdir(part, 0o700)
        for f, mode in zip(files, modes):
            relative = Path(f).relative_to(root)
            target = part / relative
            if len(relative.parts) > 1:
                target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(f, target)
            if mode != 0o644:
                os.chmod(target, 0o644, follow_symlinks=False)
    except (OSError, ValueError):
        shutil.rmtree(part, ignore_errors=True)   # (files moved in are lost: this is a cache)
        return None
    return str(part), total


class UnpackedOutputs:
    def __init__(self, root: Path, budget: int):
        self.root = root
        self.budget = budget
        self.bytes = 0
        self._sizes: dict[str, int] = {}   # sha256 -> bytes of its entry (-1: being made)
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._sizes)

    def reset(self, trash: Path) -> None:
        """Start-up: every entry is moved to `trash` (emptied by the caller) and forgotten."""
        with self._lock:
            self._sizes.clear()
            self.bytes = 0
        if self.root.is_dir():
            try:
                os.replace(self.root, trash / f"unpacked-{os.getpid()}-{next(_names)}")
            except OSError:
                shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)

    def install(self, sha256: str, part: str, size: int) -> bool:
        """Put a folder made by `stage` (`size` bytes) in place as the entry of `sha256`; when
        the entry is there already or the budget would be exceeded, the folder is removed
        and False returned. Safe in a thread."""
        with self._lock:
            if not _HASH_RE.fullmatch(sha256) or sha256 in self._sizes or self.bytes + size > self.budget:
                ok = False
            else:
                ok, self._sizes[sha256] = True, -1
                self.bytes += size
        if ok:
            try:
                os.rename(part, self.root / sha256)
            except OSError:
                with self._lock:
                    del self._sizes[sha256]
                    self.bytes -= size
                ok = False
        if not ok:
            shutil.rmtree(part, ignore_errors=True)
            return False
        with self._lock:
            self._sizes[sha256] = size
        return True

    def take(self, sha256: str, dest: Path) -> bool:
        """Move the entry of `sha256` to `dest` (a new folder; its parent exists): True, or
        False when there is none (then the caller unpacks the tarball). Safe in a thread."""
        with self._lock:
            size = self._sizes.get(sha256, -1)
            if size < 0:
                return False
            del self._sizes[sha256]
            self.bytes -= size
        try:
            os.rename(self.root / sha256, dest)
            return True
        except OSError:
            shutil.rmtree(self.root / sha256, ignore_errors=True)
            return False

    def discard(self, sha256: str, trash: Path) -> None:
        """The blob `sha256` is reclaimed: its entry goes to `trash` (emptied by the caller)."""
        with self._lock:
            size = self._sizes.get(sha256, -1)
            if size < 0:
                return
            del self._sizes[sha256]
            self.bytes -= size
        try:
            os.replace(self.root / sha256, trash / f"{sha256}.unpacked")
        except OSError:
            shutil.rmtree(self.root / sha256, ignore_errors=True)

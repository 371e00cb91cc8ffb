"""Files written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_file(target: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file to write `target` through: written under a temporary name beside it (its
    folder made if missing), renamed over it when the block ends, removed if the block raises.
    Nobody ever sees `target` half-written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.chmod(partial, mode)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise

"""Progress on stderr for the command line: bytes uploaded and downloaded, frames done of
total with their rate and an ETA.

On a terminal, rich draws live bars. Otherwise (a log file, CI, a pipe) one plain line every
LINE_PERIOD seconds and one at the end, so a log stays readable. stdout is never touched:
`--json` output is unchanged.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

LINE_PERIOD = 5.0


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class _Bar:
    """One measured quantity (bytes or frames): rich's task on a terminal, else lines."""

    def __init__(self, owner: "Progress", label: str, total: float | None, unit: str):
        self.owner, self.label, self.total, self.unit = owner, label, total, unit
        self.done = 0.0
        self.started = time.monotonic()
        self.last_line = self.started
        self.task = None
        if owner.rich is not None:
            self.task = owner.rich.add_task(label, total=total, detail="")

    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0.2 and self.done > 0 else None

    def update(self, done: float, total: float | None = None, note: str = "") -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.task is not None:
            self.owner.rich.update(self.task, completed=done, total=self.total, detail=self.text(note, label=False))
            return
        now = time.monotonic()
        if now - self.last_line >= self.owner.period:
            self.last_line = now
            self.owner.line(self.text(note))

    def text(self, note: str = "", label: bool = True) -> str:
        rate = self.rate()
        if self.unit == "bytes":
            amount = f"{_size(self.done)}" + (f" of {_size(self.total)}" if self.total else "")
            speed = f", {_size(rate)}/s" if rate else ""
        else:
            amount = f"{self.done:.0f}/{self.total:.0f} frames done" if self.total else f"{self.done:.0f} frames done"
            speed = f", {rate:.2f} frames/s" if rate else ""
        left = None
        if rate and self.total:
            left = max(0.0, (self.total - self.done) / rate)
        eta = f", ETA {_eta(left)}" if left is not None and self.done < (self.total or 0) else ""
        return (f"{self.label}: " if label else "") + f"{amount}{speed}{eta}" + (f" ({note})" if note else "")

    def finish(self, note: str = "") -> None:
        if self.task is not None:
            self.owner.rich.update(self.task, completed=self.done, detail=self.text(note, label=False))
        else:
            self.owner.line(self.text(note))


class Progress:
    """Bars on stderr; use as a context manager. `live=None`: rich when stderr is a terminal."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, period: float = LINE_PERIOD):
        self.stream = stream or sys.stderr
        self.period = period
        self.rich = None
        if live if live is not None else self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as RichProgress

            # the bar is rich's; the figures (amount, rate, ETA) are the same text as the lines'
            self.rich = RichProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                                     console=Console(file=self.stream), transient=False)

    def __enter__(self) -> "Progress":
        if self.rich is not None:
            self.rich.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.rich is not None:
            self.rich.stop()

    def line(self, text: str) -> None:
        self.stream.write(f"distren: {text}\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        """A message among the bars (above them while rich draws them)."""
        if self.rich is not None:
            self.rich.console.print(f"distren: {text}", markup=False, highlight=False)
        else:
            self.line(text)

    def bytes(self, label: str, total: float | None) -> "_Bytes":
        return _Bytes(self, label, total)

    def frames(self, label: str) -> "_Frames":
        return _Frames(self, label)


class _Bytes(_Bar):
    def __init__(self, owner: Progress, label: str, total: float | None):
        super().__init__(owner, label, total, "bytes")

    def __call__(self, n: int, total: int | None = None) -> None:
        """`n` more bytes moved (`total` when it became known)."""
        self.update(self.done + n, total)


class _Frames(_Bar):
    def __init__(self, owner: Progress, label: str):
        super().__init__(owner, label, None, "frames")
        self.first_done: float | None = None

    def __call__(self, job: dict) -> None:
        """A job's state, as `Client.wait` reports it."""
        f = job["frames"]
        if self.first_done is None:   # the rate counts frames done while this command watched
            self.first_done = f["done"]
            self.started = time.monotonic()
        self.update(f["done"] - self.first_done, job["total_frames"] - self.first_done,
                    f"{f['running']} running, {f['failed']} failed, {job['state']}")

    def end(self, job: dict) -> None:
        f = job["frames"]
        self.finish(f"{job['state']}")
        self.owner.line(f"{job['url']} {job['state']}: {f['done']}/{job['total_frames']} frames done, "
                        f"{f['failed']} failed, {f['cancelled']} cancelled")

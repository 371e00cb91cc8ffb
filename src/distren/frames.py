"""Frame lists such as "0,1-40,50,1000".

A frame list is comma-separated items; each item is a frame id or an inclusive
range "first-last" with first <= last. Whitespace around items is allowed, and
items may come in any order with gaps, but no frame may be listed twice. Ids are
canonical decimal integers in 0..MAX_FRAME_ID, as in distren URLs.

parse_frames keeps the order written (ranges expand ascending); format_frames
writes the shortest canonical text, sorted ascending. Every refusal is a
BadFrameSpec whose message quotes the offending text.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import BadFrameSpec
from .url import MAX_ID, parse_id, quote_input

MAX_FRAME_ID = MAX_ID
DEFAULT_MAX_COUNT = 100_000


def _parse_item(spec: str, item: str) -> tuple[int, int]:
    """Parse one item of `spec` into an inclusive (first, last) pair."""
    token = item.strip()
    if not token:
        raise BadFrameSpec(f"frame list {quote_input(spec)}: empty item")
    try:
        if token.startswith("-"):
            raise ValueError("frame ids must be integers >= 0")
        first_text, dash, last_text = token.partition("-")
        if not dash:
            frame = parse_id(token, "frame id")
            return frame, frame
        first = parse_id(first_text, "range start")
        last = parse_id(last_text, "range end")
    except ValueError as exc:
        raise BadFrameSpec(f"frame list {quote_input(spec)}: item {token!r}: {exc}") from None
    if first > last:
        raise BadFrameSpec(
            f"frame list {quote_input(spec)}: range {token!r} is backwards ({first} > {last})"
        )
    return first, last


def parse_frames(text: str, max_count: int = DEFAULT_MAX_COUNT) -> list[int]:
    """Parse a frame list into frame ids, in the order written.

    Raises BadFrameSpec for malformed items, duplicate frames, or more than
    max_count frames. The count is checked before any range is expanded, so a
    huge range costs nothing.
    """
    if not isinstance(text, str):
        raise BadFrameSpec(f"frame list must be a string, not {type(text).__name__}")
    if not text.strip():
        raise BadFrameSpec("frame list is empty")

    spans: list[tuple[int, int]] = []
    count = 0
    for item in text.split(","):
        first, last = _parse_item(text, item)
        count += last - first + 1
        if count > max_count:
            raise BadFrameSpec(f"frame list {quote_input(text)}: more than {max_count} frames")
        spans.append((first, last))

    frames: list[int] = []
    seen: set[int] = set()
    for first, last in spans:
        for frame in range(first, last + 1):
            if frame in seen:
                raise BadFrameSpec(
                    f"frame list {quote_input(text)}: frame {frame} is listed more than once"
                )
            seen.add(frame)
            frames.append(frame)
    return frames


def group_ranges(ids: Iterable[int]) -> list[tuple[int, int]]:
    """Return the sorted runs of consecutive ids as inclusive (first, last) pairs.

    Raises BadFrameSpec for a duplicate, a non-int (bools included) or an id
    outside 0..MAX_FRAME_ID.
    """
    values = list(ids)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadFrameSpec(f"frame id must be an int, not {type(value).__name__}")
        if not 0 <= value <= MAX_FRAME_ID:
            raise BadFrameSpec(f"frame id {value} is outside 0..{MAX_FRAME_ID}")
    runs: list[tuple[int, int]] = []
    for value in sorted(values):
        if runs and value == runs[-1][1]:
            raise BadFrameSpec(f"frame {value} is listed more than once")
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


def format_frames(ids: Iterable[int]) -> str:
    """Return the shortest canonical frame list for ids, e.g. "0-3,5,7,8,1000".

    Runs of three or more consecutive ids become ranges; shorter runs are
    listed one by one. An empty input gives "" (which parse_frames refuses).
    """
    parts: list[str] = []
    for first, last in group_ranges(ids):
        if last - first >= 2:
            parts.append(f"{first}-{last}")
        else:
            parts.extend(str(frame) for frame in range(first, last + 1))
    return ",".join(parts)

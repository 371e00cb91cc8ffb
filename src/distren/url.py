"""distren URLs: names for servers, jobs and frames.

A distren URL names a server, one job on a server, or one frame of a job::

    distren://render1            a server
    distren://render1/3          job 3 on render1
    distren://render1/3/17       frame 17 of job 3 on render1

Server names are 1-64 ASCII letters and digits (case-sensitive). Job and frame
ids are integers from 0 to MAX_ID, written in canonical decimal: ASCII digits
only, no sign, no leading zeros. The parser accepts one trailing slash and
nothing else beyond the canonical form: no query, fragment, user information,
port or extra path segments. Every refusal is a BadURL whose message quotes the
input and says what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .errors import BadURL

MAX_ID = 2**63 - 1
"""The largest job or frame id (the largest signed 64-bit integer)."""

SCHEME = "distren://"

_SERVER_NAME = re.compile(r"[A-Za-z0-9]{1,64}")
_DIGITS = re.compile(r"[0-9]+")
_MAX_ID_DIGITS = len(str(MAX_ID))
QUOTE_LIMIT = 100


def quote_input(text: object) -> str:
    """Return repr(text) for an error message, shortened to QUOTE_LIMIT characters.

    Messages quote what the user sent; this keeps a huge input from making a
    huge message. Shared by the other parsers (frame lists).
    """
    if isinstance(text, str) and len(text) > QUOTE_LIMIT:
        return repr(text[:QUOTE_LIMIT]) + "..."
    shown = repr(text)
    return shown if len(shown) <= QUOTE_LIMIT + 2 else shown[:QUOTE_LIMIT] + "..."


def check_server_name(name: str) -> str:
    """Return name if it is a valid server name, else raise BadURL."""
    if not isinstance(name, str) or not _SERVER_NAME.fullmatch(name):
        raise BadURL(
            f"server name {quote_input(name)} must match [A-Za-z0-9]+ (1-64 characters)"
        )
    return name


def parse_id(token: str, what: str) -> int:
    """Parse a canonical decimal id in 0..MAX_ID; `what` names it in messages.

    Canonical means ASCII digits only, no sign, no whitespace and no leading
    zeros ("0" itself is fine). Raises ValueError with a short reason such as
    "job id must be an integer >= 0"; callers wrap it in their own error class.
    """
    if not token:
        raise ValueError(f"{what} is empty")
    if not _DIGITS.fullmatch(token):
        raise ValueError(f"{what} must be an integer >= 0")
    if len(token) > 1 and token[0] == "0":
        raise ValueError(f"{what} must not have leading zeros")
    # Check the length first so a huge digit string is never converted.
    if len(token) > _MAX_ID_DIGITS or int(token) > MAX_ID:
        raise ValueError(f"{what} must be at most {MAX_ID}")
    return int(token)


def _check_id_value(value: object, what: str) -> None:
    """Raise BadURL unless value is None or an int (not a bool) in 0..MAX_ID."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadURL(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_ID:
        raise BadURL(f"{what} must be between 0 and {MAX_ID}, got {value}")


@dataclass(frozen=True)
class DistrenURL:
    """A parsed, validated distren URL; str() gives its canonical text."""

    server: str
    job: int | None = None
    frame: int | None = None

    def __post_init__(self) -> None:
        check_server_name(self.server)
        _check_id_value(self.job, "job id")
        _check_id_value(self.frame, "frame id")
        if self.frame is not None and self.job is None:
            raise BadURL("a frame URL needs a job id")

    def __str__(self) -> str:
        text = SCHEME + self.server
        if self.job is not None:
            text += f"/{self.job}"
        if self.frame is not None:
            text += f"/{self.frame}"
        return text

    @property
    def kind(self) -> Literal["server", "job", "frame"]:
        """What the URL names: "server", "job" or "frame"."""
        if self.frame is not None:
            return "frame"
        if self.job is not None:
            return "job"
        return "server"

    def job_url(self) -> DistrenURL:
        """Return the URL of the job this URL names or lies in (a frame's job).

        Raises BadURL for a server URL, which names no job.
        """
        if self.job is None:
            raise BadURL(f"distren URL {quote_input(str(self))} names no job")
        return DistrenURL(self.server, self.job)


def _split_url(text: str) -> tuple[str, int | None, int | None]:
    """Split a distren URL into server, job and frame; raise ValueError(reason)."""
    if not text.startswith(SCHEME):
        raise ValueError(f"must start with {SCHEME!r}")
    rest = text[len(SCHEME):]
    if "?" in rest or "#" in rest:
        raise ValueError("query strings and fragments are not allowed")
    if rest.endswith("/"):
        rest = rest[:-1]
    parts = rest.split("/")
    if len(parts) > 3:
        raise ValueError(
            "too many path segments (expected distren://server[/job[/frame]])"
        )
    server = parts[0]
    if not server:
        raise ValueError("server name is empty")
    if "@" in server:
        raise ValueError("user information is not allowed")
    if ":" in server:
        raise ValueError("a port is not allowed")
    check_server_name(server)
    job = parse_id(parts[1], "job id") if len(parts) > 1 else None
    frame = parse_id(parts[2], "frame id") if len(parts) > 2 else None
    return server, job, frame


def parse_url(text: str) -> DistrenURL:
    """Parse a distren URL (server, job or frame); raise BadURL if it is not one."""
    if not isinstance(text, str):
        raise BadURL(f"distren URL must be a string, not {type(text).__name__}")
    try:
        return DistrenURL(*_split_url(text))
    except (ValueError, BadURL) as exc:
        reason = exc.message if isinstance(exc, BadURL) else str(exc)
        raise BadURL(f"distren URL {quote_input(text)}: {reason}") from None


def format_url(server: str, job: int | None = None, frame: int | None = None) -> str:
    """Return the canonical URL text for a server, job or frame; raise BadURL if invalid."""
    return str(DistrenURL(server, job, frame))


def parse_dependency(text: str, server: str, job: int) -> DistrenURL:
    """Parse a frame dependency written inside job `job` on server `server`.

    A bare canonical integer names a frame of the same job on the same server;
    anything else must be a full frame URL. Surrounding whitespace is ignored.
    Raises BadURL otherwise, including for a server or job URL.
    """
    if not isinstance(text, str):
        raise BadURL(f"dependency must be a string, not {type(text).__name__}")
    token = text.strip()
    if token.startswith(SCHEME):
        url = parse_url(token)
        if url.kind != "frame":
            raise BadURL(
                f"dependency {quote_input(text)}: a dependency must name a frame, not a {url.kind}"
            )
        return url
    try:
        frame = parse_id(token, "frame id")
    except ValueError as exc:
        raise BadURL(
            f"dependency {quote_input(text)}: expected a frame id or a "
            f"distren://server/job/frame URL ({exc})"
        ) from None
    return DistrenURL(server, job, frame)

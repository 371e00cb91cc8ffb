"""Tests for distren.url: parsing, formatting and validating distren:// URLs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distren.errors import BadURL
from distren.url import (
    MAX_ID,
    DistrenURL,
    check_server_name,
    format_url,
    parse_dependency,
    parse_url,
)

servers = st.from_regex(r"[A-Za-z0-9]{1,64}", fullmatch=True)
ids = st.integers(min_value=0, max_value=MAX_ID)


@st.composite
def urls(draw: st.DrawFn) -> DistrenURL:
    """Any valid DistrenURL: server, job or frame."""
    server = draw(servers)
    job = draw(st.none() | ids)
    frame = None if job is None else draw(st.none() | ids)
    return DistrenURL(server, job, frame)


# --- property tests ---------------------------------------------------------


@given(servers, st.none() | ids, ids)
def test_format_then_parse_round_trips(server: str, job: int | None, frame: int) -> None:
    frame_or_none = None if job is None else frame
    text = format_url(server, job, frame_or_none)
    assert parse_url(text) == DistrenURL(server, job, frame_or_none)


@given(urls())
def test_parse_of_str_is_identity(url: DistrenURL) -> None:
    assert parse_url(str(url)) == url
    assert parse_url(str(url) + "/") == url


@given(st.text(max_size=200))
def test_random_text_only_raises_bad_url(text: str) -> None:
    try:
        url = parse_url(text)
    except BadURL:
        return
    assert str(url) in (text, text[:-1])


@given(st.text(alphabet="distren:/0123456789aZ-+ ?#@.", max_size=40))
def test_url_like_text_only_raises_bad_url(text: str) -> None:
    try:
        url = parse_url(text)
    except BadURL:
        return
    assert str(url) in (text, text[:-1])


@given(urls(), st.sampled_from(["0", "-", "+", " ", "\u0661", "x", "/"]), st.booleans())
def test_mutated_ids_are_rejected(url: DistrenURL, junk: str, prefix: bool) -> None:
    """Putting junk in front of or behind the last id never gives a valid URL.

    The exceptions: a digit appended makes another id, and one trailing slash
    is allowed.
    """
    if url.job is None or (junk == "0" and not prefix):
        return
    parts = [url.server, str(url.job)] + ([] if url.frame is None else [str(url.frame)])
    parts[-1] = junk + parts[-1] if prefix else parts[-1] + junk
    text = "distren://" + "/".join(parts)
    if junk == "/" and not prefix:
        assert parse_url(text) == url
    else:
        with pytest.raises(BadURL):
            parse_url(text)


@given(urls())
def test_extra_segment_rejected(url: DistrenURL) -> None:
    if url.kind == "frame":
        with pytest.raises(BadURL, match="too many path segments"):
            parse_url(f"{url}/1")
    else:
        with pytest.raises(BadURL):
            parse_url(f"{url}//")


@given(servers, ids, ids)
def test_dependency_bare_integer_and_url(server: str, job: int, frame: int) -> None:
    assert parse_dependency(str(frame), server, job) == DistrenURL(server, job, frame)
    other = DistrenURL("other", frame, job)
    assert parse_dependency(f"  {other}\n", server, job) == other


# --- explicit examples ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("distren://a", DistrenURL("a")),
        ("distren://a/", DistrenURL("a")),
        ("distren://Render01/3", DistrenURL("Render01", 3)),
        ("distren://Render01/3/", DistrenURL("Render01", 3)),
        ("distren://r/3/17", DistrenURL("r", 3, 17)),
        ("distren://r/3/17/", DistrenURL("r", 3, 17)),
        ("distren://r/0/0", DistrenURL("r", 0, 0)),
        (f"distren://r/{MAX_ID}/{MAX_ID}", DistrenURL("r", MAX_ID, MAX_ID)),
        ("distren://" + "x" * 64, DistrenURL("x" * 64)),
    ],
)
def test_parse_valid(text: str, expected: DistrenURL) -> None:
    assert parse_url(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "must start with 'distren://'"),
        ("http://a", "must start with 'distren://'"),
        ("DISTREN://a", "must start with 'distren://'"),
        ("distren:/a", "must start with 'distren://'"),
        (" distren://a", "must start with 'distren://'"),
        ("distren://", "server name is empty"),
        ("distren:///", "server name is empty"),
        ("distren:///3", "server name is empty"),
        ("distren://a//", "job id is empty"),
        ("distren://a//3", "job id is empty"),
        ("distren://a/3//", "frame id is empty"),
        ("distren://a/-1", "job id must be an integer >= 0"),
        ("distren://a/+1", "job id must be an integer >= 0"),
        ("distren://a/1/-1", "frame id must be an integer >= 0"),
        ("distren://a/01", "job id must not have leading zeros"),
        ("distren://a/00", "job id must not have leading zeros"),
        ("distren://a/1/007", "frame id must not have leading zeros"),
        ("distren://a/\u0661", "job id must be an integer >= 0"),
        ("distren://a/1.5", "job id must be an integer >= 0"),
        ("distren://a/1e3", "job id must be an integer >= 0"),
        ("distren://a/ 1", "job id must be an integer >= 0"),
        ("distren://a/1 ", "job id must be an integer >= 0"),
        ("distren://a/1_000", "job id must be an integer >= 0"),
        (f"distren://a/{MAX_ID + 1}", "job id must be at most"),
        ("distren://a/" + "9" * 5000, "job id must be at most"),
        ("distren://a/1/2/3", "too many path segments"),
        ("distren://a/1/2//", "too many path segments"),
        ("distren://a?x=1", "query strings and fragments"),
        ("distren://a/1#f", "query strings and fragments"),
        ("distren://user@a", "user information"),
        ("distren://a:8080", "a port is not allowed"),
        ("distren://a b", "server name 'a b' must match [A-Za-z0-9]+"),
        ("distren://a-b", "must match [A-Za-z0-9]+"),
        ("distren://a\n", "must match [A-Za-z0-9]+"),
        ("distren://\u00e9", "must match [A-Za-z0-9]+"),
        ("distren://" + "x" * 65, "1-64 characters"),
    ],
)
def test_parse_invalid(text: str, reason: str) -> None:
    with pytest.raises(BadURL) as info:
        parse_url(text)
    message = info.value.message
    assert message.startswith("distren URL " + repr(text[:100]))
    assert reason in message


def test_error_message_quotes_and_truncates() -> None:
    with pytest.raises(BadURL) as info:
        parse_url("distren://a/-1")
    assert info.value.message == "distren URL 'distren://a/-1': job id must be an integer >= 0"

    long_text = "distren://a/" + "x" * 10_000
    with pytest.raises(BadURL) as info:
        parse_url(long_text)
    assert repr(long_text[:100]) + "..." in info.value.message
    assert len(info.value.message) < 300


@pytest.mark.parametrize("value", [None, 3, b"distren://a", ["distren://a"]])
def test_parse_non_string(value: object) -> None:
    with pytest.raises(BadURL, match="must be a string"):
        parse_url(value)  # type: ignore[arg-type]


def test_str_kind_and_job_url() -> None:
    server, job, frame = DistrenURL("a"), DistrenURL("a", 3), DistrenURL("a", 3, 17)
    assert (str(server), str(job), str(frame)) == (
        "distren://a",
        "distren://a/3",
        "distren://a/3/17",
    )
    assert (server.kind, job.kind, frame.kind) == ("server", "job", "frame")
    assert frame.job_url() == job
    assert job.job_url() == job
    with pytest.raises(BadURL, match="names no job"):
        server.job_url()


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("a", None, 1), "a frame URL needs a job id"),
        (("a", -1), "job id must be between 0 and"),
        (("a", MAX_ID + 1), "job id must be between 0 and"),
        (("a", 1, -1), "frame id must be between 0 and"),
        (("a", True), "job id must be an int, not bool"),
        (("a", 1, False), "frame id must be an int, not bool"),
        (("a", "1"), "job id must be an int, not str"),
        (("a", 1.0), "job id must be an int, not float"),
        (("", 1), "server name '' must match"),
        (("a.b",), "server name 'a.b' must match"),
        ((None,), "server name None must match"),
    ],
)
def test_dataclass_validation(args: tuple, reason: str) -> None:
    with pytest.raises(BadURL, match=reason.replace("(", r"\(").replace(".", r"\.")):
        DistrenURL(*args)
    with pytest.raises(BadURL):
        format_url(*args)


def test_frozen() -> None:
    url = DistrenURL("a", 1)
    with pytest.raises(AttributeError):
        url.job = 2  # type: ignore[misc]


def test_format_url() -> None:
    assert format_url("a") == "distren://a"
    assert format_url("a", 0) == "distren://a/0"
    assert format_url("a", 3, 17) == "distren://a/3/17"


def test_check_server_name() -> None:
    assert check_server_name("Render01") == "Render01"
    for bad in ["", "a b", "a_b", "a/b", "x" * 65, "\u00e9", "a\n"]:
        with pytest.raises(BadURL, match=r"must match \[A-Za-z0-9\]\+ \(1-64 characters\)"):
            check_server_name(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("17", DistrenURL("here", 3, 17)),
        ("  0\t", DistrenURL("here", 3, 0)),
        ("distren://there/5/6", DistrenURL("there", 5, 6)),
        (" distren://here/3/4/ ", DistrenURL("here", 3, 4)),
    ],
)
def test_parse_dependency_valid(text: str, expected: DistrenURL) -> None:
    assert parse_dependency(text, "here", 3) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("distren://there", "a dependency must name a frame"),
        ("distren://there/5", "a dependency must name a frame"),
        ("distren://there/5/x", "frame id must be an integer >= 0"),
        ("", "expected a frame id or a distren://server/job/frame URL"),
        ("-1", "frame id must be an integer >= 0"),
        ("+1", "frame id must be an integer >= 0"),
        ("01", "leading zeros"),
        ("\u0661", "frame id must be an integer >= 0"),
        ("1 2", "frame id must be an integer >= 0"),
        ("there/5/6", "expected a frame id"),
        (str(MAX_ID + 1), "at most"),
    ],
)
def test_parse_dependency_invalid(text: str, reason: str) -> None:
    with pytest.raises(BadURL) as info:
        parse_dependency(text, "here", 3)
    assert reason in info.value.message


def test_parse_dependency_validates_context() -> None:
    with pytest.raises(BadURL):
        parse_dependency("1", "bad name", 3)
    with pytest.raises(BadURL):
        parse_dependency("1", "here", -3)
    with pytest.raises(BadURL, match="must be a string"):
        parse_dependency(1, "here", 3)  # type: ignore[arg-type]

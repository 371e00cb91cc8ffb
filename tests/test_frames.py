"""Tests for distren.frames: parsing and formatting frame lists like "1-40,0,50"."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distren.errors import BadFrameSpec
from distren.frames import MAX_FRAME_ID, format_frames, group_ranges, parse_frames
from distren.url import MAX_ID

small_ids = st.integers(min_value=0, max_value=2000)
any_ids = st.integers(min_value=0, max_value=MAX_FRAME_ID)
id_sets = st.sets(small_ids, max_size=200) | st.sets(any_ids, max_size=20)


def test_max_frame_id_is_max_id() -> None:
    assert MAX_FRAME_ID == MAX_ID == 2**63 - 1


# --- property tests ---------------------------------------------------------


@given(id_sets.filter(bool))
def test_format_then_parse_round_trips(ids: set[int]) -> None:
    text = format_frames(ids)
    assert parse_frames(text) == sorted(ids)


@given(id_sets)
def test_format_is_shortest_canonical(ids: set[int]) -> None:
    text = format_frames(ids)
    assert format_frames(sorted(ids, reverse=True)) == text
    for item in text.split(",") if text else []:
        first, _, last = item.partition("-")
        if last:
            assert int(last) - int(first) >= 2  # pairs are listed, not ranged


@given(id_sets)
def test_group_ranges_covers_ids_exactly(ids: set[int]) -> None:
    runs = group_ranges(ids)
    covered = [n for first, last in runs for n in range(first, last + 1)]
    assert covered == sorted(ids)
    for (_, last), (first, _) in zip(runs, runs[1:]):
        assert first > last + 1  # runs are maximal


@given(st.lists(st.tuples(small_ids, st.integers(0, 5)), min_size=1, max_size=30))
def test_parse_keeps_written_order(spans: list[tuple[int, int]]) -> None:
    items = [str(a) if n == 0 else f"{a}-{a + n}" for a, n in spans]
    expected = [x for a, n in spans for x in range(a, a + n + 1)]
    text = " , ".join(items)
    if len(set(expected)) != len(expected):
        with pytest.raises(BadFrameSpec, match="is listed more than once"):
            parse_frames(text)
    else:
        assert parse_frames(text) == expected


@given(st.text(alphabet="0123456789-, \t+x\u0661", max_size=30))
def test_random_text_only_raises_bad_frame_spec(text: str) -> None:
    try:
        frames = parse_frames(text)
    except BadFrameSpec:
        return
    assert len(frames) == len(set(frames))


# --- explicit examples ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", [0]),
        ("1-40,0,50,1000", [*range(1, 41), 0, 50, 1000]),
        ("7", [7]),
        ("3-3", [3]),
        (" 1-3 ", [1, 2, 3]),
        ("\t5 ,  2-4\n", [5, 2, 3, 4]),
        ("10,9,8", [10, 9, 8]),
        (f"{MAX_FRAME_ID}", [MAX_FRAME_ID]),
        (f"{MAX_FRAME_ID - 1}-{MAX_FRAME_ID}", [MAX_FRAME_ID - 1, MAX_FRAME_ID]),
    ],
)
def test_parse_valid(text: str, expected: list[int]) -> None:
    assert parse_frames(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "frame list is empty"),
        ("   ", "frame list is empty"),
        ("1,,2", "empty item"),
        ("1,", "empty item"),
        (",1", "empty item"),
        ("5-3", "range '5-3' is backwards (5 > 3)"),
        ("-1", "item '-1': frame ids must be integers >= 0"),
        ("-1-3", "frame ids must be integers >= 0"),
        ("1--3", "item '1--3': range end must be an integer >= 0"),
        ("1-", "item '1-': range end is empty"),
        ("1-2-3", "range end must be an integer >= 0"),
        ("a", "item 'a': frame id must be an integer >= 0"),
        ("+1", "frame id must be an integer >= 0"),
        ("1.5", "frame id must be an integer >= 0"),
        ("\u0661", "frame id must be an integer >= 0"),
        ("1 2", "frame id must be an integer >= 0"),
        ("1 -3", "range start must be an integer >= 0"),
        ("01", "frame id must not have leading zeros"),
        ("0-010", "range end must not have leading zeros"),
        (str(MAX_FRAME_ID + 1), "frame id must be at most"),
        (f"0-{MAX_FRAME_ID + 1}", "range end must be at most"),
        ("9" * 5000, "frame id must be at most"),
        ("1,2,1", "frame 1 is listed more than once"),
        ("1-10,5-20", "frame 5 is listed more than once"),
        ("3,1-5", "frame 3 is listed more than once"),
        # The example in the design notes: 5 is inside 1-40, so it is a duplicate.
        ("1-40,0,5,1000", "frame 5 is listed more than once"),
    ],
)
def test_parse_invalid(text: str, reason: str) -> None:
    with pytest.raises(BadFrameSpec) as info:
        parse_frames(text)
    assert reason in info.value.message
    if text.strip():
        assert repr(text[:100]) in info.value.message


def test_huge_range_is_refused_before_expanding() -> None:
    start = time.perf_counter()
    with pytest.raises(BadFrameSpec, match="more than 100000 frames"):
        parse_frames("0-99999999999999")
    with pytest.raises(BadFrameSpec, match="more than 100000 frames"):
        parse_frames(f"0-{MAX_FRAME_ID}")
    assert time.perf_counter() - start < 1


def test_max_count() -> None:
    assert parse_frames("0-9", max_count=10) == list(range(10))
    with pytest.raises(BadFrameSpec, match="more than 10 frames"):
        parse_frames("0-9,20", max_count=10)
    with pytest.raises(BadFrameSpec, match="more than 3 frames"):
        parse_frames("1,2,3,4", max_count=3)
    assert len(parse_frames("0-99999")) == 100_000


def test_long_spec_is_quoted_truncated() -> None:
    text = ",".join(["1"] * 5000)
    with pytest.raises(BadFrameSpec) as info:
        parse_frames(text)
    assert len(info.value.message) < 300


def test_parse_non_string() -> None:
    with pytest.raises(BadFrameSpec, match="must be a string"):
        parse_frames(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ids", "text"),
    [
        ([], ""),
        ([0], "0"),
        ([0, 1, 2, 3, 5, 1000], "0-3,5,1000"),
        ([8, 7], "7,8"),
        ([1000, 3, 2, 1, 5, 6], "1-3,5,6,1000"),
        ([9, 10, 11, 20, 21, 22, 23], "9-11,20-23"),
        ([MAX_FRAME_ID, MAX_FRAME_ID - 2, MAX_FRAME_ID - 1], f"{MAX_FRAME_ID - 2}-{MAX_FRAME_ID}"),
    ],
)
def test_format_examples(ids: list[int], text: str) -> None:
    assert format_frames(ids) == text


def test_group_ranges_examples() -> None:
    assert group_ranges([]) == []
    assert group_ranges([5, 1, 2, 3, 7, 8]) == [(1, 3), (5, 5), (7, 8)]
    assert group_ranges(iter([4])) == [(4, 4)]


@pytest.mark.parametrize(
    ("ids", "reason"),
    [
        ([1, 2, 1], "frame 1 is listed more than once"),
        ([-1], "frame id -1 is outside"),
        ([MAX_FRAME_ID + 1], "is outside"),
        ([True], "frame id must be an int, not bool"),
        ([1, "2"], "frame id must be an int, not str"),
        ([1.0], "frame id must be an int, not float"),
    ],
)
def test_format_and_group_refuse_bad_ids(ids: list, reason: str) -> None:
    for function in (format_frames, group_ranges):
        with pytest.raises(BadFrameSpec) as info:
            function(ids)
        assert reason in info.value.message

"""Claim pacing (pure logic): back-off with jitter, the home's Retry-After, announcements."""

from __future__ import annotations

import pytest

from distren.federation.pacing import Announcer, ClaimPacer, announce_spread, no_work_retry_after


def test_back_off_doubles_to_its_cap_and_resets_on_work():
    p = ClaimPacer(backoff_max=5.0, rand=lambda: 0.5)  # jitter factor exactly 1.0
    p.set_peers(["a", "b"])
    assert p.due(0.0) == ["a", "b"]
    waits = []
    for _ in range(8):
        p.no_work("a", 0.0)
        waits.append(p.peers["a"].next_claim)
    assert waits[:3] == [0.1, 0.2, 0.4] and waits[-1] == 5.0
    assert p.due(1.0) == ["b"]
    p.got_work("a")
    assert p.due(1.0)[0] == "b" and "a" in p.due(1.0)  # round robin goes on after a


def test_the_homes_retry_after_bounds_its_empty_claims_whatever_the_farm_size():
    for peers in (10, 100, 1000):
        wait = no_work_retry_after(peers, 20.0)
        assert peers / wait == 20.0
    p = ClaimPacer(backoff_max=5.0, rand=lambda: 0.5)
    p.no_work("home", 0.0, retry_after=50.0)
    assert p.peers["home"].next_claim == 50.0
    p.announced("home", 10.0)
    assert 10.0 <= p.peers["home"].next_claim <= 11.0 and p.peers["home"].backoff == 0.0


def test_jitter_spreads_the_waits():
    values = iter([0.0, 1.0])
    p = ClaimPacer(backoff_max=5.0, rand=lambda: next(values))
    p.no_work("a", 0.0, retry_after=10.0)
    p.no_work("b", 0.0, retry_after=10.0)
    assert p.peers["a"].next_claim == pytest.approx(8.0) and p.peers["b"].next_claim == pytest.approx(12.0)


def test_announcements_go_to_the_peers_turned_away_at_most_once_a_period():
    a = Announcer(announce_period=1.0)
    assert a.due(0.0) == []
    a.turned_away("x")
    a.turned_away("y")
    a.served("y")
    assert a.due(5.0) == ["x"]
    a.turned_away("z")
    assert a.due(5.5) == []  # too soon
    assert a.due(6.0) == ["z"] and a.due(7.0) == []


def test_an_announcement_spreads_the_told_peers_claims_over_the_homes_budget():
    # one peer told: it asks at once; a thousand: over the cap (a second), as before
    assert announce_spread(1, 20.0) == pytest.approx(0.05)
    assert announce_spread(10, 20.0) == pytest.approx(0.5)
    assert announce_spread(1000, 20.0) == 1.0 and announce_spread(3, 0.0) == 1.0
    p = ClaimPacer(backoff_max=5.0, rand=lambda: 1.0)   # the latest moment of the spread
    p.no_work("home", 0.0, retry_after=50.0)
    p.announced("home", 10.0, within=0.05)
    assert p.peers["home"].next_claim == pytest.approx(10.05)
    p.announced("home", 20.0, within=30.0)              # never beyond the asker's own cap
    assert p.peers["home"].next_claim == pytest.approx(21.0)
    p.announced("home", 30.0)                            # an older home tells no spread
    assert p.peers["home"].next_claim == pytest.approx(31.0)


def test_an_announcement_wakes_the_idle_slots():
    from distren.federation.service import Federation

    woken = []
    fed = Federation.__new__(Federation)   # only the pacer and the hook take part
    fed.pacer = ClaimPacer(rand=lambda: 0.0)
    fed.on_announced = lambda: woken.append(True)
    fed.announced("home", 0.05)
    assert woken == [True] and fed.pacer.peers["home"].backoff == 0.0

"""When an idle server asks its peers for work: pure logic, shared by the federation service and
`benchmarks/simulate.py` (so the simulation runs the same rules as the servers).

Pulling alone costs O(N^2) requests in an idle farm of N servers: every idle server asks every
peer every few seconds. Three rules keep a home server's share bounded whatever N is:

- **Back-off with jitter.** A peer that had no work is asked again after a wait that doubles up
  to `backoff_max` (one that could not be reached: up to `error_backoff_max`), each wait
  jittered by +-20 % so that the farm's servers do not ask in step.
- **The home paces its askers.** A "no work" answer carries `retry_after`: the home's peer count
  divided by `idle_claims_per_second`, the rate of empty claims it is willing to answer. With 10
  peers that is shorter than the back-off and changes nothing; with 1,000 peers and the default
  20/s every idle peer waits about 50 s, so the home answers about 20 empty claims a second.
- **Work is announced.** A home that answered "no work" and then gets claimable frames tells
  the peers it turned away (`POST /api/v1/peer/work`, at most once per `announce_period`), and
  they ask it at once, at a random moment within the spread the home tells them (its told
  peers / `idle_claims_per_second`, at most `announce_jitter`: one peer asks at once, a
  thousand over a second), so long waits do not delay new work.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable


@dataclass
class PeerPace:
    """What an asking server knows of one peer's work."""

    next_claim: float = 0.0
    backoff: float = 0.0


@dataclass
class ClaimPacer:
    """The asking side: which peers may be asked for work now, and when next."""

    backoff_max: float = 5.0
    backoff_min: float = 0.1
    error_backoff_max: float = 30.0
    announce_jitter: float = 1.0
    rand: Callable[[], float] = field(default=random.random)
    peers: dict[str, PeerPace] = field(default_factory=dict)
    _rr: int = 0

    def set_peers(self, names: Iterable[str]) -> None:
        self.peers = {n: self.peers.get(n, PeerPace()) for n in names}

    def due(self, now: float) -> list[str]:
        """Peers that may be asked now, in round-robin order (fair across calls)."""
        names = list(self.peers)
        if not names:
            return []
        start = self._rr % len(names)
        order = names[start:] + names[:start]
        return [n for n in order if self.peers[n].next_claim <= now]

    def next_in(self, now: float) -> float:
        """Seconds until some peer may be asked again (inf with no peers)."""
        waits = [max(0.0, p.next_claim - now) for p in self.peers.values()]
        return min(waits) if waits else float("inf")

    def _jitter(self, seconds: float) -> float:
        return seconds * (0.8 + 0.4 * self.rand())

    def got_work(self, name: str) -> None:
        pace = self.peers.setdefault(name, PeerPace())
        pace.backoff = 0.0
        pace.next_claim = 0.0
        names = list(self.peers)
        self._rr = (names.index(name) + 1) % len(names)

    def no_work(self, name: str, now: float, retry_after: float | None = None) -> None:
        """The peer had nothing (or failed); `retry_after` is the home's own pacing hint."""
        pace = self.peers.setdefault(name, PeerPace())
        pace.backoff = min(self.backoff_max, max(self.backoff_min, pace.backoff * 2))
        wait = max(pace.backoff, retry_after or 0.0)
        pace.next_claim = now + self._jitter(wait)

    def failed(self, name: str, now: float) -> None:
        """The peer could not be reached or answered an error: ask again after a back-off that
        doubles up to `error_backoff_max` (longer than for "no work": it may be gone)."""
        pace = self.peers.setdefault(name, PeerPace())
        pace.backoff = min(self.error_backoff_max, max(self.backoff_min, pace.backoff * 2))
        pace.next_claim = now + self._jitter(pace.backoff)

    def announced(self, name: str, now: float, within: float | None = None) -> None:
        """The peer says it has work: ask it soon, at a random moment within `within` seconds
        (the home's spread for the peers it told at once: `announce_spread`), at most
        `announce_jitter`, so a farm does not stampede."""
        pace = self.peers.setdefault(name, PeerPace())
        pace.backoff = 0.0
        spread = self.announce_jitter if within is None else max(0.0, min(within, self.announce_jitter))
        pace.next_claim = now + spread * self.rand()


def announce_spread(told: int, idle_claims_per_second: float, announce_jitter: float = 1.0) -> float:
    """The seconds over which the `told` peers told of new work at once should spread their
    claims: the home's empty-claim budget shared among them (one peer: at once; a thousand:
    over `announce_jitter`, as before the spread was told)."""
    if idle_claims_per_second <= 0:
        return announce_jitter
    return min(announce_jitter, told / idle_claims_per_second)


def no_work_retry_after(peer_count: int, idle_claims_per_second: float) -> float:
    """The wait a home server asks of a peer it has no work for: its empty-claim budget shared
    among its peers."""
    if idle_claims_per_second <= 0:
        return 0.0
    return peer_count / idle_claims_per_second


@dataclass
class Announcer:
    """The home side: which peers were turned away since the last announcement, and whether
    to announce now."""

    announce_period: float = 1.0
    waiting: set[str] = field(default_factory=set)
    last: float = float("-inf")

    def turned_away(self, name: str) -> None:
        self.waiting.add(name)

    def served(self, name: str) -> None:
        self.waiting.discard(name)

    def due(self, now: float) -> list[str]:
        """Peers to tell about new work now (empties the list), or [] if too soon."""
        if not self.waiting or now - self.last < self.announce_period:
            return []
        self.last = now
        names, self.waiting = sorted(self.waiting), set()
        return names

#!/usr/bin/env python3
"""Simulation: what does asking for work cost a distren farm of 10, 100 or 1,000 servers?

A discrete-event simulation on a virtual clock (no sockets, no sleeping) of a farm where every
server is a peer of every other and has 2 render slots. One server, the home, holds one job of
--frames frames (backend povray) and renders with its own slots too; the others claim its
frames over the (modelled) peer protocol. The job is submitted after --warmup virtual seconds of
an idle farm (so every server's back-off is in its idle state, as when a job arrives in a real
farm); after the job drains, the farm stays idle, polling, for --idle virtual seconds.

What is real:
- the home's scheduler: `distren.scheduler.Scheduler` on a real SQLite file in a temporary
  folder (`distren.store.db.connect`), its clock the virtual clock. Claims, heartbeats, uploads,
  completes (with their fencing checks), lease expiry and `on_ready` are its own code.
- the pacing: `distren.federation.pacing.ClaimPacer` on every asking server (back-off, jitter,
  Retry-After, announcements), and on the home `Announcer` and `no_work_retry_after`. Only
  ClaimPacer's two queries, due() and next_in(), are answered from a heap instead of a scan of
  every peer (`IndexedPacer`, checked against ClaimPacer's own answers at every start): a scan
  per wake-up is too slow with 1,000 peers. The rules themselves are ClaimPacer's methods.

What is modelled (after server/runner.py, federation/service.py and federation/routes.py):
- protocols. "before" is the claim loop before pacing: a free slot asks every due peer in
  round-robin order, one request each, until one grants; a peer that had no work (or failed)
  waits a back-off doubling from 0.1 s to claim_backoff_max=5 s, +-20 % jitter, reset by work:
  ClaimPacer(backoff_max=5) with no Retry-After and no announcements. "after" is the current
  code: every "no work" answer (from any server: each would answer so as a home) carries
  Retry-After = no_work_retry_after(N-1, idle_claims_per_second=20), rounded to 0.1 s as the
  route writes it; and the home announces work as `Federation.work_appeared` does: on its
  scheduler's on_ready, when it has turned peers away, at most once a second, only when
  `ready_backends()` is not empty, one request (POST /peer/work) per peer turned away, with the
  spread `announce_spread(told, 20)`; the peer's pacer then calls `announced()` and its slots
  are woken (they wait for the pacer's moment).
- slots: a free slot first claims a frame of its own server (only the home has any; its lease
  is renewed in its own database every 20 s: not a request), then asks its peers; with nothing,
  it waits min(1 s, max(0.05 s, pacer.next_in())) or until woken (the home's slots by its
  scheduler's on_ready, a server's other slots when one of them got a peer's lease). A server's
  free slots share one pacer and are modelled as one waiting loop (the runner's slots wait
  independently: that moves a request by at most the 0.05 s floor, a noticed announcement by
  less than the 1 s poll).
- renders: lognormal render time (median 30 s, sigma 0.3: mean 31.4 s), seeded. A peer's
  render heartbeats every 20 s (scheduler.heartbeat(..., 60)), then uploads its output (as the
  route: is_running, record_upload; a fake Blob("c"*64, 1)) and completes (uploaded, complete).
  A Conflict is a refused result. The home runs expire_leases() every 0.5 s. Not modelled:
  seed downloads (once per server and job), hello probes (only for frames of a backend the home
  lacks: none here), the liveness loop (local work), network latency.
- crashes: every non-home server crashes at 1 % per hour (exponential; the same crash times for
  both protocols), stays down 5 virtual minutes, and loses its renders (no upload, no fail: the
  leases expire at the home) and its pacing state. Requests to a server that is down fail
  (counted as failed requests; the asker backs off without Retry-After). The home never crashes.
- requests between non-home servers always get "no work". With more than --sample-askers
  non-home servers, only that many (a seeded random choice) keep every peer in their pacer; the
  others keep only the home (how a server paces the home does not depend on its other peers,
  which answer at once). The farm's requests between non-home servers are then the sampled
  askers' count times (N-1)/sample, marked "~" in the table. --sample-askers 0: all of them.

Measured per servers x protocol, from the job's submission until it drains: requests a second
received by the home (claims granted, claims answered "no work", heartbeats, uploads,
completes) and announcements it sent; requests a second in the whole farm (every request any
server sends, failed ones included); failed requests (count); the time to drain; frames rendered
twice (renders whose result was refused, renders lost in a crash); idle slot time (slot-seconds
of servers that were up, idle while the job had ready frames, as a fraction of the up
slot-seconds while it had ready frames). Then, over the idle phase after the drain, requests a
second received by the home and in the whole farm: where O(N^2) shows.

Run (each servers x protocol pair in its own process, --jobs at a time; progress on stderr, the
markdown table on stdout):

    .venv/bin/python benchmarks/simulate.py [--servers 10,100,1000] [--frames 100000]
        [--protocol before,after] [--seed 1] [--jobs 2] [--sample-askers 100]
        [--warmup 60] [--idle 600]
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import os
import random
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from distren.errors import Conflict, NotFound
from distren.federation.pacing import Announcer, ClaimPacer, announce_spread, no_work_retry_after
from distren.job.spec import FrameSpec, JobSpec
from distren.scheduler import Scheduler
from distren.store import db
from distren.store.blobs import Blob

SLOTS = 2
BACKENDS = ["povray"]
LEASE_SECONDS = 60.0         # --lease-seconds default
HEARTBEAT_SECONDS = 20.0     # a third of the lease (FederationSettings.heartbeat, Runner._heartbeat)
EXPIRY_PERIOD = 0.5          # server/runner.py EXPIRY_PERIOD
IDLE_POLL = 1.0              # server/runner.py IDLE_POLL
MIN_POLL = 0.05              # the runner's floor on waiting for next_claim_in()
BACKOFF_MAX = 5.0            # --claim-backoff-max default
IDLE_CLAIMS_PER_SECOND = 20.0  # --idle-claims-per-second default
ANNOUNCE_PERIOD = 1.0        # Announcer default
RENDER_MEDIAN = 30.0
RENDER_SIGMA = 0.3
RENDER_MU = math.log(RENDER_MEDIAN)
CRASH_PER_HOUR = 0.01
DOWN_SECONDS = 300.0
HOME = "home"
LOCAL = f"local:{HOME}"      # Core.lease_owner of the home
SEED = Blob("a" * 64, 1)
OUTPUT = Blob("c" * 64, 1)

# event kinds
WAKE, HEARTBEAT, DONE, TICK, CRASH, RECOVER, SUBMIT, ANNOUNCE = range(8)


class IndexedPacer(ClaimPacer):
    """ClaimPacer whose due() and next_in() come from a heap of next-claim times instead of a
    scan of every peer. The rules stay ClaimPacer's: got_work, no_work and announced are its
    own methods; each change is recorded in the heap (stale entries are skipped lazily)."""

    def set_peers(self, names) -> None:
        super().set_peers(names)
        self._index = {n: i for i, n in enumerate(self.peers)}
        self._heap = [(p.next_claim, n) for n, p in self.peers.items()]
        heapq.heapify(self._heap)
        self._due: set[str] = set()

    def _moved(self, name: str) -> None:
        self._due.discard(name)
        heapq.heappush(self._heap, (self.peers[name].next_claim, name))

    def got_work(self, name: str) -> None:
        ClaimPacer.got_work(self, name)
        self._moved(name)

    def no_work(self, name: str, now: float, retry_after: float | None = None) -> None:
        ClaimPacer.no_work(self, name, now, retry_after)
        self._due.discard(name)
        heapq.heappush(self._heap, (self.peers[name].next_claim, name))

    def failed(self, name: str, now: float) -> None:
        ClaimPacer.failed(self, name, now)
        self._due.discard(name)
        heapq.heappush(self._heap, (self.peers[name].next_claim, name))

    def announced(self, name: str, now: float, within: float | None = None) -> None:
        ClaimPacer.announced(self, name, now, within)
        self._moved(name)

    def due(self, now: float) -> list[str]:
        heap, due = self._heap, self._due
        if heap and heap[0][0] <= now:
            peers, pop, add = self.peers, heapq.heappop, due.add
            while heap and heap[0][0] <= now:
                t, n = pop(heap)
                if peers[n].next_claim == t:
                    add(n)
        if len(due) <= 1:
            return list(due)
        key = self._index.__getitem__
        order = sorted(due, key=key)
        cut = bisect.bisect_left(order, self._rr % len(self.peers), key=key)
        return order[cut:] + order[:cut] if cut else order

    def next_in(self, now: float) -> float:
        if self._due:
            return 0.0
        heap, peers = self._heap, self.peers
        while heap and peers[heap[0][1]].next_claim != heap[0][0]:
            heapq.heappop(heap)
        return max(0.0, heap[0][0] - now) if heap else math.inf


def check_indexed_pacer(steps: int = 4000) -> None:
    """IndexedPacer answers due() and next_in() exactly as ClaimPacer does."""
    r1, r2, ops = random.Random(7), random.Random(7), random.Random(8)
    a = ClaimPacer(backoff_max=BACKOFF_MAX, rand=r1.random)
    b = IndexedPacer(backoff_max=BACKOFF_MAX, rand=r2.random)
    names = [f"p{i}" for i in range(23)]
    a.set_peers(names)
    b.set_peers(names)
    now = 0.0
    for _ in range(steps):
        now += ops.expovariate(4.0)
        due = a.due(now)
        if due != b.due(now) or a.next_in(now) != b.next_in(now):
            raise AssertionError(f"IndexedPacer differs from ClaimPacer at {now}: {due} != {b.due(now)}")
        for name in due:
            if ops.random() < 0.1:
                a.got_work(name)
                b.got_work(name)
                break
            hint = ops.choice([None, 0.5, 30.0])
            a.no_work(name, now, hint)
            b.no_work(name, now, hint)
        if ops.random() < 0.05:
            name = ops.choice(names)
            a.announced(name, now)
            b.announced(name, now)


class Server:
    __slots__ = ("name", "home", "full", "up", "free", "epoch", "wake_token", "wake_at", "pacer",
                 "crash_rng", "peer_order")

    def __init__(self, name: str, home: bool, full: bool, peer_order: list[str], crash_rng):
        self.name = name
        self.home = home
        self.full = full
        self.up = True
        self.free = SLOTS
        self.epoch = 0          # +1 at each crash: events of lost renders are dropped
        self.wake_token = 0
        self.wake_at = math.inf
        self.pacer: IndexedPacer | None = None
        self.crash_rng = crash_rng
        self.peer_order = peer_order


class Render:
    __slots__ = ("server", "epoch", "job", "frame", "attempt", "end", "local")

    def __init__(self, server, epoch, job, frame, attempt, end, local):
        self.server, self.epoch, self.job, self.frame = server, epoch, job, frame
        self.attempt, self.end, self.local = attempt, end, local


class Sim:
    def __init__(self, n: int, protocol: str, frames: int, seed: int, warmup: float, idle: float,
                 sample: int, folder: Path):
        self.n, self.protocol, self.frames = n, protocol, frames
        self.warmup, self.idle = warmup, idle
        self.label = f"{n} servers, {protocol}"
        self.now = 0.0
        self.queue: list = []
        self.seq = 0
        self.after = protocol == "after"
        # the 204's Retry-After header as routes.py writes it and service.py reads it
        self.retry_after = (float(f"{no_work_retry_after(n - 1, IDLE_CLAIMS_PER_SECOND):.1f}")
                            if self.after else None)
        self.announcer = Announcer(announce_period=ANNOUNCE_PERIOD) if self.after else None
        self.announce_pending = False
        self.jitter_rng = random.Random(f"{seed}/{n}/{protocol}/jitter")
        self.render_rng = random.Random(f"{seed}/{n}/render")  # the same draws for both protocols
        self.sched = Scheduler(db.connect(folder / "home.sqlite3"), HOME, clock=lambda: self.now,
                               on_ready=self._on_ready)
        self.job = None

        names = [HOME] + [f"peer{i}" for i in range(1, n)]
        others = names[1:]
        if sample <= 0 or sample >= len(others):
            full = set(others)
        else:
            full = set(random.Random(f"{seed}/{n}/sample").sample(others, sample))
        self.sampled = len(full)
        self.scale = len(others) / len(full) if full else 0.0
        self.servers: list[Server] = []
        for i, name in enumerate(names):
            ring = names[i + 1:] + names[:i]   # each server lists its peers starting after itself
            s = Server(name, name == HOME, name in full, ring, random.Random(f"{seed}/{n}/crash/{i}"))
            s.pacer = self._new_pacer(s)
            self.servers.append(s)
        self.by_name = {s.name: s for s in self.servers}
        self.down: set[str] = set()
        self.home = self.servers[0]

        self.up_slots = n * SLOTS
        self.idle_slots = n * SLOTS
        self.ready = self.running = self.done = self.failed = 0
        self.phase = "warmup"
        self.counts = {"warmup": Counter(), "drain": Counter(), "idle": Counter()}
        self.c = self.counts["warmup"]
        self.idle_acc = self.slot_acc = 0.0
        self.t_submit = self.t_drain = None
        self.end_time = math.inf
        self.next_report = 0
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    # -- plumbing ------------------------------------------------------------------------
    def _new_pacer(self, s: Server) -> IndexedPacer:
        p = IndexedPacer(backoff_max=BACKOFF_MAX, rand=self.jitter_rng.random)
        p.set_peers(s.peer_order if (s.home or s.full) else [HOME])
        return p

    def push(self, t: float, kind: int, obj=None, arg=None) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, obj, arg))

    def wake(self, s: Server, t: float) -> None:
        if t < s.wake_at:
            s.wake_token += 1
            s.wake_at = t
            self.push(t, WAKE, s, s.wake_token)

    def _on_ready(self) -> None:
        """The home scheduler's on_ready, as Runner.wake: the home's slots wake, and
        Federation.work_appeared starts an announcement when peers were turned away."""
        if self.home.free and self.home.up:
            self.wake(self.home, self.now)
        if self.announcer and self.announcer.waiting and not self.announce_pending:
            self.announce_pending = True
            self.push(max(self.now, self.announcer.last + self.announcer.announce_period), ANNOUNCE)

    def log(self, msg: str) -> None:
        print(f"[{self.label}] virtual {self.now:8.1f} s, wall {time.perf_counter() - self.wall0:6.1f} s,"
              f" CPU {time.process_time() - self.cpu0:6.1f} s: {msg}", file=sys.stderr, flush=True)

    # -- the run -------------------------------------------------------------------------
    def run(self) -> dict:
        self.push(0.0, TICK)
        self.push(self.warmup, SUBMIT)
        rate = CRASH_PER_HOUR / 3600.0
        for s in self.servers:
            self.wake(s, 0.0)
            if not s.home:
                self.push(s.crash_rng.expovariate(rate), CRASH, s)
        queue, pop = self.queue, heapq.heappop
        while queue:
            t, _, kind, obj, arg = pop(queue)
            if t > self.end_time:
                break
            dt = t - self.now
            if dt > 0.0:
                if self.phase == "drain" and self.ready > 0:
                    self.idle_acc += self.idle_slots * dt
                    self.slot_acc += self.up_slots * dt
                self.now = t
            if kind == WAKE:
                if arg == obj.wake_token:
                    obj.wake_at = math.inf
                    self.fill(obj)
            elif kind == HEARTBEAT:
                self.heartbeat(obj)
            elif kind == DONE:
                self.finish(obj)
            elif kind == TICK:
                self.tick()
            elif kind == ANNOUNCE:
                self.announce()
            elif kind == CRASH:
                self.crash(obj)
            elif kind == RECOVER:
                self.recover(obj)
            elif kind == SUBMIT:
                self.submit()
            if self.t_drain is None and self.t_submit is not None and self.now - self.t_submit > 1e8:
                raise RuntimeError(f"{self.label}: the job did not drain")
        return self.result()

    def submit(self) -> None:
        self.phase = "drain"
        self.c = self.counts["drain"]
        self.t_submit = self.now
        self.log(f"submitting {self.frames} frames")
        job = self.sched.begin_job()
        self.job = job
        spec = JobSpec("simulated", "povray", {"scene": "scene.pov"}, [FrameSpec(i) for i in range(self.frames)])
        self.sched.activate_job(job, spec, SEED)
        self.recount()
        self.next_report = self.frames // 10

    def recount(self) -> None:
        counts = dict(self.sched.conn.execute("SELECT state, COUNT(*) FROM frames GROUP BY state").fetchall())
        self.ready = counts.get("ready", 0)
        self.running = counts.get("running", 0)
        self.done = counts.get("done", 0)
        self.failed = counts.get("failed", 0) + counts.get("cancelled", 0)
        self.check_drained()

    def check_drained(self) -> None:
        if self.phase == "drain" and self.done + self.failed >= self.frames:
            self.phase = "idle"
            self.c = self.counts["idle"]
            self.t_drain = self.now
            self.end_time = self.now + self.idle
            self.log(f"drained ({self.done} done, {self.failed} failed); idle phase of {self.idle:g} s")

    # -- slots ---------------------------------------------------------------------------
    def fill(self, s: Server) -> None:
        """The server's free slots take work: its own frames first, then its peers'; with
        none, they wait (Runner._slot_turn)."""
        if not s.up:
            return
        while s.free:
            if s.home:
                lease = self.sched.claim(LOCAL, BACKENDS, lease_seconds=LEASE_SECONDS)
                if lease is not None:
                    self.start(s, lease, local=True)
                    continue
            lease = self.ask(s)
            if lease is None:
                break
            self.start(s, lease, local=False)
        if s.free:
            self.wake(s, self.now + min(IDLE_POLL, max(MIN_POLL, s.pacer.next_in(self.now))))

    def ask(self, s: Server):
        """Federation.claim: every due peer in round-robin order until one grants."""
        now, pacer, c = self.now, s.pacer, self.c
        hint, down, no_work = self.retry_after, self.down, pacer.no_work
        asked = failed = 0
        try:
            for name in pacer.due(now):
                if name == HOME:
                    lease = self.sched.claim(s.name, BACKENDS, lease_seconds=LEASE_SECONDS)
                    if lease is not None:
                        c["granted"] += 1
                        if self.announcer:
                            self.announcer.served(s.name)
                        pacer.got_work(name)
                        return lease
                    c["nowork"] += 1
                    if self.announcer:
                        self.announcer.turned_away(s.name)
                    no_work(name, now, hint)
                elif name in down:
                    asked += 1
                    failed += 1
                    if self.announcer:  # after: an unreachable peer backs off longer (pacer.failed)
                        pacer.failed(name, now)
                    else:
                        no_work(name, now)
                else:  # a server without work of its own answers at once
                    asked += 1
                    no_work(name, now, hint)
            return None
        finally:
            key = "home_asks" if s.home else "peer_asks"
            c[key] += asked
            c[key + "_failed"] += failed

    def start(self, s: Server, lease, local: bool) -> None:
        s.free -= 1
        self.idle_slots -= 1
        self.ready -= 1
        self.running += 1
        d = self.render_rng.lognormvariate(RENDER_MU, RENDER_SIGMA)
        r = Render(s, s.epoch, lease.job, lease.frame, lease.attempt, self.now + d, local)
        if d <= HEARTBEAT_SECONDS:
            self.push(r.end, DONE, r)
        else:
            self.push(self.now + HEARTBEAT_SECONDS, HEARTBEAT, r)

    def free_slot(self, s: Server) -> None:
        s.free += 1
        self.idle_slots += 1

    def heartbeat(self, r: Render) -> None:
        s = r.server
        if s.epoch != r.epoch:
            return  # lost in a crash
        self.c["local_heartbeat" if r.local else "heartbeat"] += 1
        try:
            self.sched.heartbeat(job=r.job, frame=r.frame, attempt=r.attempt, owner=LOCAL if r.local else s.name,
                                 lease_seconds=LEASE_SECONDS)
        except (Conflict, NotFound):
            self.c["killed"] += 1  # the lease is gone: the slot kills the render
            self.free_slot(s)
            self.fill(s)
            return
        nxt = self.now + HEARTBEAT_SECONDS
        self.push(nxt, HEARTBEAT, r) if nxt < r.end else self.push(r.end, DONE, r)

    def finish(self, r: Render) -> None:
        s = r.server
        if s.epoch != r.epoch:
            return  # lost in a crash
        sched, c = self.sched, self.c
        try:
            if r.local:
                sched.complete(job=r.job, frame=r.frame, attempt=r.attempt, output=OUTPUT, rendered_by=HOME,
                               log="", owner=LOCAL)
            else:
                # PUT .../output (routes.put_output), then POST .../complete (routes.complete)
                c["upload"] += 1
                if not sched.is_running(job=r.job, frame=r.frame, attempt=r.attempt, owner=s.name):
                    raise Conflict("not leased to the sender")
                sched.record_upload(job=r.job, frame=r.frame, attempt=r.attempt, owner=s.name, output=OUTPUT)
                c["complete"] += 1
                blob = sched.uploaded(job=r.job, frame=r.frame, attempt=r.attempt, owner=s.name)
                if blob is None or blob.sha256 != OUTPUT.sha256:
                    raise Conflict("output was not uploaded for this lease")
                sched.complete(job=r.job, frame=r.frame, attempt=r.attempt, output=blob, rendered_by=s.name,
                               log="", owner=s.name)
            self.running -= 1
            self.done += 1
        except (Conflict, NotFound):
            c["refused"] += 1
        if self.phase == "drain" and self.done >= self.next_report:
            self.log(f"{self.done}/{self.frames} frames done")
            self.next_report += max(1, self.frames // 10)
        self.check_drained()
        self.free_slot(s)
        self.fill(s)

    # -- the home's periodic work ----------------------------------------------------------
    def tick(self) -> None:
        if self.sched.expire_leases():
            self.recount()
        self.push(self.now + EXPIRY_PERIOD, TICK)

    def announce(self) -> None:
        """Federation._announce: after the period, and only with claimable frames."""
        self.announce_pending = False
        if not self.sched.ready_backends():
            return
        names = self.announcer.due(self.now)
        within = announce_spread(len(names), IDLE_CLAIMS_PER_SECOND)
        for name in names:
            self.c["announce"] += 1
            peer = self.by_name[name]
            if not peer.up:
                self.c["announce_failed"] += 1
                continue
            peer.pacer.announced(HOME, self.now, within)   # routes.work, and its slots woken:
            self.wake(peer, self.now)                      # they wait for the pacer's moment

    # -- crashes ---------------------------------------------------------------------------
    def crash(self, s: Server) -> None:
        self.c["crashes"] += 1
        self.c["lost"] += SLOTS - s.free
        s.up = False
        self.down.add(s.name)
        s.epoch += 1
        self.idle_slots -= s.free
        self.up_slots -= SLOTS
        s.free = SLOTS
        s.wake_token += 1
        s.wake_at = math.inf
        self.push(self.now + DOWN_SECONDS, RECOVER, s)

    def recover(self, s: Server) -> None:
        s.up = True
        self.down.discard(s.name)
        self.idle_slots += SLOTS
        self.up_slots += SLOTS
        s.pacer = self._new_pacer(s)  # a restart forgets the pacing state
        self.wake(s, self.now)
        self.push(self.now + s.crash_rng.expovariate(CRASH_PER_HOUR / 3600.0), CRASH, s)

    # -- results ---------------------------------------------------------------------------
    def result(self) -> dict:
        counted = (self.ready, self.running, self.done, self.failed)
        self.recount()
        if self.t_drain is None:
            raise RuntimeError(f"{self.label}: the job did not drain")
        if counted != (self.ready, self.running, self.done, self.failed):
            raise AssertionError(f"{self.label}: frame counts {counted} differ from the database's")
        drain = self.t_drain - self.t_submit
        d, i = self.counts["drain"], self.counts["idle"]

        def home_in(c):
            return c["granted"] + c["nowork"] + c["heartbeat"] + c["upload"] + c["complete"]

        def farm(c):
            return home_in(c) + c["announce"] + c["home_asks"] + c["peer_asks"] * self.scale

        def failed(c):
            return c["announce_failed"] + c["home_asks_failed"] + c["peer_asks_failed"] * self.scale

        blocked = self.sched.conn.execute("SELECT COUNT(*) FROM blocklist").fetchone()[0]
        return {
            "servers": self.n, "protocol": self.protocol, "frames": self.frames, "done": self.done,
            "failed_frames": self.failed, "drain": drain, "retry_after": self.retry_after,
            **{k: d[k] / drain for k in ("granted", "nowork", "heartbeat", "upload", "complete", "announce")},
            "home": home_in(d) / drain, "farm": farm(d) / drain, "failed_requests": failed(d),
            "refused": d["refused"] + i["refused"], "killed": d["killed"] + i["killed"],
            "lost": d["lost"], "crashes": d["crashes"], "blocklisted": blocked,
            "idle_fraction": self.idle_acc / self.slot_acc if self.slot_acc else 0.0,
            "idle_home": home_in(i) / self.idle, "idle_farm": farm(i) / self.idle,
            "idle_announce": i["announce"] / self.idle,
            "estimated": self.scale != 1.0, "sampled": self.sampled,
            "wall": time.perf_counter() - self.wall0, "cpu": time.process_time() - self.cpu0,
        }


def simulate(args: tuple) -> dict:
    n, protocol, frames, seed, warmup, idle, sample = args
    with tempfile.TemporaryDirectory(prefix="distren-sim-") as folder:
        sim = Sim(n, protocol, frames, seed, warmup, idle, sample, Path(folder))
        res = sim.run()
        sim.sched.conn.close()
    print(f"[{sim.label}] finished: {res['wall']:.1f} s wall, {res['cpu']:.1f} s CPU", file=sys.stderr, flush=True)
    return res


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.{digits}f}"


COLUMNS = ("servers", "protocol", "drain (s)", "home: granted/s", "home: no work/s", "home: heartbeats/s",
           "home: uploads/s", "home: completes/s", "home: announcements sent/s", "home: received/s",
           "farm: requests/s", "failed requests", "results refused", "renders lost to crashes (crashes)",
           "idle slot time", "idle phase: home received/s", "idle phase: farm requests/s")


def table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join([" --- "] * len(COLUMNS)) + "|"]
    for r in results:
        est = "~" if r["estimated"] else ""
        cells = (f"{r['servers']:,}", r["protocol"], f"{r['drain']:,.0f}", fmt(r["granted"]), fmt(r["nowork"]),
                 fmt(r["heartbeat"]), fmt(r["upload"]), fmt(r["complete"]), fmt(r["announce"], 2), fmt(r["home"]),
                 est + fmt(r["farm"]), f"{est}{r['failed_requests']:,.0f}", str(r["refused"] + r["killed"]),
                 f"{r['lost']} ({r['crashes']})", f"{100 * r['idle_fraction']:.2f} %", fmt(r["idle_home"]),
                 est + fmt(r["idle_farm"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--servers", default="10,100,1000", help="farm sizes, comma-separated (default 10,100,1000)")
    ap.add_argument("--frames", type=int, default=100_000, help="frames of the home's job (default 100000)")
    ap.add_argument("--protocol", default="before,after", help="before, after or both (default before,after)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--warmup", type=float, default=60.0, help="idle virtual seconds before the job (default 60)")
    ap.add_argument("--idle", type=float, default=600.0, help="idle virtual seconds after the job (default 600)")
    ap.add_argument("--sample-askers", type=int, default=100,
                    help="non-home servers that keep every peer in their pacer; 0: all (default 100)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="simulations run at once, one process each (default 2)")
    args = ap.parse_args()
    servers = [int(x) for x in args.servers.split(",") if x.strip()]
    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    if not servers or any(n < 2 for n in servers):
        ap.error("a farm needs at least 2 servers")
    if not protocols or any(p not in ("before", "after") for p in protocols):
        ap.error("--protocol takes before, after or both")
    if args.frames < 1 or args.idle <= 0 or args.warmup < 0:
        ap.error("--frames must be >= 1, --idle > 0, --warmup >= 0")

    check_indexed_pacer()
    runs = [(n, p, args.frames, args.seed, args.warmup, args.idle, args.sample_askers)
            for n in servers for p in protocols]
    order = sorted(runs, key=lambda r: (-r[0], r[1] != "before"))  # the longest first
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if args.jobs > 1 and len(runs) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            done = dict(zip(order, pool.map(simulate, order)))
    else:
        done = {r: simulate(r) for r in order}
    wall = time.perf_counter() - wall0
    results = [done[r] for r in runs]

    cmd = [".venv/bin/python benchmarks/simulate.py", "--servers", args.servers, "--frames", str(args.frames),
           "--protocol", args.protocol, "--seed", str(args.seed)]
    for flag, value, default in (("--warmup", args.warmup, 60.0), ("--idle", args.idle, 600.0),
                                 ("--sample-askers", args.sample_askers, 100)):
        if value != default:
            cmd += [flag, f"{value:g}"]
    mean = math.exp(RENDER_MU + RENDER_SIGMA ** 2 / 2)
    hints = ", ".join(f"{r['servers']:,} servers {r['retry_after']:g} s" for r in results if r["retry_after"])
    print(f"`{' '.join(cmd)}`\n")
    print(f"Virtual time. Every server is a peer of every other, 2 slots each; one home holds the job."
          f" Render time lognormal: median {RENDER_MEDIAN:g} s (mu = ln {RENDER_MEDIAN:g} = {RENDER_MU:.3f},"
          f" sigma = {RENDER_SIGMA:g}, mean {mean:.1f} s). Leases {LEASE_SECONDS:g} s, heartbeats every"
          f" {HEARTBEAT_SECONDS:g} s, expiry every {EXPIRY_PERIOD:g} s. Back-off 0.1 s doubling to"
          f" {BACKOFF_MAX:g} s, +-20 %. \"after\": Retry-After (N-1) / {IDLE_CLAIMS_PER_SECOND:g}"
          f" ({hints or 'not run'}) and announcements at most every {ANNOUNCE_PERIOD:g} s."
          f" Non-home servers crash at {CRASH_PER_HOUR * 100:g} % per hour, down {DOWN_SECONDS:g} s."
          f" The job is submitted after {args.warmup:g} s of idle farm; rates are over the drain (from"
          f" the submission), then over {args.idle:g} s of idle farm. Idle slot time: idle slot-seconds"
          f" of servers that are up while the job has ready frames, over all of theirs meanwhile.\n")
    print(table(results))
    notes = []
    for n, k in sorted({(r["servers"], r["sampled"]) for r in results if r["estimated"]}):
        notes.append(f"~ {n:,} servers: requests between non-home servers estimated from {k} of {n - 1:,}"
                     f" asking servers (x {(n - 1) / k:.2f}).")
    if any(r["failed_frames"] for r in results):
        notes.append("Frames failed for good: " + ", ".join(
            f"{r['servers']} {r['protocol']}: {r['failed_frames']}" for r in results if r["failed_frames"]))
    if any(r["blocklisted"] for r in results):
        notes.append("Peers blocklisted: " + ", ".join(
            f"{r['servers']} {r['protocol']}: {r['blocklisted']}" for r in results if r["blocklisted"]))
    cpu = sum(r["cpu"] for r in results) + time.process_time() - cpu0
    notes.append(f"Run: {wall:.0f} s wall, {cpu:.0f} s CPU, {min(args.jobs, len(runs))} process(es);"
                 " per row, wall / CPU seconds: "
                 + ", ".join(f"{r['servers']} {r['protocol']} {r['wall']:.0f} / {r['cpu']:.0f}" for r in results) + ".")
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()

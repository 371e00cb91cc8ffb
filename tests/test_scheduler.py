"""The scheduler's state machine on a real SQLite file, with a controlled clock."""

from __future__ import annotations

import pytest

from distren.errors import Conflict, NotFound
from distren.job.spec import FrameSpec, JobSpec
from distren.scheduler import Scheduler
from distren.store import db
from distren.store.blobs import Blob
from distren.url import DistrenURL

SEED = Blob("a" * 64, 10)
OUT = Blob("b" * 64, 20)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sched(tmp_path):
    clock = Clock()
    s = Scheduler(db.connect(tmp_path / "db.sqlite3"), "me", max_failures=2, clock=clock)
    s.test_clock = clock
    return s


def add_job(s: Scheduler, frames: dict[int, list], priority: int = 0, server: str = "me") -> int:
    job = s.begin_job()
    specs = [FrameSpec(f, [d if isinstance(d, DistrenURL) else DistrenURL(server, job, d) for d in deps])
             for f, deps in frames.items()]
    s.activate_job(job, JobSpec("j", "povray", {}, specs, priority), SEED)
    return job


def states(s: Scheduler, job: int) -> dict[int, str]:
    return {f["frame"]: f["state"] for f in s.frames(job)}


def test_claim_order_priority_then_job_then_frame(sched):
    low = add_job(sched, {3: [], 1: []})
    high = add_job(sched, {9: []}, priority=5)
    order = [(l.job, l.frame) for l in iter(lambda: sched.claim("local:me", ["povray"]), None)]
    assert order == [(high, 9), (low, 1), (low, 3)]


def test_claim_only_for_known_backends(sched):
    add_job(sched, {0: []})
    assert sched.claim("local:me", ["blender"]) is None
    assert sched.claim("local:me", []) is None


def test_dependencies_gate_readiness_and_ripple(sched):
    job = add_job(sched, {0: [], 5: [0], 1000: [5]})
    assert states(sched, job) == {0: "ready", 5: "waiting", 1000: "waiting"}
    lease = sched.claim("local:me", ["povray"])
    assert (lease.frame, lease.attempt) == (0, 1)
    assert sched.claim("local:me", ["povray"]) is None
    sched.complete(job, 0, 1, OUT, "me", "log")
    assert states(sched, job)[5] == "ready"
    lease = sched.claim("local:me", ["povray"])
    assert lease.depends == ({"url": f"distren://me/{job}/0", "sha256": OUT.sha256, "size": OUT.size},)


def test_attempt_number_fences_late_results(sched):
    job = add_job(sched, {0: []})
    first = sched.claim("peerB", ["povray"], lease_seconds=10)
    sched.test_clock.now += 11
    assert sched.expire_leases() == 1
    assert states(sched, job)[0] == "ready"
    second = sched.claim("peerC", ["povray"], lease_seconds=10)
    assert second.attempt == first.attempt + 1
    with pytest.raises(Conflict):
        sched.complete(job, 0, first.attempt, OUT, "peerB", "late", owner="peerB")
    with pytest.raises(Conflict):  # right attempt, wrong renderer
        sched.complete(job, 0, second.attempt, OUT, "peerB", "x", owner="peerB")
    sched.complete(job, 0, second.attempt, OUT, "peerC", "ok", owner="peerC")
    frame = sched.frame(job, 0)
    assert frame["state"] == "done" and frame["rendered_by"] == "peerC"
    assert [h["outcome"] for h in frame["history"]] == ["expired", "done"]


def test_heartbeat_extends_the_lease(sched):
    job = add_job(sched, {0: []})
    lease = sched.claim("peerB", ["povray"], lease_seconds=10)
    sched.test_clock.now += 8
    sched.heartbeat(job, 0, lease.attempt, "peerB", 10)
    sched.test_clock.now += 8
    assert sched.expire_leases() == 0
    with pytest.raises(Conflict):
        sched.heartbeat(job, 0, lease.attempt, "peerC", 10)


def test_failures_requeue_until_the_limit_then_fail_dependents(sched):
    job = add_job(sched, {0: [], 1: [0]})
    other = add_job(sched, {7: [DistrenURL("me", job, 1)]})
    lease = sched.claim("local:me", ["povray"])
    assert sched.fail(job, 0, lease.attempt, "log 1", "exit code 1") == "ready"
    lease = sched.claim("local:me", ["povray"])
    assert sched.fail(job, 0, lease.attempt, "log 2", "exit code 1") == "failed"
    assert states(sched, job) == {0: "failed", 1: "failed"}
    assert sched.frame(job, 1)["error"] == f"dependency distren://me/{job}/0 failed"
    assert states(sched, other) == {7: "failed"}
    assert sched.job(job)["state"] == "failed"
    assert [h["log"] for h in sched.frame(job, 0)["history"]] == ["log 1", "log 2"]


def test_interrupted_attempts_do_not_count(sched):
    job = add_job(sched, {0: []})
    for _ in range(3):
        sched.claim("local:me", ["povray"])
        assert sched.recover("local:me") == 1
    assert sched.frame(job, 0)["failures"] == 0 and states(sched, job)[0] == "ready"


def test_cancel_and_retry(sched):
    job = add_job(sched, {0: [], 1: []})
    other = add_job(sched, {5: [DistrenURL("me", job, 1)]})
    lease = sched.claim("local:me", ["povray"])
    running = sched.cancel(job)
    assert running == [(job, lease.frame, lease.attempt)]
    assert sched.job(job)["state"] == "cancelled"
    assert states(sched, job) == {0: "cancelled", 1: "cancelled"}
    assert states(sched, other) == {5: "failed"}
    with pytest.raises(Conflict):
        sched.complete(job, lease.frame, lease.attempt, OUT, "r", "")
    assert sched.claim("local:me", ["povray"]) is None
    assert sched.retry(job) == 2
    assert sched.job(job)["state"] == "queued"
    assert sched.retry(other) == 1
    assert states(sched, other) == {5: "waiting"}


def test_job_states(sched):
    job = add_job(sched, {0: [], 1: []})
    assert sched.job(job)["state"] == "queued"
    a = sched.claim("local:me", ["povray"])
    assert sched.job(job)["state"] == "running"
    sched.complete(job, a.frame, a.attempt, OUT, "me", "")
    b = sched.claim("local:me", ["povray"])
    sched.complete(job, b.frame, b.attempt, OUT, "me", "")
    info = sched.job(job)
    assert info["state"] == "done" and info["frames"]["done"] == 2 and info["finished"] is not None


def test_delete_refused_while_others_wait_and_ids_never_reused(sched):
    first = add_job(sched, {0: []})
    second = add_job(sched, {0: [DistrenURL("me", first, 0)]})
    with pytest.raises(Conflict):
        sched.delete(first)
    sched.delete(second)
    with pytest.raises(NotFound):
        sched.job(second)
    assert add_job(sched, {0: []}) == second + 1


def test_remote_dependencies(sched):
    job = add_job(sched, {0: [DistrenURL("peer", 4, 2)], 1: [DistrenURL("peer", 4, 3)]})
    assert states(sched, job) == {0: "waiting", 1: "waiting"}
    assert sorted(sched.pending_remote_deps()) == [("peer", 4, 2), ("peer", 4, 3)]
    sched.set_remote_dep("peer", 4, 2, "done", OUT)
    sched.set_remote_dep("peer", 4, 3, "cancelled")
    assert states(sched, job) == {0: "ready", 1: "failed"}
    assert sched.frame(job, 1)["error"] == "dependency distren://peer/4/3 cancelled"
    assert sched.claim("local:me", ["povray"]).depends[0]["sha256"] == OUT.sha256


def test_dependency_on_a_deleted_job_fails_instead_of_waiting(sched):
    first = add_job(sched, {0: []})
    lease = sched.claim("local:me", ["povray"])
    sched.complete(first, 0, lease.attempt, OUT, "me", "")
    second = add_job(sched, {0: [DistrenURL("me", first, 0)], 1: []})
    lease = sched.claim("local:me", ["povray"])
    assert (lease.job, lease.frame) == (second, 0)
    sched.fail(second, 0, lease.attempt, "", "boom")
    sched.fail(second, 0, sched.claim("local:me", ["povray"]).attempt, "", "boom")
    sched.delete(first)
    sched.retry(second)
    assert states(sched, second)[0] == "failed"
    assert sched.frame(second, 0)["error"] == f"dependency distren://me/{first}/0 deleted"


def test_a_peer_whose_frames_others_then_render_is_blocklisted_for_the_job(tmp_path):
    clock = Clock()
    s = Scheduler(db.connect(tmp_path / "b.sqlite3"), "me", max_failures=5, block_after=2, retry_elsewhere=10,
                  clock=clock)
    job = add_job(s, {0: [], 1: [], 2: []})
    other = add_job(s, {0: []})
    for _ in range(2):
        lease = s.claim("bad", ["povray"], lease_seconds=30)
        assert lease.job == job
        s.fail(job, lease.frame, lease.attempt, "", "crash", owner="bad")
    # failures alone blame nobody: the frames may be at fault
    assert s.job(job)["blocklisted"] == []
    # a failed frame is not given back to the same peer at once; another renderer gets it
    assert (s.claim("bad", ["povray"], lease_seconds=30).job, ) == (job, )
    for _ in range(2):
        lease = s.claim("good", ["povray"], lease_seconds=30)
        assert lease.frame in (0, 1)
        s.complete(job, lease.frame, lease.attempt, OUT, "good", "", owner="good")
    # both frames "bad" failed were rendered by another: now it is the renderer's fault
    assert s.job(job)["blocklisted"] == ["bad"]
    assert s.claim("bad", ["povray"], lease_seconds=30).job == other  # other jobs still come
    assert s.claim("local:me", ["povray"]) is None                   # frame 2 is bad's (running)
    s.retry(job)
    assert s.job(job)["blocklisted"] == []


def test_a_frame_that_fails_everywhere_fails_alone(tmp_path):
    clock = Clock()
    s = Scheduler(db.connect(tmp_path / "b.sqlite3"), "me", max_failures=3, block_after=2, retry_elsewhere=10,
                  clock=clock)
    job = add_job(s, {0: [], 1: [], 2: [], 3: []})
    seen = []
    while True:
        lease = s.claim("B", ["povray"], lease_seconds=30)
        if lease is None:
            if s.job(job)["frames"]["ready"] == 0:
                break
            clock.now += 11  # B may take back what it failed
            continue
        seen.append(lease.frame)
        if lease.frame == 1:
            s.fail(job, 1, lease.attempt, "", "#error in the scene", owner="B")
        else:
            s.complete(job, lease.frame, lease.attempt, OUT, "B", "", owner="B")
    info = s.job(job)
    assert info["state"] == "failed" and info["frames"]["done"] == 3 and info["frames"]["failed"] == 1
    assert info["blocklisted"] == []
    assert seen.count(1) == 3


def _vm_steps(s: Scheduler, fn) -> int:
    """SQLite virtual-machine steps that `fn` costs: a measure of work that does not depend
    on the machine's speed."""
    count = [0]

    def tick():
        count[0] += 1
        return 0

    s.conn.set_progress_handler(tick, 100)
    try:
        fn()
    finally:
        s.conn.set_progress_handler(None, 100)
    return count[0]


def _claim_complete_cost(tmp_path, n: int) -> float:
    """VM steps per claim + complete in a job of n frames plus one frame depending on all."""
    s = Scheduler(db.connect(tmp_path / f"scale{n}.sqlite3"), "me")
    job = s.begin_job()
    frames = [FrameSpec(i) for i in range(n)] + [FrameSpec(n, [DistrenURL("me", job, i) for i in range(n)])]
    s.activate_job(job, JobSpec("j", "povray", {}, frames), SEED)
    for _ in range(20):  # warm up
        lease = s.claim("local:me", ["povray"], 60)
        s.complete(job, lease.frame, lease.attempt, OUT, "me", "")

    def hundred():
        for _ in range(100):
            lease = s.claim("local:me", ["povray"], 60)
            s.complete(job, lease.frame, lease.attempt, OUT, "me", "")

    return _vm_steps(s, hundred) / 100


def test_per_frame_scheduling_work_does_not_grow_with_the_job(tmp_path):
    small, large = _claim_complete_cost(tmp_path, 500), _claim_complete_cost(tmp_path, 20_000)
    # the old scheduler read every frame id per claim and every dependency of the fan-in
    # frame per completion: 40x the frames cost it about 40x the work
    assert large < small * 1.5, (small, large)


def test_fan_in_frame_becomes_ready_when_its_last_dependency_is_done(tmp_path):
    s = Scheduler(db.connect(tmp_path / "f.sqlite3"), "me")
    job = s.begin_job()
    frames = [FrameSpec(i) for i in range(50)] + [FrameSpec(99, [DistrenURL("me", job, i) for i in range(50)])]
    s.activate_job(job, JobSpec("j", "povray", {}, frames), SEED)
    for _ in range(50):
        assert s.frame(job, 99)["state"] == "waiting"
        lease = s.claim("local:me", ["povray"], 60)
        assert lease.frame != 99
        s.complete(job, lease.frame, lease.attempt, OUT, "me", "")
    assert s.frame(job, 99)["state"] == "ready"
    assert len(s.claim("local:me", ["povray"], 60).depends) == 50


def test_local_leases_expire_and_leases_of_an_earlier_name_are_recovered(tmp_path):
    clock = Clock()
    s = Scheduler(db.connect(tmp_path / "l.sqlite3"), "me", clock=clock)
    job = add_job(s, {0: [], 1: []})
    s.claim("local:me", ["povray"], 10)
    clock.now += 11
    assert s.expire_leases() == 1  # a slot that died cannot hold its frame for ever
    s.claim("local:oldname", ["povray"], 10)  # the same data folder under an earlier name
    assert s.recover("local:me") == 1
    assert states(s, job) == {0: "ready", 1: "ready"}


def test_frame_list_pages(sched):
    job = add_job(sched, {i: [] for i in range(0, 50, 2)})
    first = sched.frames(job, limit=10)
    assert [f["frame"] for f in first] == list(range(0, 20, 2))
    nxt = sched.frames(job, after=first[-1]["frame"], limit=10)
    assert [f["frame"] for f in nxt] == list(range(20, 40, 2))
    assert len(sched.frames(job, state="ready")) == 25 and sched.frames(job, state="done") == []


def test_counters_follow_every_transition(sched):
    job = add_job(sched, {0: [], 1: [0], 2: []})
    lease = sched.claim("local:me", ["povray"], 60)
    sched.complete(job, lease.frame, lease.attempt, OUT, "me", "")
    lease = sched.claim("local:me", ["povray"], 60)
    sched.fail(job, lease.frame, lease.attempt, "", "x")
    sched.cancel(job)
    sched.retry(job)
    real = dict(sched.conn.execute("SELECT state, COUNT(*) FROM frames WHERE job_id=? GROUP BY state", (job,)).fetchall())
    assert {k: v for k, v in sched.job(job)["frames"].items() if v} == real


def test_cancel_does_not_fail_frames_that_wait_for_its_done_frames(sched):
    first = add_job(sched, {0: [], 1: []})
    lease = sched.claim("local:me", ["povray"], 60)
    sched.complete(first, lease.frame, lease.attempt, OUT, "me", "")
    other = add_job(sched, {0: [DistrenURL("me", first, 0), DistrenURL("peer", 9, 9)]})
    sched.cancel(first)
    assert states(sched, other) == {0: "waiting"}


def test_a_cancel_or_retry_a_stop_interrupted_is_finished_at_start_up(tmp_path, monkeypatch):
    """Cancel and retry run in transactions of CHUNK frames; a server killed between two of
    them finishes the operation when it starts again (the job row records it as pending)."""
    import distren.scheduler as scheduler_module

    monkeypatch.setattr(scheduler_module, "CHUNK", 10)
    path = tmp_path / "db.sqlite3"
    s = Scheduler(db.connect(path), "me", max_failures=1, clock=Clock())
    first = add_job(s, {0: []})
    later = add_job(s, {0: [DistrenURL("me", first, 0)]})
    cancelled = add_job(s, {f: [] for f in range(25)})
    retried = add_job(s, {0: [], **{f: [0] for f in range(1, 25)}})
    lease = s.claim("local:me", ["povray"])
    assert (lease.job, lease.frame) == (first, 0)
    lease = s.claim("local:me", ["povray"])
    while lease.job != retried:
        s.complete(lease.job, lease.frame, lease.attempt, OUT, "me", "")
        lease = s.claim("local:me", ["povray"])
    s.fail(retried, 0, lease.attempt, "", "boom")
    assert s.job(retried)["frames"]["failed"] == 25
    s.cancel_steps(first).__next__()       # the stop comes after the first transaction
    assert s.job(cancelled)["state"] == "done"
    steps = s.retry_steps(retried)
    next(steps)
    next(steps)                            # frames 0-9 requeued, then the stop
    s.conn.close()

    s = Scheduler(db.connect(path), "me", max_failures=1, clock=Clock())
    s.discard_intake()
    s.recover("local:me")
    assert sorted(scheduler_module.drain(s.resume_steps())) == [first, retried]
    assert s.job(first)["state"] == "cancelled" and states(s, first) == {0: "cancelled"}
    assert s.job(later)["state"] == "failed"      # its dependency was cancelled
    assert set(states(s, retried).values()) == {"ready", "waiting"}
    lease = s.claim("local:me", ["povray"])
    s.complete(retried, lease.frame, lease.attempt, OUT, "me", "")
    while (lease := s.claim("local:me", ["povray"])) is not None:
        s.complete(lease.job, lease.frame, lease.attempt, OUT, "me", "")
    assert s.job(retried)["state"] == "done"
    assert list(s.resume_steps()) == [] and s.conn.execute(
        "SELECT COUNT(*) FROM jobs WHERE pending IS NOT NULL").fetchone()[0] == 0


# -- dependency cycles across servers: the frontier of a frame --------------------------------

def test_frontier_walks_unfinished_frames_here_to_other_servers(sched):
    """The frames of other servers a frame waits for, through this server's unfinished frames:
    not through done frames, not to dependencies known done; each URL once (a diamond)."""
    other = add_job(sched, {0: [], 1: [DistrenURL("B", 7, 1)]})
    job = add_job(sched, {
        0: [1, 2],                                       # a diamond: 1 and 2 both reach 3
        1: [3, DistrenURL("B", 7, 0)],
        2: [3, DistrenURL("me", other, 0)],              # other/0 is ready: nothing behind it
        3: [DistrenURL("C", 1, 0), DistrenURL("B", 7, 0), DistrenURL("me", other, 1)],
        4: [DistrenURL("D", 1, 0)],                      # not reached from 0
        5: [DistrenURL("E", 1, 0)],
    })
    urls, complete = sched.frontier(job, 0)
    assert complete
    assert sorted(map(str, urls)) == ["distren://B/7/0", "distren://B/7/1", "distren://C/1/0"]
    # a dependency known done is not followed; a finished frame waits for nothing
    sched.set_remote_dep("C", 1, 0, "done", OUT)
    assert sorted(map(str, sched.frontier(job, 3)[0])) == ["distren://B/7/0", "distren://B/7/1"]
    assert sched.frontier(other, 0) == ([], True)
    sched.set_remote_dep("E", 1, 0, "failed", error="no")
    assert states(sched, job)[5] == "failed"
    assert sched.frontier(job, 5) == ([], True)
    with pytest.raises(NotFound):
        sched.frontier(job, 99)
    with pytest.raises(NotFound):
        sched.frontier(job + 1, 0)


def test_frontier_truncates_and_says_so(sched):
    """A chain of 10 frames here, each with a dependency on a peer: the walk visits at most
    `limit` frames (the nearest first) and collects at most `limit` URLs, and says it stopped short."""
    job = add_job(sched, {f: ([f + 1] if f < 9 else []) + [DistrenURL("B", 1, f)] for f in range(10)})
    urls, complete = sched.frontier(job, 0)
    assert complete and len(urls) == 10
    urls, complete = sched.frontier(job, 0, limit=3)
    assert not complete
    assert [str(u) for u in urls] == ["distren://B/1/0", "distren://B/1/1", "distren://B/1/2"]
    # exactly at the limit: complete
    urls, complete = sched.frontier(job, 7, limit=3)
    assert complete and sorted(str(u) for u in urls) == ["distren://B/1/7", "distren://B/1/8", "distren://B/1/9"]
    # one frame with more dependencies on peers than the limit
    wide = add_job(sched, {0: [DistrenURL("B", 2, f) for f in range(5)]})
    urls, complete = sched.frontier(wide, 0, limit=4)
    assert not complete and len(urls) == 4


def test_frontier_reads_a_snapshot_beside_a_writer(sched):
    """frontier reads on a connection of its own: it works while the scheduler's connection
    holds a write transaction (WAL), so a thread may run it beside the event loop."""
    job = add_job(sched, {0: [DistrenURL("B", 1, 0)]})
    sched.conn.execute("BEGIN IMMEDIATE")
    try:
        sched.conn.execute("UPDATE frames SET state='failed' WHERE job_id=?", (job,))
        assert sched.frontier(job, 0) == ([DistrenURL("B", 1, 0)], True)
    finally:
        sched.conn.execute("ROLLBACK")


def test_claim_more_leases_the_consecutive_ready_frames_after_the_first(sched):
    """A chunk: the frames right after the first, consecutive, ready, of its backend, never
    failed; each with its own attempt and lease. It stops at a gap, a frame that waits, a frame
    that failed before, another backend."""
    job = sched.begin_job()
    frames = [FrameSpec(f) for f in (0, 1, 2, 3, 5, 6, 7, 8, 9)] + [FrameSpec(4, backend="ffmpeg")]
    frames += [FrameSpec(10), FrameSpec(11, [DistrenURL("me", job, 0)]), FrameSpec(12)]
    sched.activate_job(job, JobSpec("j", "povray", {}, frames, extra_backends={"ffmpeg": {}}), SEED)
    first = sched.claim("local:me", ["povray"], 60)
    assert first.frame == 0
    more = sched.claim_more(first, 10)
    assert [m.frame for m in more] == [1, 2, 3]            # 4 is another backend's
    assert all(m.attempt == 1 and m.owner == "local:me" and m.expires == first.expires for m in more)
    assert {f["frame"]: f["state"] for f in sched.frames(job)}[3] == "running"
    # frame 6 fails once (back to ready): a chunk from 5 stops before it, and 6 renders alone
    five = sched.claim("local:me", ["povray"], 60)
    six = sched.claim("local:me", ["povray"], 60)
    assert (five.frame, six.frame) == (5, 6)
    sched.fail(job, 6, six.attempt, "", "boom")
    sched.fail(job, 5, five.attempt, "", "interrupted", counts=False)
    five = sched.claim("local:me", ["povray"], 60)
    assert five.frame == 5 and sched.claim_more(five, 5) == []
    six = sched.claim("local:me", ["povray"], 60)
    assert six.frame == 6 and sched.claim_more(six, 5) == []          # it failed before: alone
    seven = sched.claim("local:me", ["povray"], 60)
    assert [m.frame for m in sched.claim_more(seven, 2)] == [8, 9]    # the limit
    ten = sched.claim("local:me", ["povray"], 60)
    assert ten.frame == 10 and sched.claim_more(ten, 5) == []         # 11 waits for frame 0
    # a lease that is no longer current gets nothing
    sched.fail(job, 10, ten.attempt, "", "interrupted", counts=False)
    assert sched.claim_more(ten, 5) == []


def test_complete_many_records_a_chunk_in_one_go_and_skips_a_frame_that_moved_on(sched):
    """A chunk's outputs in one transaction: the frames still current are done (their
    dependents counted down), a frame whose attempt was superseded is left as it is and its
    Conflict returned in its place, a frame of a deleted job gives NotFound; nothing raises."""
    job = add_job(sched, {0: [], 1: [], 2: [], 3: [0, 1, 2]})
    first = sched.claim("local:me", ["povray"], 60)
    chunk = [first] + sched.claim_more(first, 5)
    assert [l.frame for l in chunk] == [0, 1, 2]
    # frame 1 is given back and leased again: the chunk's attempt 1 is no longer current
    sched.fail(job, 1, 1, "", "interrupted", counts=False)
    again = sched.claim("peer", ["povray"], 60)
    assert (again.frame, again.attempt) == (1, 2)
    outcome = sched.complete_many([(l.job, l.frame, l.attempt, OUT, "log") for l in chunk]
                                  + [(job + 99, 0, 1, OUT, "")], "me", owner="local:me")
    assert outcome[0] is None and outcome[2] is None
    assert isinstance(outcome[1], Conflict) and isinstance(outcome[3], NotFound)
    assert states(sched, job) == {0: "done", 1: "running", 2: "done", 3: "waiting"}
    sched.complete(job, 1, 2, OUT, "peer", "", owner="peer")
    assert states(sched, job)[3] == "ready"
    with pytest.raises(Conflict):   # the one-frame form still raises
        sched.complete(job, 1, 2, OUT, "peer", "", owner="peer")


def test_a_frame_always_interrupted_still_ends(sched):
    """Interrupted attempts do not count against a frame, but not for ever: a renderer that is
    stopped from outside every time (exit 143) would lease the frame again endlessly. From
    max_failures x INTERRUPTIONS_PER_FAILURE interruptions on, they count."""
    from distren.scheduler import INTERRUPTIONS_PER_FAILURE

    job = add_job(sched, {0: []})
    cap = sched.max_failures * INTERRUPTIONS_PER_FAILURE
    attempts = 0
    while (lease := sched.claim("local:me", ["povray"], lease_seconds=10)) is not None:
        attempts += 1
        assert attempts <= cap + sched.max_failures, "the frame is leased again without end"
        sched.fail(job, 0, lease.attempt, "", "povray was stopped from outside (SIGTERM)", counts=False)
    frame = sched.frame(job, 0)
    assert frame["state"] == "failed" and "interrupted" in frame["error"], frame
    # the interruptions below the cap did not count
    assert attempts == cap + sched.max_failures - 1


def test_a_retry_while_its_dependency_is_deleted_fails_instead_of_waiting(sched):
    """Found by the stateful test: job 2 (cancelled) waits for job 1, which is deleted (allowed:
    nothing waits for it); job 2 is retried while the delete is under way. Its frame must fail
    ("dependency ... deleted"), not wait for a frame that is about to be gone."""
    first = add_job(sched, {0: []})
    second = add_job(sched, {0: [DistrenURL("me", first, 0)]})
    sched.cancel(second)
    deleting = sched.delete_steps(first)
    next(deleting)                      # hidden, its frames not deleted yet
    sched.retry(second)
    for _ in deleting:
        pass
    info = sched.frame(second, 0)
    assert info["state"] == "failed" and "deleted" in info["error"], info

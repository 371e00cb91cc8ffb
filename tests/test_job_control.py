"""Job control (priority, pause, resume) and draining a server: the scheduler's rules on a real
SQLite file, then real `distren serve` processes driven over HTTP and the CLI."""

from __future__ import annotations


import pytest

from distren.errors import BadRequest, NotFound
from distren.liveness import FarmView, Liveness, RendererView
from distren.scheduler import PAUSED, Lease
from test_scheduler import OUT, add_job, sched  # noqa: F401  (the fixture)


# -- the scheduler -------------------------------------------------------------------------

def test_a_paused_job_leases_nothing_its_running_frame_finishes_and_resume_goes_on(sched):  # noqa: F811
    woken = []
    sched.on_ready = lambda: woken.append(1)
    paused = add_job(sched, {0: [], 1: [], 2: []}, priority=5)
    other = add_job(sched, {0: []})
    first = sched.claim("local:me", ["povray"], 60)
    assert (first.job, first.frame) == (paused, 0)
    sched.pause(paused)
    info = sched.job(paused)
    assert info["paused"] and info["state"] == "paused"
    assert info["waiting_for"].startswith(PAUSED) and "1 running" in info["waiting_for"]
    # neither a local slot nor a peer gets its frames, nor a chunk after the running one
    assert sched.claim_more(first, 5) == []
    assert sched.claim("beta", ["povray"], 60) is not None   # the other job's frame
    assert sched.claim("local:me", ["povray"], 60) is None
    assert sched.ready_backends() == set()
    assert sched.frame(paused, 1)["waiting_for"] == [PAUSED]
    # the frame that was running at the pause finishes and is recorded
    sched.complete(paused, 0, first.attempt, OUT, "me", "")
    assert sched.job(paused)["frames"]["done"] == 1 and sched.job(paused)["state"] == "paused"
    sched.resume(paused)
    assert woken and not sched.job(paused)["paused"] and sched.job(paused)["state"] == "running"
    assert sched.ready_backends() == {"povray"}
    assert sched.claim("local:me", ["povray"], 60).job == paused
    assert sched.job(paused)["frames"]["running"] == 1 and sched.job(other)["frames"]["running"] == 1


def test_a_frame_of_another_job_waits_for_a_paused_jobs_frame_and_says_so(sched):  # noqa: F811
    from distren.url import DistrenURL

    first = add_job(sched, {0: []})
    sched.pause(first)
    second = add_job(sched, {0: [DistrenURL("me", first, 0)]})
    assert sched.frame(second, 0)["waiting_for"] == [f"dependency distren://me/{first}/0 (ready; its job is paused)"]
    assert sched.claim("local:me", ["povray"], 60) is None
    sched.resume(first)
    lease = sched.claim("local:me", ["povray"], 60)
    sched.complete(lease.job, lease.frame, lease.attempt, OUT, "me", "")
    assert sched.frame(second, 0)["state"] == "ready"


def test_priority_changes_the_next_claim_and_bad_values_are_refused(sched):  # noqa: F811
    low = add_job(sched, {0: [], 1: []})
    high = add_job(sched, {0: [], 1: []})
    assert sched.claim("local:me", ["povray"], 60).job == low
    sched.set_priority(high, 1000)
    assert sched.job(high)["priority"] == 1000
    assert [sched.claim("local:me", ["povray"], 60).job for _ in range(2)] == [high, high]
    sched.set_priority(high, -1000)
    for bad in (1001, -1001, True, 1.5, "3", None):
        with pytest.raises(BadRequest, match="priority must be a whole number from -1000 to 1000"):
            sched.set_priority(low, bad)
    for action in (lambda: sched.set_priority(99, 1), lambda: sched.pause(99), lambda: sched.resume(99)):
        with pytest.raises(NotFound):
            action()


def test_liveness_does_not_fail_a_paused_jobs_frames_and_does_after_resume(sched):  # noqa: F811
    job = add_job(sched, {0: [], 1: []})
    sched.conn.execute("INSERT INTO blocklist(job_id, renderer, since) VALUES (?, 'beta', 0)", (job,))
    farm = FarmView((RendererView("beta", frozenset({"povray"})),), frozenset({"beta"}), 1000.0)
    live = Liveness(sched)
    sched.pause(job)
    assert live.check(farm) == 0
    assert sched.job(job)["frames"]["ready"] == 2 and sched.job(job)["waiting_for"].startswith(PAUSED)
    sched.resume(job)
    assert live.check(farm) == 1
    assert sched.job(job)["state"] == "failed"


def test_cancel_retry_and_delete_of_a_paused_job(sched):  # noqa: F811
    job = add_job(sched, {0: [], 1: []})
    lease = sched.claim("local:me", ["povray"], 60)
    sched.pause(job)
    assert sched.cancel(job) == [(job, 0, lease.attempt)]
    assert sched.job(job)["state"] == "cancelled" and sched.job(job)["paused"]
    assert sched.retry(job) == 2
    # requeued, still paused: a person resumes it
    assert sched.job(job)["state"] == "paused" and sched.claim("local:me", ["povray"], 60) is None
    sched.resume(job)
    assert isinstance(sched.claim("local:me", ["povray"], 60), Lease)
    sched.pause(job)
    sched.delete(job)
    with pytest.raises(NotFound):
        sched.job(job)

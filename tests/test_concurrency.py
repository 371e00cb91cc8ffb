"""Adaptive concurrency (`--slots auto`): the policy as pure logic, the limit as an asyncio
gate, and a real server started with it."""

from __future__ import annotations

import asyncio

from conftest import ServerProcess, make_scene, run_cli
from distren.concurrency import BUSY_BELOW, IDLE_ABOVE, Concurrency, cpu_times, next_limit


def test_next_limit_doubles_while_the_cpu_idles_and_steps_down_when_it_is_saturated():
    idle, busy, between = IDLE_ABOVE + 0.2, BUSY_BELOW / 2, (IDLE_ABOVE + BUSY_BELOW) / 2
    assert next_limit(2, 2, idle, 2, 16) == 4
    assert next_limit(8, 8, idle, 2, 16) == 16
    assert next_limit(16, 16, idle, 2, 16) == 16       # never above high
    assert next_limit(2, 2, 0.92, 2, 16) == 8          # mostly idle: as many as would fill it, x4 at most
    assert next_limit(4, 4, 0.99, 2, 64) == 16
    assert next_limit(4, 1, idle, 2, 16) == 4          # idle because there is little work: keep
    assert next_limit(6, 6, busy, 2, 16) == 5
    assert next_limit(2, 2, busy, 2, 16) == 2          # never below low
    assert next_limit(6, 6, between, 2, 16) == 6


def test_cpu_times_grow():
    idle, total = cpu_times()
    assert 0 <= idle <= total and total > 0


def test_the_limit_gates_renders():
    async def main():
        c = Concurrency(2, 8)
        peak, now = 0, 0

        async def render():
            nonlocal peak, now
            await c.acquire()
            now += 1
            peak = max(peak, now)
            await asyncio.sleep(0.01)
            now -= 1
            await c.release()

        await asyncio.gather(*(render() for _ in range(10)))
        assert peak == 2
        c.limit = 5            # what the watcher does
        async with c._changed:
            c._changed.notify_all()
        await asyncio.gather(*(render() for _ in range(10)))
        assert peak == 5 and c.running == 0

    asyncio.run(main())


def test_a_server_with_slots_auto_renders_and_says_so(tmp_path):
    s = ServerProcess(tmp_path / "data", "alpha", "auto").start()
    try:
        info = s.client().server_info()
        assert info["renders"]["auto"] is True and 1 <= info["renders"]["limit"] <= info["slots"]
        ini = make_scene(tmp_path / "scene", final=5)
        r = run_cli("pack", str(ini), "-o", str(tmp_path / "job.tar.gz"))
        assert r.returncode == 0, r.stderr
        c = s.client()
        job = c.submit(tmp_path / "job.tar.gz")
        assert c.wait(job["url"], interval=0.1, timeout=120)["state"] == "done"
    finally:
        s.stop()
    r = run_cli("serve", "--name", "x", "--data", str(tmp_path / "d2"), "--slots", "many", timeout=60)
    assert r.returncode != 0 and "--slots" in r.stderr and "Traceback" not in r.stderr


def test_a_jobs_last_renders_take_every_core(tmp_path, monkeypatch):
    # Four usable cores, two slots: a render's share is two threads; a render that starts when
    # no ready frame of its job is left takes all four (the job's other renders end first and
    # free their cores). --render-threads, when set, is what every render gets.
    from test_runner_faults import InstantBackend, core_with_job
    from distren.server import config as config_module, runner as runner_module
    from distren.server.runner import Runner

    monkeypatch.setattr(config_module, "usable_cores", lambda: 4)
    monkeypatch.setattr(runner_module, "usable_cores", lambda: 4)
    seen: list[tuple[int, int]] = []
    instant = InstantBackend.render

    async def render(self, task):
        seen.append((task.frame, task.threads))
        await asyncio.sleep(0.2)   # the two slots render side by side
        return await instant(self, task)

    monkeypatch.setattr(InstantBackend, "render", render)

    def run(render_threads: int | None) -> dict[int, int]:
        seen.clear()
        extra = {"render_threads": render_threads} if render_threads else {}
        core, job = core_with_job(tmp_path / str(render_threads), 5, slots=2, **extra)

        async def main():
            runner = Runner(core, 2)
            await runner.start()
            try:
                for _ in range(200):
                    await asyncio.sleep(0.05)
                    if core.scheduler.job(job)["state"] == "done":
                        break
                assert core.scheduler.job(job)["state"] == "done"
            finally:
                await runner.stop()
                core.close()

        asyncio.run(main())
        return dict(seen)

    threads = run(None)
    assert sorted(threads) == [0, 1, 2, 3, 4], threads
    assert threads[4] == 4 and [threads[f] for f in (0, 1, 2)] == [2, 2, 2], threads
    assert set(run(3).values()) == {3}

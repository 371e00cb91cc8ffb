"""The output process (server/outputs.py) writes frames' outputs into the blob store. If it
dies (killed, or crashed by an output), the server goes on: the chunk at hand is stored in a
thread and a new output process is started. Real server, real POV-Ray renders."""

from __future__ import annotations

import os
import signal

from conftest import make_scene, run_cli, wait_for


def children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def output_processes(pid: int) -> list[int]:
    """The server's worker processes (multiprocessing's spawned children) at nice 0: the
    intake worker runs at nice 5."""
    out = []
    for child in children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" not in f.read():
                    continue
            with open(f"/proc/{child}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        if int(fields[16]) == 0:   # nice
            out.append(child)
    return out


def test_a_killed_output_process_is_replaced_and_no_output_is_lost(server_factory, tmp_path):
    s = server_factory("alpha", slots=2)
    c = s.client()
    pkg = tmp_path / "p.tar.gz"
    assert run_cli("pack", str(make_scene(tmp_path / "scene", final=3)), "-o", str(pkg)).returncode == 0
    first, = wait_for(lambda: output_processes(s.proc.pid), what="the output process")
    job = c.wait(c.submit(pkg)["url"], interval=0.1, timeout=120)
    assert job["state"] == "done" and job["frames"]["done"] == 4
    os.kill(first, signal.SIGKILL)
    job = c.wait(c.submit(pkg)["url"], interval=0.1, timeout=120)
    assert job["state"] == "done" and job["frames"]["done"] == 4, job
    second, = wait_for(lambda: output_processes(s.proc.pid), what="a new output process")
    assert second != first
    assert "the output process ended unexpectedly" in s.log.read_text()
    for frame in c.frames(job["url"]):
        out = tmp_path / f"f{frame['frame']}.tar"
        c.download(f"{job['url']}/{frame['frame']}", out)
        assert out.stat().st_size > 0
    job = c.wait(c.submit(pkg)["url"], interval=0.1, timeout=120)   # the new one serves
    assert job["state"] == "done"
    assert output_processes(s.proc.pid) == [second]

"""`distren submit --wait` and `distren status` outlast a server restart: while the server
cannot be reached they ask again, with growing waits, for up to --retry-seconds; then one line
and exit code 4."""

from __future__ import annotations

import subprocess
import time

import httpx

from conftest import DISTREN, ServerProcess, free_port, make_scene, run_cli


def test_submit_wait_outlasts_a_restart_of_the_server(tmp_path, server_factory):
    server = server_factory("alpha", slots=1)
    ini = make_scene(tmp_path / "scene", final=5)
    assert run_cli("pack", str(ini), "--chunk", "1", "-o", str(tmp_path / "job.tar.gz")).returncode == 0
    submit = subprocess.Popen(DISTREN + ["submit", str(tmp_path / "job.tar.gz"), "--wait", "--server", server.url,
                                         "--retry-seconds", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 60
        while True:   # the first frame done: the job is under way
            try:
                if httpx.get(server.url + "/api/v1/jobs/1", timeout=5).json()["frames"]["done"] >= 1:
                    break
            except (httpx.HTTPError, KeyError):
                pass
            assert time.monotonic() < deadline and submit.poll() is None
            time.sleep(0.1)
        server.stop()
        time.sleep(2)   # submit meets a closed port, again and again
        assert submit.poll() is None
        server.start()   # same port, same data folder
        out, err = submit.communicate(timeout=120)
    finally:
        if submit.poll() is None:
            submit.kill()
            submit.wait()
    assert submit.returncode == 0, err
    assert out.splitlines()[0] == "distren://alpha/1"
    assert "cannot reach the server at" in err and "asking again for up to 60 s" in err, err
    assert "the server answers again" in err and "Traceback" not in err
    assert server.client().job("distren://alpha/1")["frames"]["done"] == 6


def test_status_waits_for_a_server_that_comes_up(tmp_path):
    server = ServerProcess(tmp_path / "data", "alpha", 0)   # its port chosen, not started yet
    status = subprocess.Popen(DISTREN + ["status", "distren://alpha", "--server", server.url, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert status.poll() is None
        server.start()
        out, err = status.communicate(timeout=60)
    finally:
        if status.poll() is None:
            status.kill()
            status.wait()
        server.stop()
    assert status.returncode == 0 and '"name": "alpha"' in out, err


def test_status_gives_up_after_retry_seconds_with_one_line_and_exit_4():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    r = run_cli("status", "distren://alpha", "--server", url, "--retry-seconds", "1.5", timeout=60)
    took = time.monotonic() - started
    assert r.returncode == 4 and 1.5 <= took < 15, (r, took)
    first, last = r.stderr.splitlines()
    assert first.startswith(f"distren: cannot reach the server at {url}: ") and "asking again for up to 1.5 s" in first
    assert last.startswith(f"distren: cannot reach the server at {url}: ") and last.endswith("(tried for 1.5 s)")
    r = run_cli("status", "distren://alpha", "--server", url, "--retry-seconds", "0", timeout=60)
    assert r.returncode == 4 and len(r.stderr.splitlines()) == 1, r


def test_a_server_address_without_scheme_is_not_retried():
    """A mistake in --server is not an outage: one line at once, not 300 s of asking again
    (run_cli's timeout would expire)."""
    r = run_cli("status", "distren://alpha/1", "--server", "127.0.0.1:1", timeout=60)
    assert r.returncode == 4 and "http://" in r.stderr and "asking again" not in r.stderr, r

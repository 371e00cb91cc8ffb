"""kill -9 of the home server at five points of a running job; after a restart on the same
data folder the job completes and its bundle holds the same frames with the same images as an
undisturbed run. Nothing half-written is visible, no job id is handed out twice, and no
renderer outlives the server."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import ServerProcess, bundle_images as images, make_scene, renders_of, run_cli
from distren.errors import DistrenError


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pkg")
    ini = make_scene(tmp / "scene", final=5)
    pkg = tmp / "job.tar.gz"
    assert run_cli("pack", str(ini), "-o", str(pkg)).returncode == 0
    return pkg


@pytest.fixture(scope="module")
def reference(package, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ref")
    s = ServerProcess(tmp / "data", "alpha", 2).start()
    try:
        c = s.client()
        job = c.submit(package)
        assert c.wait(job["url"], interval=0.1, timeout=120)["state"] == "done"
        c.download(job["url"], tmp / "ref.tar")
    finally:
        s.stop()
    return images(tmp / "ref.tar")


def killed(s: ServerProcess, timeout: float = 60) -> None:
    """Wait for the server to die by its failpoint (SIGKILL)."""
    assert s.proc.wait(timeout=timeout) == -signal.SIGKILL
    s._logf.close()


def restart_and_finish(tmp_path: Path, data: Path, url: str | None, package: Path) -> tuple[ServerProcess, dict]:
    stale = {p for d in ("tmp", "work", "blobs/tmp") for p in (data / d).iterdir()}
    s = ServerProcess(data, "alpha", 2).start()
    # what the crash left half-done is gone (new renders may already have begun)
    assert not stale & {p for d in ("tmp", "work", "blobs/tmp") for p in (data / d).iterdir()}
    c = s.client()
    if url is None:  # the client never got its 201: it submits again
        url = c.submit(package)["url"]
    info = c.wait(url, interval=0.1, timeout=120)
    return s, info


@pytest.mark.parametrize("point", ["intake", "render", "output", "bundle", "done"])
def test_kill9_then_restart(point, package, reference, tmp_path):
    data = tmp_path / "data"
    env = {} if point == "render" else {"DISTREN_FAILPOINT": point}
    s = ServerProcess(data, "alpha", 2, env=env).start()
    c = s.client()
    url = None
    if point == "intake":
        with pytest.raises(DistrenError):
            c.submit(package)
        killed(s)
    else:
        url = c.submit(package)["url"]
        if point == "render":
            deadline = time.monotonic() + 60
            while c.job(url)["frames"]["running"] == 0:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            os.killpg(s.proc.pid, signal.SIGKILL)
            killed(s)
        elif point == "bundle":
            assert c.wait(url, interval=0.1, timeout=120)["state"] == "done"
            with pytest.raises(DistrenError):
                c.download(url, tmp_path / "half.tar")
            killed(s)
            assert not (tmp_path / "half.tar").exists()
        else:
            killed(s)
    deadline = time.monotonic() + 10
    while renders_of(data):  # the sandboxes die with their server
        assert time.monotonic() < deadline, renders_of(data)
        time.sleep(0.1)
    s, info = restart_and_finish(tmp_path, data, url, package)
    try:
        assert info["state"] == "done", info
        c = s.client()
        c.download(info["url"], tmp_path / "after.tar")
        assert images(tmp_path / "after.tar") == reference
        ids = [j["id"] for j in c.jobs()]
        assert ids == [info["id"]]
        assert c.submit(package)["id"] > info["id"] >= (2 if point == "intake" else 1)
    finally:
        s.stop()


def test_kill9_in_the_middle_of_a_cancel_and_of_a_retry(package, reference, tmp_path):
    """Cancel and retry run in several transactions; a kill -9 between them leaves the job
    half-done on disk. The restarted server finishes the operation: the cancelled job has no
    frame left to start (it ends), the retried job renders."""
    data = tmp_path / "data"
    crash = {"DISTREN_FAILPOINT": "operation"}
    s = ServerProcess(data, "alpha", 0, env=crash).start()   # no slots: the frames stay ready
    url = s.client().submit(package)["url"]
    with pytest.raises(DistrenError):
        s.client().cancel(url)
    killed(s)
    s = ServerProcess(data, "alpha", 0, env=crash).start()
    try:
        job = s.client().job(url)
        assert job["state"] == "cancelled" and job["frames"]["cancelled"] == job["total_frames"], job
        with pytest.raises(DistrenError):
            s.client().retry(url)
        killed(s)
    finally:
        s.stop()
    s = ServerProcess(data, "alpha", 2).start()
    try:
        c = s.client()
        assert c.wait(url, interval=0.1, timeout=120)["state"] == "done"
        c.download(url, tmp_path / "after.tar")
        assert images(tmp_path / "after.tar") == reference
    finally:
        s.stop()

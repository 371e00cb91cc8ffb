"""The Slurm executor against a real one-node Slurm cluster (scripts/slurm-cluster.sh: munged,
slurmctld and slurmd started here and stopped after, by their pid files): worker jobs render a
whole job, a cancelled worker job's frames are leased again, the jobs end when idle, and bad
settings stop the server at start-up. `scripts/setup.sh --test` installs slurm-wlm and munge."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, ServerProcess, bundle_images, make_scene, pixels, povray_direct, run_cli, wait_for

# with pytest-xdist, the whole module in one worker: one cluster for all its tests
pytestmark = pytest.mark.xdist_group("slurm")

SECRET = "a federation secret of enough length"
CLUSTER = ROOT / "scripts" / "slurm-cluster.sh"
FAST = ["--lease-seconds", "3", "--heartbeat-seconds", "0.5", "--claim-backoff-max", "0.3",
        "--slurm-poll-seconds", "0.5", "--slurm-idle-exit", "3"]


@pytest.fixture(scope="module")
def slurm():
    """A one-node Slurm cluster for this module; yields the environment its clients need."""
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.fail("slurm-wlm and munge are not installed: run scripts/setup.sh --test")
    folder = Path(tempfile.mkdtemp(prefix="distren-slurm-"))
    r = subprocess.run([str(CLUSTER), "start", str(folder)], capture_output=True, text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        yield {"SLURM_CONF": str(folder / "slurm.conf")}
    finally:
        subprocess.run([str(CLUSTER), "stop", str(folder)], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def squeue(env: dict, server: str = "alpha") -> list[str]:
    out = subprocess.run(["squeue", "--noheader", f"--name=distren-{server}", "--format=%i %T"], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return out.split("\n")[:-1]


def home(tmp_path: Path, env: dict, extra: list[str]) -> ServerProcess:
    (tmp_path / "secret").write_text(SECRET + "\n")
    logs = tmp_path / "workers"
    logs.mkdir(exist_ok=True)
    return ServerProcess(tmp_path / "data", "alpha", 0, [
        "--federation-secret-file", str(tmp_path / "secret"), "--slurm", *FAST,
        f"--slurm-option=--output={logs}/worker-%j.log", *extra], env=env).start()


def package(tmp_path: Path, final: int, *options: str) -> tuple[Path, Path]:
    ini = make_scene(tmp_path / "scene", final=final)
    pkg = tmp_path / "scene.tar.gz"
    r = run_cli("pack", str(ini), "-o", str(pkg), *options)
    assert r.returncode == 0, r.stderr
    return ini.parent, pkg


def test_slurm_worker_jobs_render_a_job_and_go_away_when_idle(slurm, tmp_path):
    s = home(tmp_path, slurm, ["--slurm-max-jobs", "3", "--slurm-worker-slots", "2"])
    try:
        scene, pkg = package(tmp_path, 11)
        r = run_cli("submit", str(pkg), "--server", s.url)
        assert r.returncode == 0, r.stderr
        # the worker jobs and their Slurm states, in GET /server and distren status
        info = wait_for(lambda: (i := httpx.get(s.url + "/api/v1/server").json())["slurm"]["jobs"] and i,
                        60, "worker jobs", every=0.2)
        assert 1 <= len(info["slurm"]["jobs"]) <= 3
        assert all(j["state"] in ("PENDING", "CONFIGURING", "RUNNING") for j in info["slurm"]["jobs"])
        status = run_cli("status", "distren://alpha", "--server", s.url)
        assert "slurm job" in status.stdout and "worker:slurm-" in status.stdout, status.stdout
        job = s.client().wait("distren://alpha/1", timeout=120)
        assert job["state"] == "done", job
        frames = httpx.get(f"{s.url}/api/v1/jobs/1/frames").json()
        assert len(frames) == 12
        job_ids = {f["rendered_by"].removeprefix("worker:slurm-") for f in frames}
        assert all(f["rendered_by"].startswith("worker:slurm-") for f in frames), frames
        assert job_ids <= {str(j) for j in range(1, 100000)}
        # every frame as POV-Ray itself renders it
        bundle = tmp_path / "bundle.tar"
        s.client().download("distren://alpha/1", bundle)
        images = bundle_images(bundle)
        with ThreadPoolExecutor(12) as pool:
            direct = list(pool.map(lambda f: pixels(povray_direct(scene, f, tmp_path / f"direct{f}")), range(12)))
        assert len(images) == 12
        for (name, image), want in zip(sorted(images.items(), key=lambda kv: int(kv[0].split("/")[0])), direct):
            assert image == want, name
        # idle workers exit: the allocation shrinks to nothing
        wait_for(lambda: not squeue(slurm), 30, "the worker jobs to end", every=0.2)
        wait_for(lambda: not httpx.get(s.url + "/api/v1/server").json()["slurm"]["jobs"], 10, "the server to see it", every=0.2)
        assert httpx.get(s.url + "/api/v1/server").json()["slurm"]["submitted"] <= 3
    finally:
        s.stop()


def test_a_cancelled_worker_job_loses_no_frame(slurm, tmp_path):
    s = home(tmp_path, slurm, ["--slurm-max-jobs", "2"])
    try:
        _, pkg = package(tmp_path, 3, "--width", "800", "--height", "600", "--antialias", "0.01")
        assert run_cli("submit", str(pkg), "--server", s.url).returncode == 0

        def running():
            for f in httpx.get(f"{s.url}/api/v1/jobs/1/frames", params={"state": "running"}).json():
                history = httpx.get(f"{s.url}/api/v1/jobs/1/frames/{f['frame']}").json()["history"]
                if history and history[-1]["renderer"].startswith("worker:slurm-"):
                    return f["frame"], history[-1]["renderer"]
            return None

        frame, worker = wait_for(running, 60, "a frame rendering in a worker job", every=0.2)
        job_id = worker.removeprefix("worker:slurm-")
        subprocess.run(["scancel", job_id], env={**os.environ, **slurm}, check=True, timeout=30)
        job = s.client().wait("distren://alpha/1", timeout=120)
        assert job["state"] == "done", job
        info = httpx.get(f"{s.url}/api/v1/jobs/1/frames/{frame}").json()
        assert info["rendered_by"] != worker and info["rendered_by"].startswith("worker:slurm-")
        lost = [h for h in info["history"] if h["renderer"] == worker]
        assert lost and lost[0]["outcome"] in ("interrupted", "expired"), info["history"]
        assert job_id not in " ".join(squeue(slurm))
    finally:
        s.stop()


def test_server_stop_cancels_its_worker_jobs(slurm, tmp_path):
    # workers that would idle for a minute: only scancel ends them soon
    s = home(tmp_path, slurm, ["--slurm-max-jobs", "2", "--slurm-idle-exit", "60"])
    try:
        _, pkg = package(tmp_path, 5, "--width", "800", "--height", "600", "--antialias", "0.01")
        assert run_cli("submit", str(pkg), "--server", s.url).returncode == 0
        wait_for(lambda: any(line.endswith("RUNNING") for line in squeue(slurm)), 60, "a running worker job", every=0.2)
    finally:
        s.stop()
    wait_for(lambda: not squeue(slurm), 10, "scancel of the worker jobs", every=0.2)


def test_bad_slurm_settings_stop_the_server_at_start_up(slurm, tmp_path):
    (tmp_path / "secret").write_text(SECRET)
    base = ["serve", "--name", "alpha", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:9", "--slots", "0"]
    secret = ["--federation-secret-file", str(tmp_path / "secret")]
    no_path = tmp_path / "empty"
    no_path.mkdir()
    cases = [
        (secret + ["--slurm", "--slurm-partition", "nopart"], slurm, "invalid partition specified: nopart"),
        (secret + ["--slurm", "--slurm-time", "soon"], slurm, "sbatch refuses the worker jobs' settings"),
        (secret + ["--slurm"], {**slurm, "PATH": str(no_path)}, "sbatch not found on PATH"),
        (["--slurm"], slurm, "--slurm needs --federation-secret-file"),
    ]
    for extra, env, text in cases:
        r = run_cli(*base, *extra, env=env, timeout=60)
        assert r.returncode == 2, (extra, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and lines[0].startswith("distren: error:"), r.stderr

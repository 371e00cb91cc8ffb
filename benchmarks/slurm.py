#!/usr/bin/env python3
"""Slurm benchmark: a 12-frame job rendered by Slurm worker jobs on a one-node cluster started
here (scripts/slurm-cluster.sh, needs root, slurm-wlm and munge), against the same job with
`distren render` on the same machine.

Cases (frames 1-12 of distren's bundled orbit sample, copied to a temporary folder):

  small   160x120, the sample's own settings: bound by POV-Ray's start-up, not by CPU
  cpu     1280x960, antialiasing threshold 0.3: bound by CPU

Slurm: `distren serve --slots 0 --slurm` (the home renders nothing) with --max-jobs worker jobs
of --worker-slots renders each; timed from `distren submit` to the job's end (`submit --wait`),
the server already running (its start-up is printed apart); then the time until squeue is
empty again (the workers' --idle-exit). `distren render`: the whole command, start-up
included. Both check that 12 frames came out. The last line is machine-readable:
`small_slurm=S small_render=R cpu_slurm=S cpu_render=R` (seconds).

Run: .venv/bin/python benchmarks/slurm.py [--cases small,cpu] [--max-jobs 4] [--worker-slots 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path


import distren
from _common import distren_cmd, free_port, sigterm, stop_group, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(distren.__file__).parent / "samples" / "orbit"
CASES = {"small": [], "cpu": ["--width", "1280", "--height", "960", "--antialias", "0.3"]}


def squeue(env: dict) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--name=distren-bench", "--format=%i"], env=env,
                         capture_output=True, text=True, timeout=30).stdout
    return out.split()


def run_case(name: str, tmp: Path, env: dict, url: str) -> tuple[float, float, float]:
    options = ["--frames", "1-12", *CASES[name]]
    scene = tmp / name
    shutil.copytree(SAMPLE, scene)
    pkg = tmp / f"{name}.tar.gz"
    subprocess.run(distren_cmd() + ["pack", str(scene / "orbit.ini"), "-o", str(pkg), *options], check=True,
                   capture_output=True)
    t0 = time.perf_counter()
    r = subprocess.run(distren_cmd() + ["submit", str(pkg), "--wait", "--server", url], env=env,
                       capture_output=True, text=True)
    slurm = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"ERROR: submit --wait failed: {r.stderr.strip()[-500:]}")
    job = r.stdout.strip().splitlines()[0].rsplit("/", 1)[1]
    bundle = tmp / f"{name}.tar"
    subprocess.run(distren_cmd() + ["download", f"distren://bench/{job}", "-o", str(bundle), "--server", url],
                   check=True, capture_output=True)
    with tarfile.open(bundle) as t:
        slurm_frames = sum(1 for m in t.getmembers() if m.name.endswith(".png"))
    t1 = time.perf_counter()
    while squeue(env) and time.perf_counter() - t1 < 300:
        time.sleep(0.2)
    shrink = time.perf_counter() - t1
    out = tmp / f"{name}-render"
    t0 = time.perf_counter()
    subprocess.run(distren_cmd() + ["render", str(scene / "orbit.ini"), "-o", str(out), *options], check=True,
                   capture_output=True)
    render = time.perf_counter() - t0
    render_frames = len(list(out.glob("*.png")))
    if slurm_frames != 12 or render_frames != 12:
        raise SystemExit(f"ERROR: {name}: {slurm_frames} frames from Slurm, {render_frames} from distren render")
    return slurm, shrink, render


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="small,cpu")
    ap.add_argument("--max-jobs", type=int, default=4)
    ap.add_argument("--worker-slots", type=int, default=2)
    ap.add_argument("--idle-exit", type=float, default=5.0)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, sigterm)
    tmp = Path(tempfile.mkdtemp(prefix="distren-bench-slurm-"))
    os.chmod(tmp, 0o755)   # munged must reach the cluster's folder
    cluster = tmp / "cluster"
    server = None
    results: dict[str, float] = {}
    try:
        subprocess.run([str(ROOT / "scripts" / "slurm-cluster.sh"), "start", str(cluster)], check=True,
                       capture_output=True)
        env = {**os.environ, "SLURM_CONF": str(cluster / "slurm.conf")}
        (tmp / "secret").write_text("a federation secret for the benchmark\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        server = subprocess.Popen(distren_cmd() + [
            "serve", "--name", "bench", "--listen", f"127.0.0.1:{port}", "--data", str(tmp / "data"), "--slots", "0",
            "--federation-secret-file", str(tmp / "secret"), "--slurm", "--slurm-max-jobs", str(args.max_jobs),
            "--slurm-worker-slots", str(args.worker_slots), "--slurm-idle-exit", str(args.idle_exit),
            "--slurm-poll-seconds", "0.5", "--claim-backoff-max", "0.5", f"--slurm-option=--output={tmp}/w-%j.log"],
            env=env, stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # its start-up runs sbatch --test-only (each Slurm command may take 20 s)
            wait_until_up(url, server, "bench", lambda: (tmp / "server.log").read_text()[-500:], timeout=300)
        except RuntimeError as exc:
            raise SystemExit(f"ERROR: {exc}") from None
        print(f"server start-up (sbatch --test-only included): {time.perf_counter() - t0:.2f} s")
        print(f"{args.max_jobs} worker jobs at most, {args.worker_slots} renders each, idle exit {args.idle_exit:g} s")
        for name in args.cases.split(","):
            slurm, shrink, render = run_case(name, tmp, env, url)
            results[f"{name}_slurm"], results[f"{name}_render"] = slurm, render
            print(f"{name:<6} slurm {slurm:6.2f} s (squeue empty {shrink:.1f} s later)   distren render {render:6.2f} s"
                  f"   ratio {slurm / render:.2f}")
    finally:
        stop_group(server)
        subprocess.run([str(ROOT / "scripts" / "slurm-cluster.sh"), "stop", str(cluster)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(" ".join(f"{k}={v:.2f}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

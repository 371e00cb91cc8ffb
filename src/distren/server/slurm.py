"""The Slurm executor (`distren serve --slurm`, docs/slurm.md): while ready frames wait and no
slot of this server is free, it submits worker jobs with `sbatch`, as many as the waiting frames
can use, up to `slurm_max_jobs`. Each job runs `distren worker` (worker.py) against this server
and ends when idle, so the allocation shrinks by itself. `squeue` is asked every
`slurm_poll_seconds` while there are jobs or work (never otherwise); the jobs and their Slurm
states are in `GET /api/v1/server` under `slurm`. On server stop every worker job is cancelled
(`scancel`). A job that Slurm kills loses no frame: its leases expire and are leased again.

The commands run as the server's user with its environment (`SLURM_CONF`, `PATH`).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import math
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from ..errors import DistrenError
from ..federation.auth import WORKER_PREFIX, load_secret
from ..liveness import RendererView

log = logging.getLogger("distren.slurm")
# seconds sbatch, squeue and scancel may take (sbatch retries for a minute when slurmctld is
# unreachable: the start-up check reports that instead of hanging)
COMMAND_TIMEOUT = 20.0
# Slurm states of a job that is not running yet (it will take frames when it starts)
WAITING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "RESIZING"}
# worker jobs in a row that ended without taking a frame before submissions are held
FRUITLESS_LIMIT = 3
HOLD_MAX = 600.0


def job_name(server: str) -> str:
    return f"distren-{server}"


def worker_name(job_id: str) -> str:
    """The worker's name in a job: `slurm-<jobid>` (frames show `worker:slurm-<jobid>`)."""
    return f"slurm-{job_id}"


def sbatch_args(config, test_only: bool = False) -> list[str]:
    """sbatch's command line for a worker job (the script comes on stdin); the user's
    `slurm_option` come last, so they win."""
    args = ["sbatch", "--parsable", f"--job-name={job_name(config.name)}",
            f"--cpus-per-task={config.slurm_worker_slots}", "--chdir=/tmp",
            "--output=/tmp/distren-worker-%j.log"]
    for flag, value in (("--partition", config.slurm_partition), ("--account", config.slurm_account),
                        ("--time", config.slurm_time)):
        if value:
            args.append(f"{flag}={value}")
    args += list(config.slurm_option)
    if test_only:
        args.append("--test-only")
    return args


def worker_script(config, home_url: str, secret: bytes) -> str:
    """The batch script: `distren worker` against this server, named after the job. The secret
    comes in a here-document on the worker's stdin (never on a command line or in the job's
    environment), unless the nodes read it from `slurm_secret_file` (a shared file system)."""
    command = config.slurm_worker_command or shlex.join([sys.executable, "-m", "distren.cli"])
    worker = (f"{command} worker --home {shlex.quote(f'{config.name}={home_url}')}"
              f' --name "slurm-$SLURM_JOB_ID" --idle-exit {config.slurm_idle_exit:g}'
              f" --slots {config.slurm_worker_slots} --claim-backoff-max {config.claim_backoff_max:g}")
    if config.ca_file is not None:   # the server's CA for https:// homes, as the nodes see its path
        worker += f" --ca-file {shlex.quote(str(config.ca_file))}"
    head = f"#!/bin/sh\n# a distren worker for server {config.name} (distren serve --slurm)\n"
    if config.slurm_secret_file is not None:
        return head + f"exec {worker} --secret-file {shlex.quote(str(config.slurm_secret_file))}\n"
    mark = "DISTREN_SECRET_" + secrets.token_hex(8)
    return head + f"exec {worker} --secret-file /dev/stdin <<'{mark}'\n{secret.decode()}\n{mark}\n"


def default_url(host: str, port: int, tls: bool = False) -> str:
    """The URL worker jobs use to reach a server listening on host:port (https:// when it
    serves TLS): the host's name when it listens on every address."""
    import socket

    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def check_slurm(config) -> None:
    """Start-up checks of `--slurm`, each a DistrenError with one line: the secret, the
    commands, and the worker jobs' settings as sbatch itself judges them (`--test-only`: a
    partition or account that does not exist, a bad time limit, more CPUs than a node has)."""
    if config.federation_secret_file is None:
        raise DistrenError("--slurm needs --federation-secret-file (worker jobs sign with the farm's secret)")
    secret = load_secret(config.federation_secret_file)
    if config.slurm_secret_file is None:
        try:
            text = secret.decode()
        except UnicodeDecodeError:
            text = "\n"
        if "\n" in text or "\r" in text:
            raise DistrenError("--slurm: the federation secret must be one line of text to go in the batch script "
                               "(or give --slurm-secret-file)")
    for tool in ("sbatch", "squeue", "scancel"):
        if shutil.which(tool) is None:
            raise DistrenError(f"--slurm: {tool} not found on PATH (install Slurm's client commands, "
                               "e.g. apt-get install slurm-client, and set SLURM_CONF)")
    args = sbatch_args(config, test_only=True)
    try:
        done = subprocess.run(args, input="#!/bin/sh\ntrue\n", capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DistrenError(f"--slurm: sbatch did not answer in {COMMAND_TIMEOUT:g} s: is slurmctld running, "
                           "and SLURM_CONF set?") from None
    if done.returncode != 0:
        raise DistrenError(f"--slurm: sbatch refuses the worker jobs' settings: {_first_error(done.stderr)}")


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line.split("error:", 1)[-1].strip()
    return lines[0] if lines else "(no message)"


@dataclass
class SlurmJob:
    id: str
    state: str = "PENDING"
    reason: str = ""
    submitted: float | None = None

    def to_json(self, fed) -> dict:
        worker = fed.workers.get(WORKER_PREFIX + worker_name(self.id))
        return {"id": self.id, "state": self.state, "reason": self.reason, "submitted": self.submitted,
                "worker": WORKER_PREFIX + worker_name(self.id),
                "last_contact": worker.last_contact if worker else None, "leases": worker.leases if worker else 0}


class SlurmExecutor:
    """Grows and shrinks the worker jobs of one server with its queue."""

    def __init__(self, core, runner, fed, config):
        self.core, self.runner, self.fed, self.config = core, runner, fed, config
        self.secret = load_secret(config.federation_secret_file)
        self.home_url = config.slurm_url
        self.jobs: dict[str, SlurmJob] = {}
        self.submitted = 0
        self.last_error: str | None = None
        self.fruitless = 0               # worker jobs in a row that ended without a frame
        self.held_until = 0.0
        self._task: asyncio.Task | None = None
        self._polled = False
        fed.extra_views.append(self.renderer_view)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="slurm-executor")

    async def stop(self) -> None:
        """Stop submitting, and cancel every worker job of this server (`scancel`): a worker
        stopped that way hands its frames back; one that cannot is killed, and its leases expire."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # by name and user, not by the ids known: a job whose sbatch was still running when the
        # stop came (its id never read) is cancelled too
        try:
            await self._run(["scancel", f"--name={job_name(self.core.name)}", f"--user={getpass.getuser()}"])
            if self.jobs:
                log.info("cancelled worker jobs %s", ", ".join(sorted(self.jobs)))
        except DistrenError as exc:
            log.error("could not cancel the worker jobs %s: %s", ", ".join(sorted(self.jobs)), exc.message)

    def renderer_view(self) -> RendererView:
        """The worker jobs still to come, for liveness: a renderer of every backend this server
        knows (installed here or not) that is never blocklisted (each job is a new worker) and is up unless submissions are held."""
        held = time.time() < self.held_until
        return RendererView(f"slurm:{self.core.name}", frozenset(self.core.backends), not held,
                            why="Slurm worker jobs ended without taking frames: submissions held" if held else None)

    def to_json(self) -> dict:
        return {"max_jobs": self.config.slurm_max_jobs, "partition": self.config.slurm_partition,
                "submitted": self.submitted, "last_error": self.last_error,
                "held_until": self.held_until or None,
                "jobs": [job.to_json(self.fed) for job in sorted(self.jobs.values(), key=lambda j: int(j.id))]}

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except DistrenError as exc:
                self.last_error = exc.message
                log.warning("slurm: %s", exc.message)
            except Exception:
                log.exception("slurm executor failed; going on")
            await asyncio.sleep(self.config.slurm_poll_seconds)

    def _ready(self) -> int:
        """Ready frames that no free slot of this server will take, counted up to what the
        worker jobs could use (held frames of paused jobs do not count)."""
        runner = self.runner
        free = 0 if runner.draining or not runner.slots else max(0, runner.concurrency.limit - runner.concurrency.rendering)
        cap = self.config.slurm_max_jobs * self.config.slurm_worker_slots + free
        # every backend the server knows: the nodes may have a renderer this host lacks
        return max(0, self.core.scheduler.ready_count(list(self.core.backends), cap) - free)

    async def tick(self) -> int:
        """Ask squeue (when there are jobs or work), then submit the jobs the waiting frames
        need; returns how many were submitted."""
        ready = self._ready()
        if self.jobs or ready or not self._polled:
            await self.poll()
            self._polled = True
        if not ready or time.time() < self.held_until:
            return 0
        # jobs that have not started, or started and not yet asked for work, will take frames
        coming = sum(1 for job in self.jobs.values() if job.state in WAITING_STATES
                     or WORKER_PREFIX + worker_name(job.id) not in self.fed.workers)
        wanted = math.ceil(ready / self.config.slurm_worker_slots) - coming
        n = max(0, min(wanted, self.config.slurm_max_jobs - len(self.jobs)))
        for _ in range(n):
            await self.submit()
        return n

    async def submit(self) -> str:
        script = worker_script(self.config, self.home_url, self.secret)
        out = await self._run(sbatch_args(self.config), script)
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise DistrenError(f"sbatch answered {out.strip()[:200]!r}, not a job id")
        self.jobs[job_id] = SlurmJob(job_id, submitted=time.time())
        self.submitted += 1
        self.last_error = None
        log.info("submitted worker job %s", job_id)
        return job_id

    async def poll(self) -> None:
        """The states of this server's worker jobs (`squeue` by job name: jobs of an earlier
        run are adopted). A job no longer listed has ended; one that ended without taking a
        frame counts towards holding the submissions."""
        out = await self._run(["squeue", "--noheader", f"--name={job_name(self.core.name)}",
                               f"--user={getpass.getuser()}", "--format=%i|%T|%r"])
        seen: dict[str, SlurmJob] = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and parts[0].isdigit():
                job = self.jobs.get(parts[0]) or SlurmJob(parts[0])
                job.state, job.reason = parts[1], parts[2]
                seen[job.id] = job
        for gone in set(self.jobs) - set(seen):
            # fruitless: it never reached this server, or took no frame although frames wait
            # (it cannot render them); one that found the queue empty is the normal shrink
            worker = self.fed.workers.get(WORKER_PREFIX + worker_name(gone))
            if worker is None or (not worker.leases and self._ready()):
                self.fruitless += 1
            else:
                self.fruitless = 0
        self.jobs = seen
        if self.fruitless >= FRUITLESS_LIMIT:
            hold = min(HOLD_MAX, 30.0 * 2 ** (self.fruitless - FRUITLESS_LIMIT))
            self.held_until = time.time() + hold
            self.last_error = (f"{self.fruitless} worker jobs in a row ended without taking a frame (they could not "
                               f"reach {self.home_url}, or render these frames): submissions held for {hold:g} s; "
                               "see the workers' logs")
            log.warning("slurm: %s", self.last_error)

    async def _run(self, args: list[str], stdin: str | None = None) -> str:
        """A Slurm command, with a timeout; DistrenError with its first error line on failure."""
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None),
                                              COMMAND_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise DistrenError(f"{args[0]} did not answer in {COMMAND_TIMEOUT:g} s") from None
        if proc.returncode != 0:
            raise DistrenError(f"{args[0]} failed: {_first_error(err.decode(errors='replace'))}")
        return out.decode(errors="replace")

"""A render-only worker (`distren worker`): it pulls frames from one or more home servers
through the peer lease protocol, renders them in the sandbox, uploads the outputs, and exits
after being idle for `idle_exit` seconds (the Slurm executor's worker jobs, slurm.py).

It is the same code a server runs to render its peers' frames: a Core on a private data folder
(blob cache, scenes; no jobs of its own), the Runner's render slots, and the Federation's
claims, chunks, heartbeats, transfers and hand-backs, with the homes as its peers. It serves no
HTTP: the homes never ask it anything. It signs its requests as `worker:NAME` (the worker
role: a home serves it claim, heartbeat, blobs and results only, without a peer-table entry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DistrenError
from .federation.auth import WORKER_PREFIX, check_sender, load_secret
from .federation.peers import Peer, PeerClient, PeerError, parse_peer
from .federation.service import Federation, FederationSettings
from .server.config import ServerConfig, usable_cores

log = logging.getLogger("distren.worker")
# how often the worker looks whether it is idle
IDLE_CHECK = 0.25


def default_name() -> str:
    """`<host>-<pid>`: unique enough for workers started by hand."""
    host = re.sub(r"[^A-Za-z0-9._-]", "", socket.gethostname().split(".")[0]) or "worker"
    return f"{host}-{os.getpid()}"


@dataclass
class WorkerSettings:
    homes: list[str]                     # URL, or NAME=URL
    secret_file: Path
    name: str = field(default_factory=default_name)
    idle_exit: float = 60.0
    slots: int = field(default_factory=usable_cores)
    data: Path | None = None             # None: a temporary folder, removed at exit
    claim_backoff_max: float = 5.0
    ca_file: Path | None = None          # https:// homes: the CA (None: $DISTREN_CA_FILE, else the system's)

    def __post_init__(self) -> None:
        check_sender(WORKER_PREFIX + self.name)
        if not self.homes:
            raise DistrenError("a worker needs at least one --home URL")
        if not 0 < self.idle_exit < float("inf"):
            raise DistrenError(f"--idle-exit must be a number of seconds > 0, got {self.idle_exit!r}")
        if self.slots < 1:
            raise DistrenError(f"a worker needs --slots >= 1, got {self.slots}")
        for home in self.homes:
            if "=" in home.split("://", 1)[0]:
                parse_peer(home)
            elif not home.startswith(("http://", "https://")):
                raise DistrenError(f"--home {home!r}: expected http://HOST:PORT or NAME=http://HOST:PORT")


class Worker:
    """Use `await Worker(settings).run()`; it returns when idle long enough or stopped."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.secret = load_secret(settings.secret_file)
        self.stopping = asyncio.Event()

    async def _homes(self, client: PeerClient) -> dict[str, str]:
        """The homes by name: NAME=URL as given, a bare URL by asking its name (hello), again
        and again until `idle_exit` has passed; homes never reached are left out."""
        homes: dict[str, str] = {}
        unknown = []
        for text in self.settings.homes:
            if "=" in text.split("://", 1)[0]:
                name, url = parse_peer(text)
                homes[name] = url
            else:
                unknown.append(text.rstrip("/"))
        deadline = time.monotonic() + self.settings.idle_exit
        delay = 0.2
        while unknown and not self.stopping.is_set():
            for url in list(unknown):
                try:
                    homes[await client.discover(url)] = url
                    unknown.remove(url)
                except PeerError as exc:
                    log.warning("home %s: %s", url, exc.message)
            if unknown and time.monotonic() + delay > deadline:
                break
            if unknown:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(5.0, delay * 2)
        if not homes:
            raise DistrenError("no home server could be reached: " + ", ".join(unknown))
        return homes

    async def run(self) -> None:
        from .server.core import Core
        from .server.runner import Runner

        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stopping.set)
        client = PeerClient(WORKER_PREFIX + s.name, self.secret, {}, ca_file=s.ca_file)
        tmp = None
        core = fed = runner = None
        storage_started = False
        try:
            homes = await self._homes(client)
            client.peers = {name: Peer(name, url) for name, url in homes.items()}
            data = s.data
            if data is None:
                tmp = tempfile.TemporaryDirectory(prefix="distren-worker-")
                data = Path(tmp.name) / "data"
            # the Core's name shows only in this worker's own logs and folders
            # no free-space reserve: a worker holds no jobs to finish, and a reserve it is below
            # would stop its claims (its idle clock starts at its first answered claim)
            core = Core(ServerConfig(name=re.sub(r"[^A-Za-z0-9]", "", s.name)[:64] or "worker", data=data,
                                     slots=s.slots, intake_processes=0, claim_backoff_max=s.claim_backoff_max,
                                     min_free_bytes=0))
            # the collector frees peer copies and uploaded outputs, as on a server
            await core.storage.start()
            storage_started = True
            fed = Federation(core, client, FederationSettings(claim_backoff_max=s.claim_backoff_max), verifier=None)
            runner = Runner(core, s.slots, fed)
            log.info("worker %s: rendering for %s with %d slots; exits after %g s idle", s.name,
                     ", ".join(f"{n} ({u})" for n, u in homes.items()), s.slots, s.idle_exit)
            await runner.start()
            await self._until_idle(runner, fed)
        finally:
            if runner is not None:
                await runner.stop()   # renders under way are stopped and handed back (interrupted)
            if fed is not None:
                await fed.stop()
            else:
                await client.close()
            if storage_started:
                await core.storage.stop()
            if core is not None:
                core.close()
            if tmp is not None:
                tmp.cleanup()

    async def _until_idle(self, runner, fed) -> None:
        """Idle: no render, no lease since, and at least one claim answered (a slow first
        answer, on a loaded machine, is not idleness)."""
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), IDLE_CHECK)
            idle_since = max(idle_since, fed.last_lease)
            if runner.concurrency.rendering or not fed.claims_answered:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self.settings.idle_exit:
                log.info("worker %s: idle for %g s, exiting", self.settings.name, self.settings.idle_exit)
                return
        log.info("worker %s: stopped; renders under way are handed back", self.settings.name)


def run_worker(settings: WorkerSettings) -> None:
    """`distren worker`: run until idle or stopped (SIGTERM, SIGINT)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)   # not a line per request
    asyncio.run(Worker(settings).run())

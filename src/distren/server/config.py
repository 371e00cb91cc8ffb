"""Server settings, with their defaults. Every one is documented in the README's server settings
table; `distren serve --help` lists the command-line flags that set them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path

from ..tarballs import TarLimits

if TYPE_CHECKING:
    from ..backends.base import RenderLimits


def usable_cores() -> int:
    """The cores this process may run on (taskset/cgroup affinity), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class ServerConfig:
    name: str
    data: Path
    slots: int = field(default_factory=usable_cores)
    # `--slots auto`: up to `slots` renders, as many as keep the CPU busy (concurrency.py)
    slots_auto: bool = False
    # A frame fails for good after this many failed attempts.
    max_failures: int = 3
    # Wall-clock limit of one render, seconds.
    frame_timeout: float = 3600.0
    # Largest job package accepted by POST /jobs, bytes.
    max_job_bytes: int = 2 * 1024**3
    max_frames: int = 100_000
    tar_limits: TarLimits = field(default_factory=TarLimits)
    # Seconds a client may take to send a request's head (slow clients are cut off).
    header_timeout: float = 10.0
    # Worker processes that unpack and check submitted packages (0: a thread of the server).
    intake_processes: int = 1
    # POV-Ray threads per render; None: cores / slots, at least 1.
    render_threads: int | None = None
    # Federation: peers by name -> base URL, the shared secret's file, lease timings.
    peers: dict[str, str] = field(default_factory=dict)
    federation_secret_file: Path | None = None
    lease_seconds: float = 60.0
    heartbeat_seconds: float | None = None
    claim_backoff_max: float = 5.0
    watch_seconds: float = 2.0
    # Liveness: a frame that failed on a peer goes back to it only after this many seconds; a
    # dependency's server may be unreachable this long before its dependents fail.
    retry_elsewhere: float = 30.0
    remote_dep_timeout: float = 3600.0
    # Federation pacing: empty claims a second this server answers; peers' health checks.
    idle_claims_per_second: float = 20.0
    peer_timeout: float = 15.0
    # Resource limits of one render (None: unlimited).
    render_memory: int | None = 16 * 1024**3
    render_file_size: int | None = 16 * 1024**3
    render_cpu_seconds: int | None = None   # default: frame_timeout x threads
    render_processes: int | None = 4096
    # Storage (server/storage.py): finished jobs are deleted this many days after they finished
    # (None: kept until deleted); new packages are refused (507) while the data folder's file
    # system has less than min_free_bytes free; copies of peers' blobs are kept this many
    # seconds after the last lease that used them.
    keep_finished: float | None = None
    min_free_bytes: int = 1024**3
    keep_peer_copies: float = 600.0

    def render_limits(self, timeout: float | None = None, frames: int = 1) -> "RenderLimits":
        """The limits of one render; `timeout` is the job's own render timeout, if it has one;
        a chunk of `frames` frames gets that many times the CPU time of one."""
        from ..backends.base import RenderLimits

        per_frame = self.render_cpu_seconds or int((timeout or self.frame_timeout) * max(1, self.threads())) + 1
        cpu = per_frame * max(1, frames)
        return RenderLimits(self.render_memory, self.render_file_size, cpu, self.render_processes,
                            output_bytes=self.render_file_size)

    # When set, submit, cancel, retry and delete need "Authorization: Bearer <token>".
    client_token_file: Path | None = None

    def __post_init__(self) -> None:
        """Settings that would break liveness are refused (also from a config file)."""
        from ..errors import DistrenError

        for key in ("lease_seconds", "claim_backoff_max", "watch_seconds", "remote_dep_timeout",
                    "idle_claims_per_second", "peer_timeout", "frame_timeout"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise DistrenError(f"{key.replace('_', '-')} must be a number of seconds > 0, got {value!r}")
        if self.heartbeat_seconds is not None and not 0 < self.heartbeat_seconds < self.lease_seconds:
            raise DistrenError(f"heartbeat-seconds must be > 0 and below lease-seconds ({self.lease_seconds}),"
                               f" got {self.heartbeat_seconds!r}")
        if self.keep_finished is not None and not 0 < self.keep_finished < float("inf"):
            raise DistrenError(f"keep-finished must be a number of days > 0, got {self.keep_finished!r}")
        if isinstance(self.min_free_bytes, bool) or not isinstance(self.min_free_bytes, int) \
                or self.min_free_bytes < 0:
            raise DistrenError(f"min-free-bytes must be a whole number of bytes >= 0, got {self.min_free_bytes!r}")
        if not 0 <= self.keep_peer_copies < float("inf"):
            raise DistrenError(f"keep-peer-copies must be a number of seconds >= 0, got {self.keep_peer_copies!r}")
        if not 0 <= self.retry_elsewhere < float("inf"):
            raise DistrenError(f"retry-elsewhere-seconds must be >= 0, got {self.retry_elsewhere!r}")

    def threads(self) -> int:
        if self.render_threads:
            return self.render_threads
        return max(1, usable_cores() // max(1, self.slots))

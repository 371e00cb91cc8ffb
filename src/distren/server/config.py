"""Server settings: the one place where each is defined.

Every setting is a field of `ServerConfig`, declared with `setting(...)`: its name (the Python
attribute, the TOML key of `--config`, the flag `--name-with-dashes`, the environment variable
`DISTREN_NAME`), its type, its default, its bounds and its help text. Everything else derives
from the field: `distren serve`'s flags, the TOML and environment sources and their type checks,
`--print-config` (all three in `settings.py`), and the README's settings table
(`python -m distren.server.settings --markdown`; tests/test_settings.py checks that the README
holds exactly that table).

Adding a setting is one change, here: a field such as

    keep_finished: float | None = setting(None, "days after which finished jobs are deleted",
                                          shown="off", ge=0)

(`shown` is what the README says for a default that is not a plain value), then
`python scripts/settings_table.py --write` to update the README's table. A setting that users
do not set (derived from another one) is declared with `internal=True`.

The model is a plain pydantic model: code and tests build it as `ServerConfig(name=..., data=...,
**kw)` and read it as `config.lease_seconds`; it is frozen once built. Only `distren serve` reads
flags, files and the environment (pydantic-settings, imported there and nowhere else).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..errors import DistrenError
from ..tarballs import TarLimits

if TYPE_CHECKING:
    from ..backends.base import RenderLimits

GiB = 1024**3
SECONDS = {"gt": 0, "allow_inf_nan": False}   # bounds of a period or timeout


def usable_cores() -> int:
    """The cores this process may run on (taskset/cgroup affinity), not all the machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as given to --listen."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistrenError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7780")
    return host.strip("[]"), int(port)


def setting(default: Any = ..., help: str = "", *, shown: str | None = None, factory=None,
            internal: bool = False, metavar: str | None = None, **bounds) -> Any:
    """A settings field: its default (or `factory`), help text, bounds (pydantic's `ge`, `gt`,
    ...), the README's words for its default (`shown`), and whether users set it (`internal`:
    not a flag, a TOML key or an environment variable)."""
    extra = {"shown": shown, "internal": internal, "metavar": metavar}
    if factory is not None:
        return Field(default_factory=factory, description=help, json_schema_extra=extra, **bounds)
    return Field(default, description=help, json_schema_extra=extra, **bounds)


class ServerConfig(BaseModel):
    """Every setting of a server, checked when it is built; see the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)

    name: str = setting(help="the server's name, `[A-Za-z0-9]+`, 1-64 characters, constant",
                        shown="(required)", metavar="NAME")
    data: Path = setting(help="data folder: `distren.sqlite3`, `blobs/`, `scenes/`, scratch folders",
                         shown="(required)", metavar="DIR")
    listen: str = setting("127.0.0.1:7780", "`HOST:PORT` to serve HTTP on", metavar="HOST:PORT")
    slots: int = setting(
        help="concurrent renders (`0`: render nothing); the cores are those of the process's CPU affinity "
             "(`taskset`), not all the machine's. `auto`: up to 8 per core, starting at one per core and "
             "following the CPU (two to four times as many while the cores idle, one fewer while they are saturated: "
             "`src/distren/concurrency.py`); `GET /api/v1/server` shows the current limit under `renders`",
        factory=usable_cores, shown="the cores this process may use", metavar="N|auto", ge=0)
    # set by `slots = "auto"`: up to `slots` renders, as many as keep the CPU busy (concurrency.py)
    slots_auto: bool = setting(False, internal=True)
    max_failures: int = setting(3, "failed attempts after which a frame is failed (each attempt's log is kept)",
                                ge=1)
    frame_timeout: float = setting(
        3600.0, "seconds one render of a frame may take (a chunk of N frames: N times as much); then its whole "
                "process group is killed", **SECONDS)
    max_job_bytes: int = setting(2 * GiB, "largest package body accepted, bytes (413 beyond)", shown="2 GiB", gt=0)
    max_frames: int = setting(100_000, "most frames in one job", gt=0)
    max_members: int = setting(10_000, "most members in one package", gt=0)
    max_unpacked_bytes: int = setting(2 * GiB, "largest unpacked size of a package (and of one file in it), bytes",
                                      shown="2 GiB", gt=0)
    render_memory: int | None = setting(16 * GiB, "address space of each process of a render, bytes (`RLIMIT_AS`)",
                                        shown="16 GiB", gt=0)
    render_file_size: int | None = setting(
        16 * GiB, "largest file a render may write, bytes (`RLIMIT_FSIZE`); also the cap on all output files of one "
                  "frame together (checked after the render)", shown="16 GiB", gt=0)
    render_cpu_seconds: int | None = setting(
        None, "CPU time of each process of a render (`RLIMIT_CPU`); a chunk of N frames gets N times as much",
        shown="`--frame-timeout` x threads per render, + 1", gt=0)
    render_processes: int | None = setting(
        4096, "process limit of a render (`RLIMIT_NPROC`, counted per user; not enforced when the server runs "
              "as root)", gt=0)
    render_threads: int | None = setting(None, "renderer threads per render (POV-Ray, Blender)",
                                         shown="usable cores / `--slots`, at least 1; a job's last renders: "
                                               "usable cores", gt=0)
    # Worker processes that unpack and check submitted packages (0: a thread of the server, as
    # the embedded server of `distren render` does). Not for users: hostile packages are parsed
    # outside the server's interpreter (docs/security.md).
    intake_processes: int = setting(1, internal=True, ge=0)
    # Processes that write frames' outputs into the blob store (0: a thread of the server):
    # server/outputs.py says why.
    output_processes: int = setting(1, internal=True, ge=0)
    header_timeout: float = setting(
        10.0, "seconds a client may take to send a request's head; silent and slow clients are disconnected",
        **SECONDS)
    body_timeout: float = setting(
        30.0, "seconds a request body may go without data: package uploads, a peer's frame outputs and every other "
              "body (client or peer JSON); then 408 `request_timeout` and the upload is dropped", **SECONDS)
    peers: dict[str, str] = setting(
        help="a peer server (`--peer NAME=URL`, repeatable; in `--config` a `[peers]` table of `NAME = \"URL\"`; "
             "`DISTREN_PEERS` a JSON object); only the servers listed may use this server's peer routes",
        factory=dict, shown="none", metavar="NAME=URL")
    federation_secret_file: Path | None = setting(
        None, "the secret all servers of the farm share (at least 16 bytes); needed for `--peer` and to accept "
              "peers' requests", shown="none", metavar="PATH")
    client_token_file: Path | None = setting(
        None, "when set, every request that changes something (submit, priority, pause, resume, cancel, retry, "
              "delete, drain) needs `Authorization: Bearer <token>`", shown="none", metavar="PATH")
    # reads behind the token too (docs/security.md: why it is off by default)
    protect_reads: bool = setting(
        False, "with `--client-token-file` (refused without it): reads need the token too: status, frames, logs, "
               "outputs, previews, bundles, events, metrics, the dashboard's data (its pages take the token as a "
               "cookie); peers read with their signatures ([docs/api.md](docs/api.md#the-client-token); why off by "
               "default: [docs/security.md](docs/security.md#authentication))", shown="off")
    lease_seconds: float = setting(
        60.0, "length of the leases on this server's frames, for its own slots and for peers; a lease not "
              "renewed expires and the frame is ready again", **SECONDS)
    heartbeat_seconds: float | None = setting(
        None, "how often this server renews the leases it holds from peers; at least every third of the lease "
              "the home server granted; below `--lease-seconds`", shown="a third of `--lease-seconds`", **SECONDS)
    claim_backoff_max: float = setting(5.0, "longest wait before asking a peer that had no work again", **SECONDS)
    watch_seconds: float = setting(2.0, "how often frames on peers that frames here wait for are checked",
                                   **SECONDS)
    retry_elsewhere_seconds: float = setting(
        30.0, "a frame whose attempt failed on a peer goes back to that same peer only after this long (others "
              "may take it at once)", ge=0, allow_inf_nan=False)
    remote_dep_timeout: float = setting(
        3600.0, "seconds the server of a dependency may stay unreachable before the frames waiting for it fail "
                "(naming it)", **SECONDS)
    idle_claims_per_second: float = setting(
        20.0, "empty claims a second this server is willing to answer: idle peers are told to wait peers / this "
              "many seconds (`Retry-After`), and are told when work comes", metavar="N", **SECONDS)
    peer_timeout: float = setting(
        15.0, "a peer not heard from for this long is asked who it is (health shown in `GET /peers`, "
              "`waiting_for`)", **SECONDS)
    # Storage (server/storage.py)
    keep_finished: float | None = setting(
        None, "days (fractions allowed) after which a finished job (done, failed or cancelled) is deleted by the "
              "server, blobs and scene folder with it; a job that unfinished frames of another job here wait for "
              "stays ([docs/architecture.md](docs/architecture.md#disk-reclaimed), also what peers that depend on "
              "it see)", shown="off", metavar="DAYS", gt=0, allow_inf_nan=False)
    min_free_bytes: int = setting(
        GiB, "free space kept on the data folder's file system: below it new packages are refused with 507 "
             "`storage_full` and no peers' frames are taken (the log says so once); `0` turns it off",
        shown="1 GiB", ge=0)
    keep_peer_copies: float = setting(
        600.0, "seconds a renderer keeps its copies of a peer's seed, scene and dependency outputs after the last "
               "lease that used them (the job's next frames do not fetch them again); then they are reclaimed",
        ge=0, allow_inf_nan=False)
    # TLS: this server's certificate and key (HTTPS when both are set); the CA file its requests
    # to https:// peers trust (None: $DISTREN_CA_FILE, else the system's CAs; tls.py).
    tls_cert: Path | None = setting(
        None, "serve HTTPS with this certificate (PEM; intermediate certificates after it); needs `--tls-key` "
              "([TLS](#tls))", shown="none", metavar="PATH")
    tls_key: Path | None = setting(None, "the private key of `--tls-cert` (PEM, without a passphrase)", shown="none",
                                   metavar="PATH")
    ca_file: Path | None = setting(
        None, "CA certificates (PEM) that `https://` peers' certificates must chain to; it replaces the system's "
              "authorities for peer connections", shown="`$DISTREN_CA_FILE`, else the system's", metavar="PATH")
    # The Slurm executor (slurm.py, docs/slurm.md): worker jobs submitted with sbatch while ready
    # frames wait and no slot is free, at most slurm_max_jobs at once.
    slurm: bool = setting(
        False, "submit worker jobs (`distren worker`) with `sbatch` while ready frames wait and no slot is free; "
               "needs `--federation-secret-file`; bad Slurm settings stop the server at start-up "
               "([docs/slurm.md](docs/slurm.md))", shown="off")
    slurm_partition: str | None = setting(None, "partition of the worker jobs", shown="the cluster's default",
                                          metavar="NAME")
    slurm_account: str | None = setting(None, "account of the worker jobs", shown="your default account",
                                        metavar="NAME")
    slurm_max_jobs: int = setting(10, "most worker jobs at once, pending and running", ge=1)
    slurm_time: str | None = setting(None, "time limit of a worker job, as `sbatch --time` takes it",
                                     shown="the partition's limit", metavar="TIME")
    slurm_option: list[str] = setting(
        help="another `sbatch` option for the worker jobs (repeatable; after distren's own, so it wins), e.g. "
             "`--slurm-option=--mem=4G`; in `--config` a list of strings, `DISTREN_SLURM_OPTION` a JSON list",
        factory=list, shown="none", metavar="OPT")
    slurm_worker_slots: int = setting(1, "renders per worker job (its `--cpus-per-task`)", ge=1)
    slurm_idle_exit: float = setting(60.0, "a worker job ends after this many seconds without work", **SECONDS)
    slurm_url: str | None = setting(None, "the URL worker jobs reach this server at (their `--ca-file` is this server's `--ca-file`, a path the nodes read)", shown="`http://<--listen>` (`https://` with `--tls-cert`)",
                                    metavar="URL")
    slurm_secret_file: Path | None = setting(
        None, "the federation secret's path as the nodes see it (a shared file system)",
        shown="none (the secret goes in the batch script)", metavar="PATH")
    slurm_worker_command: str | None = setting(None, "the command that runs distren on the nodes",
                                               shown="this Python `-m distren.cli`", metavar="COMMAND")
    slurm_poll_seconds: float = setting(
        5.0, "how often `squeue` is asked, while there are worker jobs or ready frames", **SECONDS)
    # Logs (logs.py)
    log_format: Literal["text", "json"] = setting(
        "text", "`text`, or `json`: one JSON object a line (`time`, `level`, `logger`, `message`, and `job` and "
                "`frame` as `distren://` URLs when the line is about one)", metavar="text|json")
    access_log: bool = setting(
        False, "log every HTTP request answered (uvicorn's access log; with `json`: `client`, `method`, `path`, "
               "`http_version`, `status`) and every request sent to a peer", shown="off")

    # -- checks ------------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _slots_auto(cls, values: Any) -> Any:
        """`slots = "auto"`: up to 8 renders per core, as many as keep the CPU busy."""
        if isinstance(values, dict) and values.get("slots") == "auto":
            from ..render import SLOTS_PER_CORE

            values = {**values, "slots": SLOTS_PER_CORE * usable_cores(), "slots_auto": True}
        return values

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic takes true for 1; a switch given for a number is a mistake."""
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation is not bool:
            raise ValueError(f"must be {_kind(cls.model_fields[info.field_name].annotation)}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from ..url import check_server_name

        return _checked(check_server_name, value)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _checked(parse_listen, value)
        return value

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: dict[str, str]) -> dict[str, str]:
        from ..federation.peers import parse_peer

        return dict(_checked(parse_peer, f"{name}={url}") for name, url in value.items())

    @model_validator(mode="after")
    def _reads_need_a_token(self) -> "ServerConfig":
        if self.protect_reads and self.client_token_file is None:
            raise ValueError("protect_reads (--protect-reads) needs a client token (--client-token-file)")
        return self

    @model_validator(mode="after")
    def _heartbeat_below_lease(self) -> "ServerConfig":
        """A heartbeat as long as the lease lets every lease expire."""
        if self.heartbeat_seconds is not None and not self.heartbeat_seconds < self.lease_seconds:
            raise ValueError(f"heartbeat_seconds (--heartbeat-seconds) must be below lease_seconds "
                             f"({self.lease_seconds:g}), got {self.heartbeat_seconds:g}")
        return self

    # -- derived -------------------------------------------------------------------------------
    @property
    def tar_limits(self) -> TarLimits:
        return TarLimits(max_members=self.max_members, max_total_size=self.max_unpacked_bytes,
                         max_file_size=self.max_unpacked_bytes)

    @property
    def retry_elsewhere(self) -> float:
        return self.retry_elsewhere_seconds

    def render_limits(self, timeout: float | None = None, frames: int = 1, threads: int | None = None) -> "RenderLimits":
        """The limits of one render; `timeout` is the job's own render timeout, if it has one;
        a chunk of `frames` frames gets that many times the CPU time of one; `threads`: the
        render's threads (`threads()` when not given)."""
        from ..backends.base import RenderLimits

        threads = max(1, threads or self.threads())
        per_frame = self.render_cpu_seconds or int((timeout or self.frame_timeout) * threads) + 1
        cpu = per_frame * max(1, frames)
        return RenderLimits(self.render_memory, self.render_file_size, cpu, self.render_processes,
                            output_bytes=self.render_file_size)

    def threads(self) -> int:
        if self.render_threads:
            return self.render_threads
        return max(1, usable_cores() // max(1, self.slots))


def _checked(check, value):
    """A DistrenError of a check, as the ValueError pydantic reports under the setting's name."""
    try:
        return check(value)
    except DistrenError as exc:
        raise ValueError(exc.message) from None


def _kind(annotation: Any) -> str:
    text = str(getattr(annotation, "__name__", None) or annotation)
    return next((words for kind, words in (("int", "a whole number"), ("float", "a number")) if kind in text), text)


def user_settings() -> dict[str, Any]:
    """The fields users set (flags, TOML, environment), in declaration order."""
    return {name: f for name, f in ServerConfig.model_fields.items() if not _extra(f)["internal"]}


def _extra(f) -> dict:
    return f.json_schema_extra or {"shown": None, "internal": False, "metavar": None}


def describe_default(name: str) -> str:
    """The default as the README shows it."""
    f = ServerConfig.model_fields[name]
    shown = _extra(f)["shown"]
    if shown is not None:
        return shown
    value = f.get_default(call_default_factory=True)
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        value = int(value)
    return f"`{value}`"

"""The `distren` command line. Exit codes (also in the README):

0 success; 1 the job ended with frames failed or cancelled (submit --wait, render);
2 bad command line or local input (a package that cannot be made, a bad URL);
3 the server refused the request (HTTP 4xx); 4 the server cannot be reached or failed (5xx).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .backends.base import find_backends, positive_int
from .client import Client, ClientError
from .errors import DistrenError, ServerError
from .frames import parse_frames
from .progress import Progress
from .server.config import usable_cores

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_SERVER = 0, 1, 2, 3, 4


_positive_int = positive_int


def _chunk_arg(text: str) -> int:
    value = _positive_int(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"expected a chunk of 1 to 1000 frames, got {text}")
    return value


def _slots_arg(text: str) -> int | str:
    return "auto" if text == "auto" else _non_negative_int(text)


def _positive_float(text: str, unit: str = "seconds", least: float | None = None) -> float:
    """A finite number > 0 (>= `least` when given)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    ok = value >= least if least is not None else value > 0
    if not ok or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of {unit} {'>= %g' % least if least is not None else '> 0'},"
                                         f" got {text!r}")
    return value


def _days_arg(text: str) -> float:
    return _positive_float(text, "days")


def _seconds_or_zero(text: str) -> float:
    return _positive_float(text, "seconds", 0)


def _priority_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not -1000 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"expected a priority from -1000 to 1000, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _frames_arg(text: str) -> str:
    try:
        parse_frames(text)
    except DistrenError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return text


def _add_pack_options(p: argparse.ArgumentParser) -> None:
    """The options every backend takes, then each installed backend's own (`pack_options`)."""
    p.add_argument("--frames", type=_frames_arg, help="frame ids and ranges, e.g. 1-40 or 0,5,1000")
    p.add_argument("--width", type=_positive_int, help="image width (overrides the scene's)")
    p.add_argument("--height", type=_positive_int, help="image height (overrides the scene's)")
    p.add_argument("--name", help="job name (default: the scene's name)")
    p.add_argument("--priority", type=int, default=0, help="job priority, -1000..1000, higher first (default 0)")
    p.add_argument("--timeout", type=_positive_int,
                   help="seconds one frame may render (up to 604800; default: the server's --frame-timeout)")
    p.add_argument("--chunk", type=_chunk_arg,
                   help="frames one renderer process renders, 1-1000 (default: chosen by each server from the "
                        "measured time per frame)")
    p.add_argument("--video", action="store_true", help="add a frame that encodes the frames into a video (ffmpeg)")
    p.add_argument("--fps", help="video frames per second (default 24)")
    p.add_argument("--codec", choices=("h264", "h265", "vp9"), help="video codec (default h264, in MP4)")
    p.add_argument("--crf", help="video quality, 0-63, lower is better (default 20)")
    taken = {action.dest for action in p._actions}
    for option in _backend_pack_options():
        if option.dest in taken:   # a second backend with the same option shares it
            continue
        taken.add(option.dest)
        if option.type is None:
            p.add_argument(option.flag, action="store_true", default=None, help=option.help)
        else:
            p.add_argument(option.flag, type=option.type, metavar=option.metavar, help=option.help)


def _backend_pack_options(backends=None):
    backends = find_backends() if backends is None else backends
    return [option for backend in backends.values() for option in backend.pack_options]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distren", description="distren: a distributed render farm.")
    parser.add_argument("--version", action="version", version=f"distren {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", help="server address, e.g. http://127.0.0.1:7780 (default: $DISTREN_SERVER)")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("pack", help="make a job package from a scene (scene.ini, scene.pov, scene.blend, or what a plug-in backend packs)")
    p.add_argument("source", type=Path, help="scene.ini (with its .pov), a bare scene.pov, or scene.blend")
    p.add_argument("-o", "--output", type=Path, help="package path (default: <scene>.distren.tar.gz)")
    _add_pack_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("submit", help="submit a job package; prints the job's distren:// URL")
    p.add_argument("package", type=Path)
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    server_opt(p)

    p = sub.add_parser("status", help="state of a server, job or frame URL")
    p.add_argument("url", help="distren://server, distren://server/job or distren://server/job/frame")
    server_opt(p)

    p = sub.add_parser("download", help="a job URL: the bundle; a frame URL: the frame's tarball")
    p.add_argument("url")
    p.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    server_opt(p)

    for name, text in (("cancel", "cancel a job"), ("retry", "requeue a job's failed and cancelled frames"),
                       ("delete", "delete a job (its id is never reused)"),
                       ("pause", "pause a job: none of its frames starts (running ones finish), also on peers"),
                       ("resume", "resume a paused job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("url", help="distren://server/job")
        server_opt(p)

    p = sub.add_parser("priority", help="change a job's priority (-1000..1000, higher first); the next frame to "
                                        "start follows it")
    p.add_argument("url", help="distren://server/job")
    p.add_argument("priority", type=_priority_arg, help="the new priority, -1000..1000")
    server_opt(p)

    p = sub.add_parser("drain", help="drain the server: it starts no new renders, hands its peers' frames back "
                                     "and lets its own running renders finish")
    p.add_argument("--off", action="store_true", help="end the drain: the server renders again")
    server_opt(p)

    p = sub.add_parser("serve", help="run a server")
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below (flags win)")
    p.add_argument("--name", help="this server's name, [A-Za-z0-9]+ (required here or in --config)")
    p.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:7780)")
    p.add_argument("--data", type=Path, help="data folder: database, blobs, scenes (required here or in --config)")
    p.add_argument("--slots", type=_slots_arg,
                   help="concurrent renders; 0 renders nothing; 'auto': as many as keep the CPU busy, up to 8 per "
                        "core (default: cores)")
    p.add_argument("--max-failures", type=_positive_int, help="failed attempts before a frame fails (3)")
    p.add_argument("--frame-timeout", type=float, help="seconds one render may take (3600)")
    p.add_argument("--max-job-bytes", type=_positive_int, help="largest package accepted (2 GiB)")
    p.add_argument("--max-frames", type=_positive_int, help="most frames in one job (100000)")
    p.add_argument("--max-members", type=_positive_int, help="most files in one package (10000)")
    p.add_argument("--max-unpacked-bytes", type=_positive_int, help="largest unpacked size of a package (2 GiB)")
    p.add_argument("--render-memory", type=_positive_int, help="address-space limit of one render, bytes (16 GiB)")
    p.add_argument("--render-file-size", type=_positive_int, help="largest file one render may write, bytes (16 GiB)")
    p.add_argument("--render-cpu-seconds", type=_positive_int, help="CPU-time limit of one render (frame timeout x threads)")
    p.add_argument("--render-processes", type=_positive_int, help="process limit (RLIMIT_NPROC, per user; 4096; not for root)")
    p.add_argument("--header-timeout", type=float, help="seconds a client may take to send a request head (10)")
    p.add_argument("--peer", action="append", metavar="NAME=URL", help="a peer server (repeatable)")
    p.add_argument("--federation-secret-file", type=Path, help="file holding the secret shared by all peers")
    p.add_argument("--client-token-file", type=Path, help="file holding the token that submit/cancel/retry/delete need")
    p.add_argument("--lease-seconds", type=_positive_float,
                   help="lease length of a frame, for this server's slots and its peers (60)")
    p.add_argument("--heartbeat-seconds", type=_positive_float, help="heartbeat period of leases held (lease / 3)")
    p.add_argument("--claim-backoff-max", type=_positive_float,
                   help="longest wait before asking an idle peer again (5)")
    p.add_argument("--watch-seconds", type=_positive_float,
                   help="how often frames on peers that jobs here wait for are checked (2)")
    p.add_argument("--retry-elsewhere-seconds", type=float,
                   help="a frame that failed on a peer goes back to that peer only after this long (30)")
    p.add_argument("--remote-dep-timeout", type=_positive_float,
                   help="seconds a dependency's server may stay unreachable before its dependents fail (3600)")
    p.add_argument("--idle-claims-per-second", type=_positive_float,
                   help="empty claims a second this server answers; idle peers are paced to it (20)")
    p.add_argument("--peer-timeout", type=_positive_float,
                   help="a peer not heard from for this long is asked how it is (15)")
    p.add_argument("--keep-finished", type=_days_arg, metavar="DAYS",
                   help="delete finished jobs this many days after they finished (fractions allowed; default: keep)")
    p.add_argument("--min-free-bytes", type=_non_negative_int,
                   help="refuse new packages (507) while the data folder's disk has less free (1 GiB)")
    p.add_argument("--keep-peer-copies", type=_seconds_or_zero, metavar="SECONDS",
                   help="keep copies of peers' seeds and outputs this long after the last lease using them (600)")

    p = sub.add_parser("peers", help="a server's peers and their health")
    server_opt(p)

    p = sub.add_parser("completion", help="print a shell completion script: bash or zsh")
    p.add_argument("shell", choices=("bash", "zsh"),
                   help="bash: source it, or save it in /etc/bash_completion.d/distren; zsh: save it as _distren "
                        "in a folder of $fpath")

    p = sub.add_parser("render", help="render a scene on a private in-process server and write the frames")
    p.add_argument("source", type=Path, help="scene.ini, scene.pov or scene.blend")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for the frames")
    _add_pack_options(p)
    p.add_argument("--slots", type=_positive_int, help="concurrent renders (default: 8 per core)")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("blender-addon", help="write the Blender add-on (distren_blender) as a zip to install in Blender")
    p.add_argument("-o", "--output", type=Path, default=Path("distren_blender.zip"),
                   help="zip to write, or a folder for distren_blender.zip (default: ./distren_blender.zip)")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _print(args, data, text: str | None = None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    elif text is not None:
        print(text)


def _job_line(job: dict) -> str:
    f = job["frames"]
    return (f"{job['url']}  {job['state']:<9}  {job['name']}  "
            f"done {f['done']}/{job['total_frames']}  running {f['running']}  failed {f['failed']}")


def _frame_text(fr: dict) -> str:
    lines = [f"{fr['url']}  {fr['state']}  attempts {fr['attempts']}"]
    if fr.get("rendered_by"):
        lines.append(f"rendered by: {fr['rendered_by']}")
    if fr.get("error"):
        lines.append(f"error: {fr['error']}")
    for dep in fr.get("depends", []):
        lines.append(f"depends on: {dep['url']} ({dep['state']})")
    if fr.get("log"):
        lines.append("log (last attempt):")
        lines.append(fr["log"].rstrip())
    return "\n".join(lines)


def _pack(args, out: Path | None):
    """Pack the source with the backend found for its suffix; another backend's options are
    refused."""
    from .pack import PackRequest, backend_for

    video = None
    if args.video:
        video = {k: v for k, v in (("fps", args.fps), ("codec", args.codec), ("crf", args.crf)) if v is not None}
    elif args.fps or args.codec or args.crf:
        raise DistrenError("--fps, --codec and --crf go with --video")
    if not args.source.is_file():
        raise DistrenError(f"{args.source}: no such file")
    backends = find_backends()
    backend = backend_for(args.source, backends)
    own = {option.dest for option in backend.pack_options}
    foreign = sorted({option.flag for option in _backend_pack_options(backends)
                      if option.dest not in own and getattr(args, option.dest, None) is not None})
    if foreign:
        raise DistrenError(f"{', '.join(foreign)}: not an option of the {backend.name} backend, "
                           f"which packs {args.source.name}")
    request = PackRequest(frames=args.frames, width=args.width, height=args.height, name=args.name,
                          priority=args.priority, timeout=args.timeout, chunk=args.chunk, video=video,
                          options={dest: getattr(args, dest, None) for dest in own})
    result = backend.pack(args.source, out, request)
    for w in result.warnings:
        print(f"distren: warning: {w}", file=sys.stderr)
    return result


def cmd_pack(args) -> int:
    result = _pack(args, args.output)
    data = {"package": str(result.path), "frames": result.spec.frame_ids()[:1000], "files": result.files,
            "warnings": result.warnings}
    _print(args, data, f"{result.path}  ({len(result.spec.frames)} frames, {len(result.files)} files)")
    return EXIT_OK


def cmd_submit(args) -> int:
    with Client(args.server) as client, Progress() as progress:
        size = args.package.stat().st_size if args.package.is_file() else None
        upload = progress.bytes("upload", size)
        job = client.submit(args.package, on_bytes=upload)
        upload.finish()
        if not args.json:
            print(job["url"], flush=True)
        if not args.wait:
            _print(args, job)
            return EXIT_OK
        frames = progress.frames(job["name"] or job["url"])
        job = client.wait(job["url"], on_update=frames)
        frames.end(job)
    _print(args, job)
    return EXIT_OK if job["state"] == "done" else EXIT_JOB_FAILED


def cmd_status(args) -> int:
    with Client(args.server) as client:
        data = client.status(args.url)
    if "jobs" in data:
        s = data["server"]
        head = f"{s['url']}" + (f"  distren {s['version']}  slots {s['slots']}" if "version" in s else "")
        text = "\n".join([head]
                         + [_job_line(j) for j in data["jobs"]])
    elif "frame" in data:
        text = _frame_text(data)
    else:
        text = _job_line(data)
    _print(args, data, text)
    return EXIT_OK


def cmd_download(args) -> int:
    with Client(args.server) as client, Progress() as progress:
        received = progress.bytes("download", None)
        path = client.download(args.url, args.output, on_bytes=received)
        received.finish()
    _print(args, {"path": str(path)}, str(path))
    return EXIT_OK


def _job_command(action: str):
    """A command that does `action` (a Client method) to a job and prints the job."""
    def run(args) -> int:
        with Client(args.server) as client:
            job = getattr(client, action)(args.url)
        _print(args, job, _job_line(job))
        return EXIT_OK
    return run


cmd_cancel, cmd_pause, cmd_resume = _job_command("cancel"), _job_command("pause"), _job_command("resume")


def cmd_retry(args) -> int:
    with Client(args.server) as client:
        job = client.retry(args.url)
    _print(args, job, f"{_job_line(job)}  (requeued {job.get('requeued', 0)})")
    return EXIT_OK


def cmd_priority(args) -> int:
    with Client(args.server) as client:
        job = client.set_priority(args.url, args.priority)
    _print(args, job, f"{_job_line(job)}  priority {job['priority']}")
    return EXIT_OK


def cmd_drain(args) -> int:
    with Client(args.server) as client:
        info = client.drain(not args.off)
    if info["draining"]:
        text = (f"{info['url']} draining: {info['renders']['rendering']} renders running"
                f", {info.get('handed_back', 0)} frames of peers handed back")
    else:
        text = f"{info['url']} not draining"
    _print(args, info, text)
    return EXIT_OK


def cmd_delete(args) -> int:
    with Client(args.server) as client:
        data = client.delete(args.url)
    _print(args, data, f"deleted {data['deleted']}")
    return EXIT_OK


SERVE_DEFAULTS = {
    "listen": "127.0.0.1:7780", "slots": usable_cores(), "max_failures": 3, "frame_timeout": 3600.0,
    "max_job_bytes": 2 * 1024**3, "max_frames": 100_000, "max_members": 10_000, "max_unpacked_bytes": 2 * 1024**3,
    "lease_seconds": 60.0, "heartbeat_seconds": None, "claim_backoff_max": 5.0, "watch_seconds": 2.0,
    "federation_secret_file": None, "client_token_file": None, "name": None, "data": None,
    "render_memory": 16 * 1024**3, "render_file_size": 16 * 1024**3, "render_cpu_seconds": None,
    "render_processes": 4096, "header_timeout": 10.0, "retry_elsewhere_seconds": 30.0,
    "remote_dep_timeout": 3600.0, "idle_claims_per_second": 20.0, "peer_timeout": 15.0,
    "keep_finished": None, "min_free_bytes": 1024**3, "keep_peer_copies": 600.0,
}


def serve_settings(args) -> dict:
    """Flags, then the --config file, then the defaults."""
    import tomllib

    from .federation.peers import parse_peer

    conf: dict = {}
    if args.config is not None:
        try:
            conf = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise DistrenError(f"cannot read config {args.config}: {exc}") from None
        unknown = set(conf) - set(SERVE_DEFAULTS) - {"peers"}
        if unknown:
            raise DistrenError(f"config {args.config}: unknown settings {', '.join(sorted(unknown))}")
    out = {}
    for key, default in SERVE_DEFAULTS.items():
        flag = getattr(args, key)
        out[key] = flag if flag is not None else conf.get(key, default)
    for key in ("name", "data"):
        if out[key] is None:
            raise DistrenError(f"serve needs --{key} (or {key} in --config)")
    peers = dict(conf.get("peers", {}))
    for text in args.peer or []:
        name, url = parse_peer(text)
        peers[name] = url
    for name, url in peers.items():
        parse_peer(f"{name}={url}")
    out["peers"] = {name: url.rstrip("/") for name, url in peers.items()}
    return out


def cmd_serve(args) -> int:
    from .server.main import serve

    s = serve_settings(args)
    path = lambda v: None if v is None else Path(v)  # noqa: E731
    try:
        config = _server_config(s, path)
    except (TypeError, ValueError) as exc:
        raise DistrenError(f"bad server setting: {exc}") from None
    serve(config, s["listen"])
    return EXIT_OK


def _slots(value) -> int:
    """`slots` from a flag or the config file: a number, or "auto" (up to 8 renders per core)."""
    from .render import SLOTS_PER_CORE

    if value == "auto":
        return SLOTS_PER_CORE * usable_cores()
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DistrenError(f"slots must be a whole number >= 0 or \"auto\", not {value!r}")
    return value


def _server_config(s: dict, path):
    from .server.config import ServerConfig
    from .tarballs import TarLimits

    return ServerConfig(
        name=s["name"], data=Path(s["data"]), slots=_slots(s["slots"]), slots_auto=s["slots"] == "auto",
        max_failures=int(s["max_failures"]),
        frame_timeout=float(s["frame_timeout"]), max_job_bytes=int(s["max_job_bytes"]),
        max_frames=int(s["max_frames"]),
        tar_limits=TarLimits(max_members=int(s["max_members"]), max_total_size=int(s["max_unpacked_bytes"]),
                             max_file_size=int(s["max_unpacked_bytes"])),
        peers=s["peers"], federation_secret_file=path(s["federation_secret_file"]),
        client_token_file=path(s["client_token_file"]), lease_seconds=float(s["lease_seconds"]),
        heartbeat_seconds=None if s["heartbeat_seconds"] is None else float(s["heartbeat_seconds"]),
        claim_backoff_max=float(s["claim_backoff_max"]),
        watch_seconds=float(s["watch_seconds"]),
        render_memory=_opt_int(s["render_memory"]), render_file_size=_opt_int(s["render_file_size"]),
        render_cpu_seconds=_opt_int(s["render_cpu_seconds"]), render_processes=_opt_int(s["render_processes"]),
        header_timeout=float(s["header_timeout"]), retry_elsewhere=float(s["retry_elsewhere_seconds"]),
        remote_dep_timeout=float(s["remote_dep_timeout"]), idle_claims_per_second=float(s["idle_claims_per_second"]),
        peer_timeout=float(s["peer_timeout"]),
        keep_finished=None if s["keep_finished"] is None else float(s["keep_finished"]),
        min_free_bytes=int(s["min_free_bytes"]), keep_peer_copies=float(s["keep_peer_copies"]),
    )


def _opt_int(value) -> int | None:
    return None if value is None else int(value)


def cmd_peers(args) -> int:
    with Client(args.server) as client:
        peers = client.peers()
    lines = [f"{p['name']:<12} {p['url']:<30} {'healthy' if p['healthy'] else 'unhealthy'}"
             f"  failures {p['failures']}  last contact {p['last_contact'] or 'never'}"
             + (f"  ({p['last_error']})" if p["last_error"] else "") for p in peers]
    _print(args, peers, "\n".join(lines) or "no peers")
    return EXIT_OK


def cmd_render(args) -> int:
    from .render import render

    result = render(args, _pack)
    _print(args, result, None)
    return EXIT_OK if result["job"]["state"] == "done" else EXIT_JOB_FAILED


def cmd_completion(args) -> int:
    """The completion script, made from this very parser by shtab (commands, options, choices)."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def cmd_blender_addon(args) -> int:
    from .blender_addon import write_addon

    path = write_addon(args.output)
    _print(args, {"path": str(path)}, f"{path}  (Blender: Preferences > Add-ons > Install, then enable \"distren\")")
    return EXIT_OK


COMMANDS = {
    "pack": cmd_pack, "submit": cmd_submit, "status": cmd_status, "download": cmd_download,
    "cancel": cmd_cancel, "retry": cmd_retry, "delete": cmd_delete, "peers": cmd_peers, "serve": cmd_serve, "render": cmd_render,
    "completion": cmd_completion,
    "blender-addon": cmd_blender_addon,
    "priority": cmd_priority, "pause": cmd_pause, "resume": cmd_resume, "drain": cmd_drain,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ClientError as exc:
        print(f"distren: refused ({exc.status}): {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except ServerError as exc:
        print(f"distren: {exc.message}", file=sys.stderr)
        return EXIT_SERVER
    except DistrenError as exc:
        print(f"distren: error: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED if exc.status in (401, 404, 409, 413) and args.command != "pack" else EXIT_USAGE
    except OSError as exc:
        print(f"distren: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("distren: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

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
from .errors import DistrenError, ServerError, ServerUnreachable
from .frames import parse_frames
from .progress import Progress

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_REFUSED, EXIT_SERVER = 0, 1, 2, 3, 4
# how long submit --wait and status keep asking a server that cannot be reached (a restart)
RETRY_SECONDS = 300.0


_positive_int = positive_int


def _chunk_arg(text: str) -> int:
    value = _positive_int(text)
    if value > 1000:
        raise argparse.ArgumentTypeError(f"expected a chunk of 1 to 1000 frames, got {text}")
    return value


def _seconds(text: str, zero: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value if zero else 0 < value) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds {'>=' if zero else '>'} 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    return _seconds(text, zero=True)


def _positive_float(text: str) -> float:
    return _seconds(text, zero=False)


def _priority_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not -1000 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"expected a priority from -1000 to 1000, got {text!r}")
    return value


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


def build_parser(serve_flags: bool = True) -> argparse.ArgumentParser:
    """The whole command line; `serve_flags=False` leaves out serve's settings (which cost the
    settings model's import: only `serve` and `completion` need them)."""
    parser = argparse.ArgumentParser(prog="distren", description="distren: a distributed render farm.")
    parser.add_argument("--version", action="version", version=f"distren {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--server", help="server address, e.g. http://127.0.0.1:7780 (default: $DISTREN_SERVER)")
        p.add_argument("--ca-file", type=Path,
                       help="CA certificates (PEM) that an https:// server's certificate must chain to, instead of "
                            "the system's (default: $DISTREN_CA_FILE)")
        p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("pack", help="make a job package from a scene (scene.ini, scene.pov, scene.blend, or what a plug-in backend packs)")
    p.add_argument("source", type=Path, help="scene.ini (with its .pov), a bare scene.pov, or scene.blend")
    p.add_argument("-o", "--output", type=Path, help="package path (default: <scene>.distren.tar.gz)")
    _add_pack_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    def retry_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--retry-seconds", type=_non_negative_float, default=RETRY_SECONDS, metavar="S",
                       help="while the server cannot be reached (a restart), keep asking it for up to S seconds "
                            f"(default {RETRY_SECONDS:g}; 0: give up at once); then exit 4")

    p = sub.add_parser("submit", help="submit a job package; prints the job's distren:// URL")
    p.add_argument("package", type=Path)
    p.add_argument("--wait", action="store_true", help="show progress until the job ends")
    server_opt(p)
    retry_opt(p)

    p = sub.add_parser("status", help="state of a server, job or frame URL")
    p.add_argument("url", help="distren://server, distren://server/job or distren://server/job/frame")
    server_opt(p)
    retry_opt(p)

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
    p.add_argument("--config", type=Path, help="TOML file with any of the settings below (flags win over it, "
                                               "it wins over DISTREN_* environment variables)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings as TOML (a file for --config) and exit")
    if serve_flags:
        from .server.settings import add_flags

        add_flags(p)

    p = sub.add_parser("worker", help="render frames of home servers (no jobs, no HTTP of its own); exits when idle")
    p.add_argument("--home", action="append", required=True, metavar="URL",
                   help="a home server, http://HOST:PORT or NAME=http://HOST:PORT (repeatable)")
    p.add_argument("--secret-file", type=Path, required=True, help="file holding the farm's federation secret")
    p.add_argument("--name", help="this worker's name, [A-Za-z0-9][A-Za-z0-9._-]* (default: HOST-PID); frames "
                                  "it renders show worker:NAME as rendered_by")
    p.add_argument("--idle-exit", type=_positive_float, default=60.0,
                   help="exit after this many seconds without a render (60)")
    p.add_argument("--slots", type=_positive_int, help="concurrent renders (default: cores)")
    p.add_argument("--data", type=Path, help="folder for the seed cache and renders (default: a temporary folder, "
                                             "removed at exit)")
    p.add_argument("--claim-backoff-max", type=_positive_float, default=5.0,
                   help="longest wait before asking a home that had no work again (5)")
    p.add_argument("--ca-file", type=Path,
                   help="CA certificates (PEM) that https:// homes' certificates must chain to, instead of the "
                        "system's (default: $DISTREN_CA_FILE)")

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


def _client(args) -> Client:
    """The client of a command's --server and --ca-file."""
    return Client(args.server, ca_file=args.ca_file)


def _retrying_client(args, say) -> Client:
    """The client of --server and --ca-file, whose reads outlast a server restart
    (`--retry-seconds`), saying so with `say`."""
    def told(reason: str | None) -> None:
        say(f"{reason}; asking again for up to {args.retry_seconds:g} s" if reason else "the server answers again")
    return Client(args.server, ca_file=args.ca_file, retry_seconds=args.retry_seconds, on_unreachable=told)


def cmd_submit(args) -> int:
    progress = Progress()
    with _retrying_client(args, progress.say) as client, progress:
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
        try:
            job = client.wait(job["url"], on_update=frames)
        except ServerUnreachable as exc:
            raise ServerUnreachable(f"{exc.message}; the job goes on there: distren status {job['url']}") from None
        frames.end(job)
    _print(args, job)
    return EXIT_OK if job["state"] == "done" else EXIT_JOB_FAILED


def cmd_status(args) -> int:
    with _retrying_client(args, lambda text: print(f"distren: {text}", file=sys.stderr, flush=True)) as client:
        data = client.status(args.url)
    if "jobs" in data:
        s = data["server"]
        head = f"{s['url']}" + (f"  distren {s['version']}  slots {s['slots']}" if "version" in s else "")
        text = "\n".join([head]
                         + [_job_line(j) for j in data["jobs"]] + _slurm_lines(s.get("slurm")))
    elif "frame" in data:
        text = _frame_text(data)
    else:
        text = _job_line(data)
    _print(args, data, text)
    return EXIT_OK


def _slurm_lines(slurm: dict | None) -> list[str]:
    """The Slurm executor's worker jobs, for `distren status` of a server."""
    if not slurm:
        return []
    lines = [f"slurm: {len(slurm['jobs'])} worker jobs (at most {slurm['max_jobs']}), {slurm['submitted']} submitted"
             + (f"  ({slurm['last_error']})" if slurm.get("last_error") else "")]
    for job in slurm["jobs"]:
        lines.append(f"  slurm job {job['id']:<8} {job['state']:<11} {job['worker']}  frames leased {job['leases']}"
                     + (f"  ({job['reason']})" if job.get("reason") not in (None, "", "None") else ""))
    return lines


def cmd_download(args) -> int:
    with _client(args) as client, Progress() as progress:
        received = progress.bytes("download", None)
        path = client.download(args.url, args.output, on_bytes=received)
        received.finish()
    _print(args, {"path": str(path)}, str(path))
    return EXIT_OK


def _job_command(action: str):
    """A command that does `action` (a Client method) to a job and prints the job."""
    def run(args) -> int:
        with _client(args) as client:
            job = getattr(client, action)(args.url)
        _print(args, job, _job_line(job))
        return EXIT_OK
    return run


cmd_cancel, cmd_pause, cmd_resume = _job_command("cancel"), _job_command("pause"), _job_command("resume")


def cmd_retry(args) -> int:
    with _client(args) as client:
        job = client.retry(args.url)
    _print(args, job, f"{_job_line(job)}  (requeued {job.get('requeued', 0)})")
    return EXIT_OK


def cmd_priority(args) -> int:
    with _client(args) as client:
        job = client.set_priority(args.url, args.priority)
    _print(args, job, f"{_job_line(job)}  priority {job['priority']}")
    return EXIT_OK


def cmd_drain(args) -> int:
    with _client(args) as client:
        info = client.drain(not args.off)
    if info["draining"]:
        text = (f"{info['url']} draining: {info['renders']['rendering']} renders running"
                f", {info.get('handed_back', 0)} frames of peers handed back")
    else:
        text = f"{info['url']} not draining"
    _print(args, info, text)
    return EXIT_OK


def cmd_delete(args) -> int:
    with _client(args) as client:
        data = client.delete(args.url)
    _print(args, data, f"deleted {data['deleted']}")
    return EXIT_OK


def cmd_serve(args) -> int:
    from .server.settings import load, to_toml

    config = load(args, args.config)
    if args.print_config:
        sys.stdout.write(to_toml(config))
        return EXIT_OK
    from .server.main import serve

    serve(config)
    return EXIT_OK


def cmd_peers(args) -> int:
    with _client(args) as client:
        peers = client.peers()
    lines = [f"{p['name']:<12} {p['url']:<30} {'healthy' if p['healthy'] else 'unhealthy'}"
             f"  failures {p['failures']}  last contact {p['last_contact'] or 'never'}"
             + (f"  ({p['last_error']})" if p["last_error"] else "") for p in peers]
    _print(args, peers, "\n".join(lines) or "no peers")
    return EXIT_OK


def cmd_worker(args) -> int:
    from .server.config import usable_cores
    from .worker import WorkerSettings, default_name, run_worker

    run_worker(WorkerSettings(
        homes=args.home, secret_file=args.secret_file, name=args.name or default_name(), idle_exit=args.idle_exit,
        slots=args.slots or usable_cores(), data=args.data, claim_backoff_max=args.claim_backoff_max,
        ca_file=args.ca_file))
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
    "worker": cmd_worker,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(serve_flags="serve" in argv).parse_args(argv)
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

"""`distren render`: the embedded default. Pack the scene, start a private server in this
process (temporary data folder, every core), render, write the frames to a folder, stop."""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import tempfile
from pathlib import Path

from .progress import Progress
from .errors import DistrenError
from .server.config import usable_cores
from .tarballs import iter_tar_files

# POV-Ray idles about 0.7 s per process before it renders (measured on a 2-core machine): many more processes than
# cores keep the CPU busy.
SLOTS_PER_CORE = 8


def render(args, pack) -> dict:
    from .backends.base import find_backends, start_probes

    # The start-up, overlapped: the renderers are asked their versions (each a process of its
    # own), and the server's modules are imported and the server started in a thread, while
    # the scene is packed (for a .blend, Blender reads the file meanwhile).
    start_probes(find_backends().values())
    out = Path(args.output)
    # --slots N: exactly N renders at once; by default as many as keep the CPU busy, up to
    # SLOTS_PER_CORE per core (concurrency.py)
    slots = args.slots or SLOTS_PER_CORE * usable_cores()
    starting = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="distren-start")
    server_ready = starting.submit(_start_server, slots, not args.slots)
    starting.shutdown(wait=False)
    with contextlib.ExitStack() as stack:
        # however this ends, the server is stopped (once it has started)
        stack.callback(_stop_server, server_ready)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="distren-pack-"))
        package = pack(args, Path(tmp) / "job.tar.gz").path
        server = server_ready.result()
        client = server.wait().client
        with Progress() as progress:
            job = client.submit(package)
            frames = progress.frames(job["name"] or job["url"])
            job = client.wait(job["url"], interval=0.05, on_update=frames)
            frames.end(job)
        bundle = Path(tmp) / "bundle.tar"
        client.download(job["url"], bundle)
        written = write_frames(bundle, out)
        failed = [f for f in client.frames(job["url"]) if f["state"] != "done"]
        for f in failed[:5]:
            detail = client.frame(f["url"])
            print(f"distren: {f['url']} {f['state']}: {detail.get('error')}", file=sys.stderr)
    print(f"{len(written)} files written to {out}", file=sys.stderr)
    return {"job": job, "files": [str(p) for p in written]}


def _start_server(slots: int, auto: bool):
    from .server.main import EmbeddedServer

    return EmbeddedServer(slots=slots, slots_auto=auto).start()


def _stop_server(server_ready: concurrent.futures.Future) -> None:
    if server_ready.exception() is None:   # (one that did not start says so where it is awaited)
        server_ready.result().__exit__(None, None, None)


def write_frames(bundle: Path, out: Path) -> list[Path]:
    """Write a bundle's files flat into `out` (like `tar -x --strip-components=1`)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, _member, stream in iter_tar_files(bundle):
        _frame, _, rel = name.partition("/")
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise DistrenError(f"unexpected member {name!r} in the bundle")
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as f:
            while chunk := stream.read(1024 * 1024):
                f.write(chunk)
        written.append(dest)
    return written

"""`distren pack` and `distren render`: a scene file becomes a job package.

Packing belongs to the backends: the backend that claims the source file's suffix
(`Backend.source_suffixes`, for example `.pov`/`.ini` for POV-Ray, `.blend` for Blender, and
whatever a plug-in installed through the `distren.backends` entry point declares) scans the
scene, checks its settings as the server will, and writes the package with `write_job`. This
module holds what every backend shares: the request (the options common to all backends, plus
the backend's own, declared by `Backend.pack_options`), the result, the choice of backend, and
the writing of the package.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .backends.ffmpeg import add_video
from .errors import DistrenError, PackError
from .files import atomic_file
from .job.spec import JOB_XML_NAME, JobSpec, parse_job_xml
from .tarballs import write_tar

if TYPE_CHECKING:
    from .backends.base import Backend


@dataclass
class PackRequest:
    """What `distren pack` asks of a backend: the options every backend takes (None: not
    given; a backend that cannot honour one raises PackError) and `options`, the values of
    the backend's own `pack_options` by their `dest`."""

    frames: str | None = None
    width: int | None = None
    height: int | None = None
    name: str | None = None
    priority: int = 0
    timeout: int | None = None
    chunk: int | None = None
    video: dict[str, str] | None = None
    options: dict[str, object] = field(default_factory=dict)


@dataclass
class PackResult:
    """A written package."""

    path: Path
    spec: JobSpec
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _as_pack_error(exc: DistrenError) -> PackError:
    return exc if isinstance(exc, PackError) else PackError(exc.message)


def write_job(spec: JobSpec, root: Path, files: list[str], out: Path | None, stem: str,
              video: dict[str, str] | None = None) -> Path:
    """The last step of every pack: add the video frame when asked, check the XML as the
    server will parse it, and write the package (`out`, or <stem>.distren.tar.gz in the
    current folder, or in `out` when it is a folder). Returns its path."""
    try:
        if video is not None:
            add_video(spec, video)
        xml = spec.to_xml()
        parse_job_xml(xml, "local", 1)
    except ValueError as exc:  # lxml refuses control characters in the name
        raise PackError(f"job name {spec.name!r}: {exc}") from None
    except DistrenError as exc:
        raise PackError(f"the job description would be refused: {exc.message}") from None
    default_name = f"{stem}.distren.tar.gz"
    target = Path(out) if out is not None else Path.cwd() / default_name
    if target.is_dir():
        target = target / default_name
    _write_package(target, xml, [(rel, root / rel) for rel in files])
    return target


def _write_package(target: Path, xml: bytes, entries: list[tuple[str, Path]]) -> None:
    """Write distrenjob.xml and the files into a gzip tarball at target, atomically."""
    with tempfile.TemporaryDirectory(prefix="distren-pack-") as scratch:
        xml_path = Path(scratch, JOB_XML_NAME)
        xml_path.write_bytes(xml)
        try:
            with atomic_file(target) as fh:
                write_tar(fh, [(JOB_XML_NAME, xml_path), *entries], compress="gz")
        except DistrenError as exc:
            raise PackError(f"cannot write {target}: {exc.message}") from None
        except OSError as exc:
            raise PackError(f"cannot write {target}: {exc}") from None


def backend_for(source: Path, backends: dict[str, "Backend"] | None = None) -> "Backend":
    """The backend that packs `source`, chosen by its suffix among the installed backends
    (built in and plug-ins). PackError naming the suffixes known when none claims it."""
    from .backends.base import find_backends

    backends = find_backends() if backends is None else backends
    suffix = Path(source).suffix.lower()
    known: list[str] = []
    for backend in backends.values():
        suffixes = tuple(s.lower() for s in backend.source_suffixes)
        if suffix in suffixes:
            return backend
        known += [f"{s} ({backend.name})" for s in suffixes]
    raise PackError(f"{Path(source).name}: no backend packs {suffix or 'files without a suffix'} files"
                    f"; known: {', '.join(known) or 'none'}")


def pack(source: Path, out: Path | None, request: PackRequest,
         backends: dict[str, "Backend"] | None = None) -> PackResult:
    """Pack `source` with the backend found for it; see `backend_for`."""
    source = Path(source)
    if not source.is_file():
        raise PackError(f"{source}: no such file")
    return backend_for(source, backends).pack(source, out, request)

"""distrenjob.xml: the job description inside every job package.

`parse_job_xml` turns hostile bytes into a checked `JobSpec` (no DTDs, size cap, the shipped
schema, then the checks a schema cannot make: duplicate frames, unknown frames in dependencies,
dependency cycles, a frame-count cap). `JobSpec.to_xml` writes the canonical form that
`distren pack` puts into packages. The format is documented in docs/job-format.md.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

from lxml import etree

from ..errors import BadJob, BadJobXML
from ..frames import group_ranges
from ..url import MAX_ID as MAX_ID_VALUE
from ..url import DistrenURL, parse_dependency

JOB_XML_NAME = "distrenjob.xml"
MAX_XML_BYTES = 1024 * 1024
DEFAULT_MAX_FRAMES = 100_000
# Frame-to-frame dependencies in one job, counted per frame (a range's <depends> counts once
# per frame of the range): enough for a video of every frame of a 100 000-frame job.
MAX_DEPENDENCIES = 200_000
# Where a package may not put files: the server mounts its own directories there.
RESERVED_NAMES = ("_distren",)
# The job of a package that is being written (before any server gave it an id): dependencies
# on its own frames are made with these and written as bare ids.
DRAFT_SERVER, DRAFT_JOB = "local", 0


def draft_dep(frame: int) -> DistrenURL:
    """A dependency on a frame of the package being written."""
    return DistrenURL(DRAFT_SERVER, DRAFT_JOB, frame)


@dataclass
class FrameSpec:
    """One frame of a job and the frames it waits for (same job: bare ids in the XML).
    `backend` None means the job's own (first) backend."""

    id: int
    depends: list[DistrenURL] = field(default_factory=list)
    backend: str | None = None


@dataclass
class JobSpec:
    """A parsed job description. Dependencies are full URLs; `server`/`job` in them for
    same-job dependencies are those given to `parse_job_xml` (placeholders before submit).
    `backend`/`settings` are the job's backend; `extra_backends` hold the settings of other
    backends that single frames use (an ffmpeg encode frame of a POV-Ray job)."""

    name: str
    backend: str
    settings: dict[str, str]
    frames: list[FrameSpec]
    priority: int = 0
    extra_backends: dict[str, dict[str, str]] = field(default_factory=dict)
    timeout: int | None = None   # seconds per render; None: the server's default
    chunk: int | None = None     # frames per renderer process; None: chosen by the renderer server

    def __reduce__(self):
        """A compact pickle (the intake worker sends the checked spec to the server): frame ids
        and dependencies as packed integer arrays. pickle.loads of 100,000 frame objects is one
        C call that holds the GIL for a second, stalling the server's event loop; rebuilding
        from arrays is Python code that lets the loop run."""
        ids = array("q", (f.id for f in self.frames))
        backends = sorted({f.backend for f in self.frames if f.backend})
        which = bytes(0 if f.backend is None else backends.index(f.backend) + 1 for f in self.frames) \
            if backends else b""
        deps = []
        for i, f in enumerate(self.frames):
            if f.depends:
                groups: dict[tuple, array] = {}
                for d in f.depends:
                    groups.setdefault((d.server, d.job), array("q")).append(d.frame)
                deps.append((i, [(srv, job, arr.tobytes()) for (srv, job), arr in groups.items()]))
        return (_unpack_spec, (self.name, self.backend, self.settings, self.priority, self.extra_backends,
                               self.timeout, ids.tobytes(), backends, which, deps, self.chunk))

    def frame_ids(self) -> list[int]:
        return [f.id for f in self.frames]

    def backends(self) -> dict[str, dict[str, str]]:
        """Every backend of the job with its settings, the job's own first."""
        return {self.backend: self.settings, **self.extra_backends}

    def frame_backend(self, frame: FrameSpec) -> str:
        return frame.backend or self.backend

    def frames_of(self, backend: str) -> list[int]:
        return [f.id for f in self.frames if self.frame_backend(f) == backend]

    def to_xml(self, server: str = DRAFT_SERVER, job: int = DRAFT_JOB) -> bytes:
        """The canonical XML; dependencies on frame `(server, job, F)` are written as bare `F`."""
        root = etree.Element("distrenjob", version="1")
        etree.SubElement(root, "name").text = self.name
        if self.priority:
            etree.SubElement(root, "priority").text = str(self.priority)
        if self.timeout:
            etree.SubElement(root, "timeout").text = str(self.timeout)
        if self.chunk:
            etree.SubElement(root, "chunk").text = str(self.chunk)
        for name, settings in self.backends().items():
            backend = etree.SubElement(root, "backend", name=name)
            for key, value in settings.items():
                etree.SubElement(backend, key).text = value
        frames_el = etree.SubElement(root, "frames")

        all_ids = sorted(f.id for f in self.frames)
        position = {f: i for i, f in enumerate(all_ids)}

        def dep_elements(frame: FrameSpec) -> tuple:
            """The frame's dependencies as XML elements: runs of this job's frames become
            <depends-range>, all of them <depends-all/>, the rest <depends>."""
            own = sorted({d.frame for d in frame.depends if d.server == server and d.job == job})
            out: list[tuple] = [("depends", str(d)) for d in frame.depends
                                if not (d.server == server and d.job == job)]
            if own and len(own) == len(all_ids) - 1 and frame.id not in own:
                return (("depends-all",), *out)
            run: list[int] = []

            def flush() -> None:
                if len(run) >= 3:
                    out.append(("depends-range", str(run[0]), str(run[-1])))
                else:
                    out.extend(("depends", str(f)) for f in run)
                run.clear()

            for f in own:
                if run:
                    gap = position[f] - position[run[-1]]
                    skips_self = gap == 2 and all_ids[position[f] - 1] == frame.id
                    if gap != 1 and not skips_self:
                        flush()
                run.append(f)
            flush()
            return tuple(out)

        # Frames with identical dependency lists and backends in consecutive runs become ranges.
        groups: dict[tuple, list[int]] = {}
        for frame in self.frames:
            key = (self.frame_backend(frame), dep_elements(frame))
            groups.setdefault(key, []).append(frame.id)
        for (backend, deps), ids in groups.items():
            extra = {} if backend == self.backend else {"backend": backend}
            for first, last in group_ranges(ids):
                if first == last:
                    el = etree.SubElement(frames_el, "frame", id=str(first), **extra)
                else:
                    el = etree.SubElement(frames_el, "range", first=str(first), last=str(last), **extra)
                for dep in deps:
                    if dep[0] == "depends":
                        etree.SubElement(el, "depends").text = dep[1]
                    elif dep[0] == "depends-all":
                        etree.SubElement(el, "depends-all")
                    else:
                        etree.SubElement(el, "depends-range", first=dep[1], last=dep[2])
        return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def _unpack_spec(name, backend, settings, priority, extra_backends, timeout, ids, backends, which, deps,
                 chunk=None) -> JobSpec:
    frame_ids = array("q")
    frame_ids.frombytes(ids)
    frames = [FrameSpec(i, [], backends[which[n] - 1] if which and which[n] else None)
              for n, i in enumerate(frame_ids)]
    for index, groups in deps:
        out = frames[index].depends
        for server, job, packed in groups:
            numbers = array("q")
            numbers.frombytes(packed)
            out.extend(DistrenURL(server, job, f) for f in numbers)
    return JobSpec(name, backend, settings, frames, priority, extra_backends, timeout, chunk)


@lru_cache(maxsize=1)
def _schema() -> etree.XMLSchema:
    xsd = resources.files("distren.job").joinpath("schema/distrenjob.xsd").read_bytes()
    return etree.XMLSchema(etree.fromstring(xsd, _parser()))


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _load(data: bytes) -> etree._Element:
    if len(data) > MAX_XML_BYTES:
        raise BadJobXML(f"{JOB_XML_NAME} is {len(data)} bytes; the limit is {MAX_XML_BYTES}")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BadJobXML(f"{JOB_XML_NAME} must not contain a DOCTYPE or entity declarations")
    try:
        tree = etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as exc:
        raise BadJobXML(f"{JOB_XML_NAME} is not well-formed XML: {exc}") from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise BadJobXML(f"{JOB_XML_NAME} must not contain a DOCTYPE")
    root = tree.getroot()
    schema = _schema()
    if not schema.validate(root):
        err = schema.error_log.last_error
        raise BadJobXML(f"{JOB_XML_NAME} does not match the job schema: line {err.line}: {err.message}")
    return root


def _backend_settings(el: etree._Element) -> dict[str, str]:
    settings: dict[str, str] = {}
    for child in el:
        if not isinstance(child.tag, str):
            continue
        if etree.QName(child).namespace is not None:
            raise BadJobXML(f"backend setting <{child.tag}> must not use a namespace")
        key = child.tag
        if len(child):
            raise BadJobXML(f"backend setting <{key}> must hold text only")
        if key in settings:
            raise BadJobXML(f"backend setting <{key}> is given twice")
        settings[key] = (child.text or "").strip()
    return settings


def parse_job_xml(
    data: bytes, server: str, job: int, max_frames: int = DEFAULT_MAX_FRAMES
) -> JobSpec:
    """Parse and check distrenjob.xml bytes. `server` and `job` name the job being created,
    so that bare dependency ids become full URLs. Raises BadJobXML or BadJob."""
    root = _load(data)
    name = root.findtext("name") or ""
    priority = int(root.findtext("priority") or 0)
    timeout = int(root.findtext("timeout")) if root.find("timeout") is not None else None
    chunk = int(root.findtext("chunk")) if root.find("chunk") is not None else None
    backends: dict[str, dict[str, str]] = {}
    for backend_el in root.findall("backend"):
        name_ = backend_el.get("name")
        if name_ in backends:
            raise BadJobXML(f"backend {name_!r} is given twice")
        backends[name_] = _backend_settings(backend_el)
    backend, settings = next(iter(backends.items()))

    # First the frame ids (compact dependencies name "every other frame" of the job), then
    # the dependencies, counted before they are made (a range of frames that each depend on
    # every other frame would otherwise be quadratic).
    elements = []
    count = 0
    for el in root.find("frames"):
        if not isinstance(el.tag, str):
            continue
        frame_backend = el.get("backend")
        if frame_backend is not None and frame_backend not in backends:
            raise BadJob(f"frames name backend {frame_backend!r}, which has no <backend> element")
        if frame_backend == backend:
            frame_backend = None
        if el.tag == "frame":
            first = last = int(el.get("id"))
        else:
            first, last = int(el.get("first")), int(el.get("last"))
            if first > last:
                raise BadJob(f"frame range {first}-{last} is empty: first must be <= last")
        count += last - first + 1
        if count > max_frames:
            raise BadJob(f"the job has more than {max_frames} frames")
        elements.append((el, first, last, frame_backend))
    all_ids = sorted(i for _, first, last, _ in elements for i in range(first, last + 1))

    def in_range(a: int, b: int) -> list[int]:
        return all_ids[bisect.bisect_left(all_ids, a):bisect.bisect_right(all_ids, b)]

    frames: list[FrameSpec] = []
    edges = 0
    for el, first, last, frame_backend in elements:
        ids = range(first, last + 1)
        explicit = [parse_dependency(d.text or "", server, job) for d in el.findall("depends")]
        spans = [(0, MAX_ID_VALUE)] if el.find("depends-all") is not None else []
        for r in el.findall("depends-range"):
            a, b = int(r.get("first")), int(r.get("last"))
            if a > b:
                raise BadJob(f"<depends-range first=\"{a}\" last=\"{b}\"> is empty: first must be <= last")
            spans.append((a, b))
        span_ids = sorted({i for a, b in spans for i in in_range(a, b)}) if spans else []
        per_frame = len(explicit) + len(span_ids)
        edges += per_frame * len(ids)
        if edges > MAX_DEPENDENCIES:
            raise BadJob(f"the job has more than {MAX_DEPENDENCIES} dependencies in all")
        for i in ids:
            deps = explicit + [DistrenURL(server, job, f) for f in span_ids if f != i]
            if span_ids and explicit:
                deps = list(dict.fromkeys(deps))  # the same dependency twice is one
            elif explicit:
                deps = list(dict.fromkeys(explicit))
            frames.append(FrameSpec(i, deps, frame_backend))

    seen: set[int] = set()
    for frame in frames:
        if frame.id in seen:
            raise BadJob(f"frame {frame.id} is listed twice")
        seen.add(frame.id)
    extra = {k: v for k, v in backends.items() if k != backend}
    spec = JobSpec(name=name, backend=backend, settings=settings, frames=frames, priority=priority,
                   extra_backends=extra, timeout=timeout, chunk=chunk)
    check_same_job_deps(spec, server, job)
    return spec


def check_same_job_deps(spec: JobSpec, server: str, job: int) -> None:
    """Unknown frames and cycles among the job's own frames; raises BadJob naming them."""
    ids = {f.id for f in spec.frames}
    graph: dict[int, list[int]] = {}
    for frame in spec.frames:
        local = []
        for dep in frame.depends:
            if dep.server == server and dep.job == job:
                if dep.frame not in ids:
                    raise BadJob(f"frame {frame.id} depends on frame {dep.frame}, which the job does not have")
                local.append(dep.frame)
        graph[frame.id] = local
    cycle = find_cycle(graph)
    if cycle:
        raise BadJob("dependency cycle: " + " -> ".join(str(f) for f in cycle))


def find_cycle(graph: dict[int, list[int]]) -> list[int] | None:
    """A cycle in a dependency graph as a closed path [a, b, ..., a], or None. Iterative DFS."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in graph:
        if colour[start] != WHITE:
            continue
        path: list[int] = [start]
        iters = [iter(graph[start])]
        colour[start] = GREY
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = BLACK
                iters.pop()
            elif colour[nxt] == GREY:
                return path[path.index(nxt):] + [nxt]
            elif colour[nxt] == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                iters.append(iter(graph[nxt]))
    return None

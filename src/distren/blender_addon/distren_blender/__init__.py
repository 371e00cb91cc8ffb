"""distren for Blender: render the open file on a distren render farm.

Written by `distren blender-addon`; see docs/blender-addon.md. It runs inside Blender's own
Python, where distren is not installed, so it uses the standard library and bpy only.

Render Properties > distren: frames (default: the scene's frame range), engine, samples and a
Submit button (`bpy.ops.distren.submit()`). Submitting saves a copy of the open file as it is
now (unsaved changes included; the file itself is not touched), packs it with the external
files it uses (textures, sequences, UDIM tiles, sounds, fonts, libraries, caches) at their
paths relative to the .blend's folder, exactly as `distren pack` does, posts the package to the
server set in the add-on's preferences, and then follows the job's progress with a timer
(the HTTP request runs in a thread, so the interface never waits for it).

The package follows the server's rules (src/distren/backends/blender/backend.py and
docs/job-format.md): settings `blend`, `engine`, `samples`, `format`; frames 0-1048574, at most
100000; every file inside the .blend's folder. What the server would refuse is refused here
first, naming every problem.
"""

bl_info = {
    "name": "distren",
    "author": "distren developers",
    "version": (0, 1, 0),
    "blender": (3, 0, 0),
    "location": "Properties > Render > distren",
    "description": "Render the open file on a distren render farm: pack, submit, follow the job",
    "category": "Render",
}

import gzip
import http.client
import io
import ipaddress
import json
import os
import re
import shutil
import ssl
import tarfile
import tempfile
import threading
import urllib.parse
import xml.etree.ElementTree as ET

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

# The server's limits (src/distren/backends/blender/backend.py, src/distren/job/spec.py).
ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH")
FORMATS = ("PNG", "JPEG", "OPEN_EXR", "OPEN_EXR_MULTILAYER", "TIFF", "BMP", "TARGA")
DEFAULT_FORMAT = "PNG"
MAX_FRAME = 1048574
MAX_FRAMES = 100_000
MAX_SAMPLES = 65536
MAX_NAME = 200
MAX_PATH_CHARS = 1024
MAX_MEMBER_CHARS = 255
MAX_DEPTH = 32
MAX_DIRECTORY_FILES = 10_000
RESERVED = "_distren"
JOB_XML = "distrenjob.xml"
HINT = ("in Blender use File > External Data > Make Paths Relative (after moving the files into "
        "the .blend's folder), or File > External Data > Pack Resources")

SUBMIT_TIMEOUT = 120.0   # seconds without progress on one socket operation of the upload
POLL_TIMEOUT = 10.0
POLL_SECONDS = 2.0
ENDED = ("done", "failed", "cancelled")


class Refused(Exception):
    """Something the add-on will not send, or the server refused; the message says what."""


# ---------------------------------------------------------------------------------------------
# Frames, names and the job description (plain Python)


def parse_frames(text):
    """A frame list as `distren pack --frames` takes it ("1-40", "0,5,1000"): ids in the order
    written, each 0..MAX_FRAME, at most MAX_FRAMES, none twice."""
    if not text.strip():
        raise Refused("the frame list is empty; give frames such as 1-40 or 0,5,1000")
    spans, count = [], 0
    for item in text.split(","):
        token = item.strip()
        match = re.fullmatch(r"(0|[1-9][0-9]{0,9})(?:-(0|[1-9][0-9]{0,9}))?", token)
        if match is None:
            raise Refused(f"frames {text!r}: {token!r} is not a frame or a range such as 1-40")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise Refused(f"frames {text!r}: range {token!r} is backwards")
        if last > MAX_FRAME:
            raise Refused(f"frames {text!r}: frame {last} is outside Blender's frame range 0-{MAX_FRAME}")
        count += last - first + 1
        if count > MAX_FRAMES:
            raise Refused(f"frames {text!r}: more than {MAX_FRAMES} frames")
        spans.append((first, last))
    frames, seen = [], set()
    for first, last in spans:
        for frame in range(first, last + 1):
            if frame in seen:
                raise Refused(f"frames {text!r}: frame {frame} is listed more than once")
            seen.add(frame)
            frames.append(frame)
    return frames


def scene_frames(start, end, step):
    """The scene's own frames, as `distren pack` takes them when no frames are given."""
    if start < 0:
        raise Refused(f"the scene starts at frame {start}; distren frames are >= 0, give frames instead")
    end = min(end, MAX_FRAME)
    if end < start:
        raise Refused(f"the scene's frame range {start}-{end} is empty; give frames instead")
    step = max(1, step)
    if (end - start) // step + 1 > MAX_FRAMES:
        raise Refused(f"the scene has frames {start}-{end}: more than {MAX_FRAMES}; give frames instead")
    return list(range(start, end + 1, step))


def runs(frames):
    """Sorted runs of consecutive ids as (first, last) pairs."""
    out = []
    for frame in sorted(frames):
        if out and frame == out[-1][1] + 1:
            out[-1] = (out[-1][0], frame)
        else:
            out.append((frame, frame))
    return out


def job_name(stem):
    """The job's <name>: the .blend's stem, without characters XML cannot hold, 1-200 long."""
    name = "".join(c if c in "\t\n\r" or (ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F
                                          and not 0xD800 <= ord(c) <= 0xDFFF) else "_" for c in stem)
    return name[:MAX_NAME] or "blend"


def job_xml(name, settings, frames):
    """distrenjob.xml (docs/job-format.md): the name, the blender backend's settings in order,
    the frames as sorted <frame>/<range> elements. ElementTree escapes the text."""
    root = ET.Element("distrenjob", version="1")
    ET.SubElement(root, "name").text = name
    backend = ET.SubElement(root, "backend", name="blender")
    for key, value in settings.items():
        ET.SubElement(backend, key).text = value
    frames_el = ET.SubElement(root, "frames")
    for first, last in runs(frames):
        if first == last:
            ET.SubElement(frames_el, "frame", id=str(first))
        else:
            ET.SubElement(frames_el, "range", first=str(first), last=str(last))
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n"


def member_problem(rel):
    """Why the server would refuse `rel` as a member name (tar rules), or None."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in rel):
        return "its name contains a control character"
    if "\\" in rel:
        return "its name contains a backslash"
    if len(rel) > MAX_MEMBER_CHARS:
        return f"its path is longer than {MAX_MEMBER_CHARS} characters"
    parts = rel.split("/")
    if len(parts) > MAX_DEPTH:
        return f"it is more than {MAX_DEPTH} folders deep"
    if parts[0] == RESERVED:
        return f"the {RESERVED} folder is reserved for distren"
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    return None


def blend_problem(name):
    """Why the server would refuse `name` as the <blend> setting, or None."""
    problem = member_problem(name)
    if problem is None and '"' in name:
        problem = "its name contains a double quote"
    if problem is None and len(name) > MAX_PATH_CHARS:
        problem = f"its name is longer than {MAX_PATH_CHARS} characters"
    if problem is None and name == JOB_XML:
        problem = "it has the name of the job description"
    return problem


# ---------------------------------------------------------------------------------------------
# The files a scene uses


def used_files():
    """Every external file the open file uses, as Blender reports them: dicts with kind, name
    (of the data-block), raw (the path as stored), path (absolute, `//` resolved against the
    .blend's folder or its library's), library (its path, or None), sequence (numbered
    frames), tiles (UDIM numbers) and directory (a folder, such as a baked cache). Packed
    files travel inside the .blend and are left out."""
    entries, covered = [], set()

    def add(kind, owner, raw, sequence=False, tiles=(), directory=False):
        if not raw:
            return
        lib = getattr(owner, "library", None)
        path = os.path.normpath(bpy.path.abspath(raw, library=lib))
        covered.add(path)
        entries.append({"kind": kind, "name": getattr(owner, "name", ""), "raw": raw, "path": path,
                        "library": lib.filepath if lib is not None else None, "sequence": sequence,
                        "tiles": list(tiles), "directory": directory})

    for image in bpy.data.images:
        if image.source in {"FILE", "SEQUENCE", "MOVIE", "TILED"} and image.packed_file is None \
                and len(image.packed_files) == 0:
            tiles = [t.number for t in image.tiles] if image.source == "TILED" else ()
            add("image", image, image.filepath, sequence=image.source == "SEQUENCE", tiles=tiles)
    for clip in bpy.data.movieclips:
        add("movie clip", clip, clip.filepath, sequence=clip.source == "SEQUENCE")
    for sound in bpy.data.sounds:
        if sound.packed_file is None:
            add("sound", sound, sound.filepath)
    for font in bpy.data.fonts:
        if font.packed_file is None and font.filepath != "<builtin>":
            add("font", font, font.filepath)
    for library in bpy.data.libraries:
        if library.packed_file is None:
            add("library", library, library.filepath)
    for cache in bpy.data.cache_files:
        add("cache file", cache, cache.filepath, sequence=cache.is_sequence)
    for volume in bpy.data.volumes:
        if volume.packed_file is None:
            add("volume", volume, volume.filepath, sequence=volume.is_sequence)
    for scene in bpy.data.scenes:
        if scene.sequence_editor is None:
            continue
        editor = scene.sequence_editor
        # Blender 4.4 renamed sequences_all to strips_all (5.0 dropped the old name).
        for strip in (editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all):
            if strip.type == "IMAGE":
                covered.add(os.path.normpath(bpy.path.abspath(strip.directory)))
                for element in strip.elements:
                    add("image strip", strip, strip.directory.rstrip("/") + "/" + element.filename)
            elif strip.type == "MOVIE":
                add("movie strip", strip, strip.filepath)

    # Whatever else Blender knows of (modifier caches, simulation folders, ...). The stored form
    # comes from the same walk without `absolute`, so that absolute paths can be told apart.
    texts = {os.path.normpath(bpy.path.abspath(t.filepath)) for t in bpy.data.texts if t.filepath}
    full = bpy.utils.blend_paths(absolute=True, packed=False, local=False)
    stored = bpy.utils.blend_paths(absolute=False, packed=False, local=False)
    if len(stored) != len(full):
        stored = full
    for path, raw in zip(full, stored):
        normal = os.path.normpath(path)
        if normal not in covered and normal not in texts:
            covered.add(normal)
            entries.append({"kind": "file", "name": "", "raw": raw, "path": normal, "library": None,
                            "sequence": False, "tiles": [], "directory": path.endswith(("/", os.sep))})
    return entries


def expand(entry):
    """The concrete files of one entry: its UDIM tiles, every frame of a numbered sequence
    found on disk, or its one path."""
    path = entry["path"]
    if entry["tiles"] and ("<UDIM>" in path or "<UVTILE>" in path):
        out = []
        for n in entry["tiles"]:
            u, v = (n - 1001) % 10 + 1, (n - 1001) // 10 + 1
            out.append(path.replace("<UDIM>", str(n)).replace("<UVTILE>", f"u{u}_v{v}"))
        return out
    if entry["sequence"]:
        folder, name = os.path.split(path)
        match = re.fullmatch(r"(.*?)([0-9]+)([^0-9]*)", name)
        if match and os.path.isdir(folder):
            pattern = re.compile(re.escape(match.group(1)) + r"[0-9]+" + re.escape(match.group(3)))
            found = sorted(os.path.join(folder, n) for n in os.listdir(folder) if pattern.fullmatch(n))
            if found:
                return found
    return [path]


def sort_files(entries, root):
    """(relative paths to pack, problems, warnings) for the entries, against the .blend's
    folder `root`. Problems: a file that is missing, outside root, stored as an absolute path
    (the farm renders in another folder, where it is not), or whose name the server refuses.
    A cache folder that does not exist yet is a warning."""
    root = os.path.realpath(root)
    found, problems, warnings = set(), [], []
    for entry in entries:
        what = f"{entry['kind']} {entry['name']!r}" if entry["name"] else entry["kind"]
        if entry["library"]:
            what += f" (from library {entry['library']})"
        absolute = os.path.isabs(entry["raw"]) and not entry["raw"].startswith("//")
        for path in expand(entry):
            full = os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))
            shown = entry["raw"] if path == entry["path"] else path
            rel = os.path.relpath(full, root)
            if rel == ".." or rel.startswith("../") or os.path.isabs(rel):
                gone = "" if os.path.exists(full) else ", and it does not exist"
                problems.append(f"{what}: {shown}: outside the .blend's folder{gone}")
                continue
            if absolute:
                problems.append(f"{what}: {shown}: an absolute path, which the farm cannot follow "
                                f"(it renders the file in another folder)")
                continue
            if entry["directory"]:
                if os.path.isdir(full):
                    found |= folder_files(full, root, what, problems)
                else:
                    warnings.append(f"{what}: folder {shown} does not exist (a cache not baked yet?)")
                continue
            problem = file_problem(full, rel, root)
            if problem:
                problems.append(f"{what}: {shown}: {problem}")
            else:
                found.add(rel.replace(os.sep, "/"))
    return found, problems, warnings


def file_problem(full, rel, root):
    """Why `full` (at `rel` in root) cannot be packed, or None."""
    if not os.path.lexists(full):
        return "no such file"
    real = os.path.realpath(full)
    if real != root and not real.startswith(root + os.sep):
        return "a link that leads out of the .blend's folder"
    if not os.path.isfile(real):
        return "not a regular file"
    return member_problem(rel.replace(os.sep, "/"))


def folder_files(folder, root, what, problems):
    """Every file under a folder the scene reads (a baked cache), as relative paths."""
    found = set()
    for base, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            if len(found) >= MAX_DIRECTORY_FILES:
                problems.append(f"{what}: {folder}: more than {MAX_DIRECTORY_FILES} files")
                return found
            full = os.path.join(base, name)
            rel = os.path.relpath(full, root)
            problem = file_problem(full, rel, root)
            if problem:
                problems.append(f"{what}: {rel}: {problem}")
            else:
                found.add(rel.replace(os.sep, "/"))
    return found


# ---------------------------------------------------------------------------------------------
# The package and the server


def write_package(target, xml, members):
    """A gzip tarball at `target`: distrenjob.xml, then members (name, path) in the order given.
    Deterministic as `distren pack`'s: PAX, mtime 0, owner 0, mode 0644, no time or name in the
    gzip header."""
    with open(target, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        def info(name, size):
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = size, 0o644, 0
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            return member

        tar.addfile(info(JOB_XML, len(xml)), io.BytesIO(xml))
        for name, path in members:
            with open(path, "rb") as fh:
                tar.addfile(info(name, os.fstat(fh.fileno()).st_size), fh)


def server_url(text):
    """The server's base URL, checked: http(s)://host[:port][/prefix]."""
    url = text.strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"the server {text!r} in the add-on's preferences is not an http:// or https:// URL")
    return url


def is_loopback(url):
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(ca_file):
    """The certificate check of an https:// server: the CA file of the preferences, else
    $DISTREN_CA_FILE, else the system's authorities (as the distren CLI does). A CA file
    replaces the system's authorities: a farm with its own CA trusts only that CA."""
    ca_file = ca_file or os.environ.get("DISTREN_CA_FILE", "")
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ValueError) as exc:
        raise Refused(f"cannot use the CA file {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None


def request(method, url, access, package=None, timeout=POLL_TIMEOUT):
    """An HTTP request to the server (with `package`, the path of a job package: its bytes as
    the body); the answer's JSON. `access` is (token, CA file) from the preferences, read
    by the caller in Blender's main thread (`_access()`). Raises Refused with the server's own message (its JSON body
    {"error": {"code", "message"}}), or saying why it cannot be reached.

    A server that refuses an upload (a wrong token, a package too large) answers before it
    has read the body and closes the connection: the answer is read even when sending the rest
    of the body fails."""
    parts = urllib.parse.urlsplit(url)
    token, ca_file = access
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=tls_context(ca_file))
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest(method, target)
        conn.putheader("Accept", "application/json")
        if token:
            conn.putheader("Authorization", f"Bearer {token}")
        if package is not None:
            conn.putheader("Content-Type", "application/gzip")
            conn.putheader("Content-Length", str(os.path.getsize(package)))
        conn.endheaders()
        unsent = None
        if package is not None:
            with open(package, "rb") as body:
                try:
                    while chunk := body.read(1024 * 1024):
                        conn.send(chunk)
                except (BrokenPipeError, ConnectionResetError) as exc:
                    unsent = exc
        try:
            answer = conn.getresponse()
            status, text = answer.status, answer.read(1024 * 1024).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            if unsent is not None:
                raise unsent from None
            raise
    except ssl.SSLCertVerificationError as exc:
        raise Refused(f"the distren server at {url} has a TLS certificate this Blender does not trust "
                      f"({exc.verify_message}): set the CA File in the add-on's preferences") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Refused(f"cannot reach the distren server at {url}: {exc}") from None
    finally:
        conn.close()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if status >= 400:
        try:
            detail = f"{data['error']['message']} ({status} {data['error']['code']})"
        except (KeyError, TypeError):
            detail = f"HTTP {status}: {text.strip()[:200]}"
        verb = "refused the job" if method == "POST" else "answered"
        raise Refused(f"the distren server {verb}: {detail}")
    if not isinstance(data, dict):
        raise Refused(f"the distren server at {url} did not answer with JSON (HTTP {status}): {text.strip()[:200]}")
    return data


# ---------------------------------------------------------------------------------------------
# What this Blender session submitted, and its progress

# The last job submitted in this session: shown by the panel, refreshed by a timer.
STATUS = {"url": "", "api": "", "name": "", "state": "", "done": 0, "failed": 0, "total": 0,
          "error": "", "package": ""}
_POLL = {"thread": None, "api": "", "box": None}


def status():
    """A copy of the last job's status (for scripts and tests)."""
    return dict(STATUS)


def _apply(job):
    counts = job.get("frames") or {}
    STATUS.update(state=str(job.get("state", "")), done=int(counts.get("done", 0)),
                  failed=int(counts.get("failed", 0)), total=int(job.get("total_frames", 0)), error="")


def _access():
    """(token, CA file) of the preferences, for `request`."""
    prefs = addon_prefs()
    return prefs.token.strip(), bpy.path.abspath(prefs.ca_file.strip()) if prefs.ca_file.strip() else ""


def refresh():
    """Ask the server for the last job's state now (blocks for at most POLL_TIMEOUT)."""
    if not STATUS["api"]:
        raise Refused("no job was submitted from this Blender session")
    try:
        _apply(request("GET", STATUS["api"], _access()))
    except Refused as exc:
        STATUS["error"] = str(exc)
        raise
    _redraw()


def _fetch(api, access, box):
    try:
        box["answer"] = ("job", request("GET", api, access))
    except Refused as exc:
        box["answer"] = ("error", str(exc))


def _timer():
    """Blender timer: fetch the job in a thread, take the answer on a later tick. Stops when
    the job has ended or another job took its place."""
    if not STATUS["api"]:
        return None
    thread = _POLL["thread"]
    if thread is None:
        box = {"answer": None}
        thread = threading.Thread(target=_fetch, args=(STATUS["api"], _access(), box), daemon=True)
        _POLL.update(thread=thread, api=STATUS["api"], box=box)
        thread.start()
        return 0.2
    if thread.is_alive():
        return 0.2
    box, api = _POLL["box"], _POLL["api"]
    _POLL.update(thread=None, box=None)
    if api == STATUS["api"] and box["answer"] is not None:
        kind, value = box["answer"]
        if kind == "job":
            _apply(value)
        else:
            STATUS["error"] = value
        _redraw()
    return None if STATUS["state"] in ENDED and api == STATUS["api"] else POLL_SECONDS


def _follow():
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=0.5, persistent=True)


def _redraw():
    wm = getattr(bpy.context, "window_manager", None)
    for window in (wm.windows if wm is not None else ()):
        for area in window.screen.areas:
            if area.type == "PROPERTIES":
                area.tag_redraw()


# ---------------------------------------------------------------------------------------------
# Submitting


def addon_prefs():
    return bpy.context.preferences.addons[__name__].preferences


def version_tuple(text):
    """(major, minor) of a version such as "3.4.1" or "4.5.15 LTS", or None."""
    match = re.match(r"([0-9]+)\.([0-9]+)", str(text or ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


def farm_blender_problem(info, ours):
    """(refusal, warning) about the Blender that renders on the farm, from the server's
    GET /api/v1/server answer: a file saved by a newer Blender than the renderer's may not
    load there (Blender 3.4 crashes on files of 4.5). Peers do not say their versions: with
    peers, only a warning."""
    theirs = version_tuple(((info.get("backends") or {}).get("blender") or {}).get("version"))
    if theirs is None or theirs >= tuple(ours[:2]):
        return None, None
    text = (f"this Blender is {ours[0]}.{ours[1]}, and the server renders with Blender "
            f"{theirs[0]}.{theirs[1]}, which cannot read files saved by newer versions reliably")
    if info.get("peers"):
        return None, text + " (its peers may have a newer Blender)"
    return text + f"; use Blender {theirs[0]}.{theirs[1]} here, or a newer Blender on the farm", None


def job_settings(scene, options):
    """(settings, frames, warnings) for the scene and the panel's options, checked as the
    server will check them."""
    settings, warnings = {}, []
    engine = None if options.engine == "FILE" else options.engine
    effective = engine or scene.render.engine
    if effective not in ENGINES:
        raise Refused(f"the scene renders with {effective!r}, which distren's Blender cannot use; "
                      f"choose {', '.join(ENGINES)} as the engine")
    if engine is not None:
        settings["engine"] = engine
    if options.samples > 0:
        settings["samples"] = str(min(int(options.samples), MAX_SAMPLES))
        if effective == "BLENDER_WORKBENCH":
            warnings.append("samples have no effect with the Workbench engine")
    file_format = scene.render.image_settings.file_format
    if file_format in FORMATS:
        settings["format"] = file_format
    else:
        settings["format"] = DEFAULT_FORMAT
        warnings.append(f"the scene renders to {file_format}, which is not a still-image format "
                        f"distren renders; frames are written as {DEFAULT_FORMAT}")
    if scene.camera is None:
        raise Refused(f"scene {scene.name!r} has no camera, so Blender cannot render it")
    if effective == "CYCLES" and getattr(scene, "cycles", None) is not None and scene.cycles.use_denoising \
            and any(layer.cycles.use_denoising for layer in scene.view_layers):
        warnings.append("Cycles denoising is on; distren renders without it (every worker must give "
                        "the same pixels)")
    if options.use_scene_range:
        frames = scene_frames(scene.frame_start, scene.frame_end, scene.frame_step)
    else:
        frames = parse_frames(options.frames)
    return settings, frames, warnings


def submit(context, keep=""):
    """Pack the open file and submit it. Returns (the job as the server answered, warnings,
    the number of files). Raises Refused."""
    prefs = addon_prefs()
    server = server_url(prefs.server)
    if not getattr(bpy.app, "online_access", True) and not is_loopback(server):
        how = ("it is off for this session" if getattr(bpy.app, "online_access_overriden", False)
               else "turn on Preferences > System > Network > Allow Online Access")
        raise Refused(f"Blender may not use the network ({how}); the server {server} is not on this machine")
    if not bpy.data.filepath:
        raise Refused("save the .blend first: its folder is the job folder, where its textures are found")
    source = os.path.abspath(bpy.path.abspath(bpy.data.filepath))
    root, blend = os.path.split(source)
    if not blend.lower().endswith(".blend"):
        raise Refused(f"{blend}: expected a file ending in .blend")
    problem = blend_problem(blend)
    if problem:
        raise Refused(f"{blend}: the server would refuse this file name: {problem}; save it under another name")
    scene = context.scene
    settings, frames, warnings = job_settings(scene, scene.distren)
    settings = {"blend": blend, **settings}
    refusal, warning = farm_blender_problem(request("GET", server + "/api/v1/server", _access()),
                                            bpy.app.version)
    if refusal:
        raise Refused(refusal)
    warnings += [warning] if warning else []

    found, problems, file_warnings = sort_files(used_files(), root)
    warnings += file_warnings
    if problems:
        raise Refused(f"cannot pack {blend}: {len(problems)} file(s) missing or outside the .blend's folder: "
                      + "; ".join(problems) + f". To fix: {HINT}")
    found.discard(blend)
    if JOB_XML in found:
        raise Refused(f"{JOB_XML}: the scene uses a file with the name of the job description; rename it")
    xml = job_xml(job_name(os.path.splitext(blend)[0]), settings, frames)

    scratch = tempfile.mkdtemp(prefix="distren-addon-")
    try:
        copy = os.path.join(scratch, blend)
        # A copy of the file as it is now; paths stay as stored (`//` relative to the .blend's
        # folder), and in the package the copy sits where the original does.
        try:
            bpy.ops.wm.save_as_mainfile(filepath=copy, copy=True, relative_remap=False, check_existing=False)
        except RuntimeError as exc:
            raise Refused(f"cannot save a copy of the file: {exc}") from None
        package = keep or os.path.join(scratch, "package.tar.gz")
        members = [(blend, copy)] + [(rel, os.path.join(root, rel)) for rel in sorted(found)]
        write_package(package, xml, members)
        job = request("POST", server + "/api/v1/jobs", _access(), package=package,
                      timeout=SUBMIT_TIMEOUT)
    except OSError as exc:
        raise Refused(f"cannot write the package: {exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    STATUS.update(url=str(job.get("url", "")), api=f"{server}/api/v1/jobs/{int(job['id'])}",
                  name=str(job.get("name", "")), error="", package=keep)
    _apply(job)
    return job, warnings + [str(w) for w in job.get("warnings", [])], len(members)


# ---------------------------------------------------------------------------------------------
# Blender's classes


class DistrenPreferences(bpy.types.AddonPreferences):
    bl_idname = __name__

    server: StringProperty(name="Server", default="http://127.0.0.1:7780",
                           description="The distren server's address, such as http://farm.local:7780")
    token: StringProperty(name="Token", subtype="PASSWORD", default="",
                          description="The server's client token (distren serve --client-token-file); "
                                      "empty when the server needs none")
    ca_file: StringProperty(name="CA File", subtype="FILE_PATH", default="",
                            description="For an https:// server whose certificate a farm CA signed: that CA's "
                                        "certificate (PEM). Empty: $DISTREN_CA_FILE, else the system's authorities")

    def draw(self, context):
        self.layout.prop(self, "server")
        self.layout.prop(self, "token")
        self.layout.prop(self, "ca_file")


class DistrenSettings(bpy.types.PropertyGroup):
    use_scene_range: BoolProperty(name="Scene's Frame Range", default=True,
                                  description="Render the scene's frames (start to end, in its steps)")
    frames: StringProperty(name="Frames", default="",
                           description="Frames such as 1-40 or 0,5,1000")
    engine: EnumProperty(name="Engine", default="FILE", items=[
        ("FILE", "Scene's Engine", "The engine the scene renders with"),
        ("CYCLES", "Cycles", ""),
        ("BLENDER_EEVEE", "Eevee", ""),
        ("BLENDER_WORKBENCH", "Workbench", ""),
    ])
    samples: IntProperty(name="Samples", default=0, min=0, max=MAX_SAMPLES,
                         description="Render samples (Cycles, Eevee); 0: the scene's")


class DISTREN_OT_submit(bpy.types.Operator):
    """Render the open file on the distren server: pack it with its external files and submit it"""

    bl_idname = "distren.submit"
    bl_label = "Submit to distren"

    package: StringProperty(name="Keep Package", default="", subtype="FILE_PATH",
                            options={"HIDDEN", "SKIP_SAVE"},
                            description="Also keep the job package at this path")

    def execute(self, context):
        try:
            job, warnings, files = submit(context, self.package)
        except Refused as exc:
            STATUS["error"] = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for warning in warnings:
            self.report({"WARNING"}, warning)
        self.report({"INFO"}, f"distren: submitted {job.get('url')} ({job.get('total_frames')} frames, "
                              f"{files} files)")
        _follow()
        return {"FINISHED"}


class DISTREN_OT_refresh(bpy.types.Operator):
    """Ask the distren server for the job's progress now"""

    bl_idname = "distren.refresh"
    bl_label = "Refresh"

    def execute(self, context):
        try:
            refresh()
        except Refused as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"distren: {STATUS['url']} {STATUS['state']}, {STATUS['done']}/"
                              f"{STATUS['total']} frames done" + (f", {STATUS['failed']} failed"
                                                                   if STATUS["failed"] else ""))
        return {"FINISHED"}


class DISTREN_PT_render(bpy.types.Panel):
    bl_label = "distren"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        scene = context.scene
        options = scene.distren
        layout.label(text=f"Server: {addon_prefs().server}")
        layout.prop(options, "use_scene_range")
        if options.use_scene_range:
            step = f" step {scene.frame_step}" if scene.frame_step != 1 else ""
            layout.label(text=f"Frames {scene.frame_start}-{scene.frame_end}{step}")
        else:
            layout.prop(options, "frames")
        layout.prop(options, "engine")
        layout.prop(options, "samples")
        layout.operator(DISTREN_OT_submit.bl_idname, icon="RENDER_ANIMATION")
        if STATUS["url"]:
            box = layout.box()
            box.label(text=f"Job {STATUS['url']}: {STATUS['state'] or '...'}")
            text = f"{STATUS['done']}/{STATUS['total']} frames done" + (
                f", {STATUS['failed']} failed" if STATUS["failed"] else "")
            if hasattr(box, "progress"):  # Blender 4.0 and later
                box.progress(factor=STATUS["done"] / max(1, STATUS["total"]), type="BAR", text=text)
            else:
                box.label(text=text)
            box.operator(DISTREN_OT_refresh.bl_idname, icon="FILE_REFRESH")
        if STATUS["error"]:
            layout.label(text=STATUS["error"][:300], icon="ERROR")


CLASSES = (DistrenPreferences, DistrenSettings, DISTREN_OT_submit, DISTREN_OT_refresh, DISTREN_PT_render)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.distren = PointerProperty(type=DistrenSettings)


def unregister():
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
    del bpy.types.Scene.distren
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)

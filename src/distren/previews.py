"""Frame previews: a PNG of at most PREVIEW_SIZE pixels on its long side, made from a done
frame's image (or, for a video, its first frame), for the dashboard's grid and for clients.

A frame's output is a tarball that a renderer, possibly on a peer, wrote: its image is as
hostile as any input. So a preview is made in a worker process of its own (a crash or a
runaway decoder costs that worker, not the server), with Pillow's pixel cap (a decompression
bomb is refused), from one member of bounded size; a video's still comes from ffmpeg in the
render sandbox. What is made is cached on disk under the output's hash (outputs never change:
a retried frame gets a new output, so a new hash), so a preview is made once.

Formats: whatever Pillow reads (PNG 8 and 16 bit, JPEG, TIFF, BMP, TGA, PPM, WebP, GIF, ...),
OpenEXR through the `OpenEXR` package (linear values, clamped to 0..1 and shown with a gamma of
2.2), and videos (MP4, WebM, MKV, MOV) through ffmpeg. Anything else, or an output without an
image, gets NoPreview (HTTP 404, code `no_preview`) naming why.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import warnings
from pathlib import Path, PurePosixPath

from .errors import DistrenError
from .tarballs import iter_tar_files

PREVIEW_SIZE = 256
VERSION = "p1"                     # part of the cache key and the ETag: a new version remakes them
MAX_MEMBER_BYTES = 1 << 30         # an image larger than this is not previewed
MAX_PIXELS = 16384 * 16384         # the largest image a backend may render
VIDEO_TIMEOUT = 60.0
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".tga", ".ppm", ".pgm", ".pbm",
                            ".pnm", ".webp", ".gif", ".hdr", ".exr", ".sgi", ".rgb", ".jp2", ".dpx", ".cin"})
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mkv", ".mov", ".avi"})


class NoPreview(DistrenError):
    status = 404
    code = "no_preview"


def choose_member(names: list[str]) -> str | None:
    """The output file a preview shows: the first image in archive order, else the first
    video (pure logic)."""
    for kinds in (IMAGE_SUFFIXES, VIDEO_SUFFIXES):
        for name in names:
            if PurePosixPath(name).suffix.lower() in kinds:
                return name
    return None


def make_preview(output_tar: Path, tmp_dir: Path) -> bytes:
    """The preview PNG of a frame output tarball. Raises NoPreview. Runs in a worker process."""
    with tempfile.TemporaryDirectory(prefix="preview-", dir=tmp_dir) as scratch:
        source = _extract_member(output_tar, Path(scratch))
        if source.suffix.lower() in VIDEO_SUFFIXES:
            source = _video_still(source, Path(scratch))
        return _thumbnail(source)


def _extract_member(output_tar: Path, scratch: Path) -> Path:
    entries = [(name, info.size) for name, info, _ in iter_tar_files(output_tar)]
    name = choose_member([n for n, _ in entries])
    if name is None:
        raise NoPreview("the frame's output has no image or video")
    size = dict(entries)[name]
    if size > MAX_MEMBER_BYTES:
        raise NoPreview(f"{name} is larger than {MAX_MEMBER_BYTES} bytes")
    target = scratch / ("source" + PurePosixPath(name).suffix.lower())
    for member, _info, data in iter_tar_files(output_tar):
        if member == name:
            with open(target, "wb") as out:
                while chunk := data.read(1 << 20):
                    out.write(chunk)
            return target
    raise NoPreview(f"{name} vanished from the frame's output")


def _video_still(video: Path, scratch: Path) -> Path:
    """The video's first frame as PNG, by ffmpeg in the render sandbox (no network, the video
    read-only), within VIDEO_TIMEOUT."""
    from .backends.base import run_process
    from .backends.sandbox import JOB_DIR, OUT_DIR, Sandbox, SandboxUnavailable, prepare_scene

    scene, out = scratch / "scene", scratch / "out"
    scene.mkdir()
    out.mkdir()
    os.replace(video, scene / video.name)
    prepare_scene(scene)
    try:
        argv = Sandbox(scene=scene, out=out, deps=scratch / "scene").argv(
            ["ffmpeg", "-nostdin", "-v", "error", "-i", f"{JOB_DIR}/{video.name}", "-frames:v", "1",
             f"{OUT_DIR}/still.png"])
    except SandboxUnavailable as exc:
        raise NoPreview(f"cannot run ffmpeg: {exc}") from None
    # the renderers' own runner: its process group, killed whole at the timeout
    try:
        rc, log, timed_out = asyncio.run(run_process(argv, VIDEO_TIMEOUT))
    except OSError as exc:
        raise NoPreview(f"cannot run ffmpeg: {exc}") from None
    if timed_out:
        raise NoPreview(f"ffmpeg took more than {VIDEO_TIMEOUT:g} s for a still of the video")
    still = out / "still.png"
    if rc != 0 or not still.is_file():
        why = log.strip().splitlines()[-1:] or [f"exit code {rc}"]
        raise NoPreview(f"ffmpeg could not read the video: {why[0][:300]}")
    return still


def _thumbnail(path: Path) -> bytes:
    from PIL import Image

    if path.suffix.lower() == ".exr":
        image = _exr_image(path)
    else:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(path)
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise NoPreview(f"the image has more than {MAX_PIXELS} pixels") from None
        except Exception as exc:   # Pillow raises many kinds for a file it cannot read
            raise NoPreview(f"the image cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    image = _eight_bit(image)
    image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _eight_bit(image):
    """An 8-bit RGB or RGBA (or L/LA) image for PNG: 16-bit and float modes scaled down."""
    mode = image.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        import numpy as np
        from PIL import Image

        values = np.asarray(image, dtype=np.float64)
        # 16-bit values 0..65535, float ones 0..1
        values = np.clip(values, 0.0, 1.0) * 255 if mode == "F" else np.clip(values / 257, 0.0, 255.0)
        return Image.fromarray((values + 0.5).astype(np.uint8))
    if mode in ("P", "PA"):
        return image.convert("RGBA")
    return image.convert("RGB")


def _exr_image(path: Path):
    try:
        import numpy as np
        import OpenEXR
        from PIL import Image
    except ImportError:
        raise NoPreview("no library here reads OpenEXR (install the openexr package)") from None
    try:
        with OpenEXR.File(str(path)) as exr:
            channels = exr.channels()
            if "RGBA" in channels:
                pixels = channels["RGBA"].pixels[..., :3]
            elif "RGB" in channels:
                pixels = channels["RGB"].pixels
            elif "Y" in channels:
                pixels = channels["Y"].pixels
            else:
                name = sorted(channels)[0]
                pixels = channels[name].pixels
                if pixels.ndim == 3:
                    pixels = pixels[..., :3] if pixels.shape[2] >= 3 else pixels[..., 0]
    except NoPreview:
        raise
    except Exception as exc:
        raise NoPreview(f"the OpenEXR image cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    if pixels.size > MAX_PIXELS * 4:
        raise NoPreview(f"the image has more than {MAX_PIXELS} pixels")
    values = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    shown = (np.clip(values, 0.0, 1.0) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(shown)

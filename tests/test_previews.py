"""Frame previews: made from real images in real tarballs (PNG 8 and 16 bit, float TIFF,
OpenEXR, a video's first frame), hostile ones refused as `no_preview`, and the route on a real
server (ETag, 304, cache, the frame not done, no such frame)."""

from __future__ import annotations

import io
import struct
import subprocess
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import make_scene, run_cli
from distren.previews import PREVIEW_SIZE, NoPreview, choose_member, make_preview
from distren.tarballs import write_tar


def tarball(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "files"
    folder.mkdir(exist_ok=True)
    entries = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        entries.append((name, folder / name))
    out = tmp_path / "output.tar"
    with open(out, "wb") as f:
        write_tar(f, entries)
    return out


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def preview_of(tmp_path: Path, files: dict[str, bytes]) -> Image.Image:
    data = make_preview(tarball(tmp_path, files), tmp_path)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and max(image.size) <= PREVIEW_SIZE
    return image


def test_the_first_image_is_shown_else_the_video():
    assert choose_member(["radiosity.rad", "a/f1.exr", "f1.png"]) == "a/f1.exr"
    assert choose_member(["video.mp4", "notes.txt"]) == "video.mp4"
    assert choose_member(["radiosity.rad"]) is None


def test_an_8_bit_png_is_scaled_to_256_on_its_long_side(tmp_path):
    image = Image.new("RGB", (640, 480), (200, 40, 10))
    got = preview_of(tmp_path, {"radiosity.rad": b"x", "frame0001.png": png_bytes(image)})
    assert got.size == (256, 192) and got.convert("RGB").getpixel((10, 10)) == (200, 40, 10)


def test_a_small_image_is_not_enlarged(tmp_path):
    assert preview_of(tmp_path, {"f.png": png_bytes(Image.new("RGB", (40, 30), "red"))}).size == (40, 30)


def test_a_16_bit_png_and_a_float_tiff_become_8_bit(tmp_path):
    sixteen = Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16))
    assert sixteen.mode.startswith("I")
    got = preview_of(tmp_path, {"deep.png": png_bytes(sixteen)})
    assert got.size == (30, 20) and abs(got.convert("L").getpixel((5, 5)) - 40000 / 257) <= 1
    floats = Image.fromarray(np.full((10, 10), 0.5, dtype=np.float32))
    got = preview_of(tmp_path, {"f.tif": png_bytes(floats, "TIFF")})
    assert abs(got.convert("L").getpixel((5, 5)) - 127) <= 1


def test_an_openexr_image_is_shown_with_gamma(tmp_path):
    import OpenEXR

    rgb = np.zeros((24, 32, 3), dtype=np.float32)
    rgb[..., 0] = 0.5        # linear 0.5: 186 with a gamma of 2.2
    rgb[..., 2] = 4.0        # over 1: clamped
    exr = tmp_path / "f.exr"
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                 {"RGB": rgb}).write(str(exr))
    got = preview_of(tmp_path, {"frame.exr": exr.read_bytes()})
    assert got.size == (32, 24)
    r, g, b = got.convert("RGB").getpixel((3, 3))
    assert abs(r - 186) <= 1 and g == 0 and b == 255


def test_a_video_shows_its_first_frame(tmp_path):
    video = tmp_path / "v.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=0x20a040:s=64x48:d=1", "-pix_fmt",
                    "yuv420p", str(video)], check=True)
    got = preview_of(tmp_path, {"video.mp4": video.read_bytes()})
    assert got.size == (64, 48)
    r, g, b = got.convert("RGB").getpixel((30, 20))
    assert abs(r - 0x20) <= 8 and abs(g - 0xA0) <= 8 and abs(b - 0x40) <= 8


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (its data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("files, why", [
    ({"radiosity.rad": b"data"}, "no image or video"),
    ({"huge.png": bomb_png(100_000, 100_000)}, "more than"),
    ({"broken.png": b"\x89PNG\r\n\x1a\n not really"}, "cannot be read"),
    ({"broken.exr": b"v/1\x01 not an exr"}, "OpenEXR image cannot be read"),
    ({"broken.mp4": b"\0\0\0\x18ftypmp42 nothing else"}, "ffmpeg could not read the video"),
])
def test_what_cannot_be_previewed_is_refused_naming_why(tmp_path, files, why):
    with pytest.raises(NoPreview, match=why) as err:
        make_preview(tarball(tmp_path, files), tmp_path)
    assert err.value.status == 404 and err.value.code == "no_preview"


def test_the_preview_route_on_a_real_server(server, tmp_path):
    ini = make_scene(tmp_path / "scene", final=2)
    pkg = tmp_path / "p.tar.gz"
    assert run_cli("pack", str(ini), "--width", "320", "--height", "240", "--video", "-o", str(pkg)).returncode == 0
    client = server.client()
    job = client.submit(pkg)
    jid = int(job["url"].rsplit("/", 1)[1])
    base = f"{server.url}/api/v1/jobs/{jid}/frames"
    early = httpx.get(f"{base}/3/preview")            # the video frame: waits for the others
    assert early.status_code == 409 and early.json()["error"]["code"] == "conflict"
    assert client.wait(job["url"], interval=0.2, timeout=180)["state"] == "done"
    r = httpx.get(f"{base}/1/preview")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (256, 192)
    etag = r.headers["etag"]
    again = httpx.get(f"{base}/1/preview", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag
    cached = list((Path(server.data) / "previews").rglob("*.png"))
    assert len(cached) == 1                             # kept under the output's hash
    made = cached[0].stat().st_mtime_ns
    assert httpx.get(f"{base}/1/preview").content == r.content
    assert cached[0].stat().st_mtime_ns == made         # made once: read from the cache after
    video = httpx.get(f"{base}/3/preview")              # a still of the encoded video
    assert video.status_code == 200 and Image.open(io.BytesIO(video.content)).size == (256, 192)
    missing = httpx.get(f"{base}/99/preview")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

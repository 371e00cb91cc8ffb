"""The ffmpeg encode backend: one frame of a job that turns other frames' images into a video.

An encode frame depends on the frames to encode (in frame order); their outputs arrive in
`_distren/deps/<server>/<job>/<frame>/`. Each must hold exactly one image: the backend checks
that every one arrived before it runs (ffmpeg itself silently makes a shorter video on a gap),
links them into a gap-free numbered sequence, pads odd sizes to even ones (libx264 with yuv420p
needs even sizes), and afterwards counts the frames of the video it made.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ...errors import BadSettings, DistrenError
from ..base import Backend, FrameTask, exit_reason, probe_version
from ..sandbox import OUT_DIR

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".tga", ".exr", ".ppm")
CODECS = {
    # codec: (encoder, container, extra arguments)
    "h264": ("libx264", "mp4", ["-pix_fmt", "yuv420p", "-movflags", "+faststart"]),
    "h265": ("libx265", "mp4", ["-pix_fmt", "yuv420p", "-tag:v", "hvc1", "-movflags", "+faststart"]),
    "vp9": ("libvpx-vp9", "webm", ["-pix_fmt", "yuv420p", "-b:v", "0"]),
}
SETTINGS = ("codec", "fps", "crf", "name")
SEQUENCE = "_sequence"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PROBE_TIMEOUT = 120  # seconds ffprobe may take to count the video's frames


def video_settings(settings: dict[str, str]) -> dict:
    """Checked settings: codec (h264, h265, vp9; default h264), fps (1-240, default 24),
    crf (quality 0-63, lower is better; default 20), name (the video's file stem, default video)."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise BadSettings(f"unknown ffmpeg setting(s): {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    codec = settings.get("codec", "h264")
    if codec not in CODECS:
        raise BadSettings(f"ffmpeg codec {codec!r}: expected one of {', '.join(CODECS)}")
    fps_text = settings.get("fps", "24")
    if not re.fullmatch(r"\d{1,3}(\.\d{1,3})?", fps_text) or not 1 <= float(fps_text) <= 240:
        raise BadSettings(f"ffmpeg fps {fps_text!r}: expected a number from 1 to 240")
    crf = settings.get("crf", "20")
    if not crf.isdigit() or not 0 <= int(crf) <= 63:
        raise BadSettings(f"ffmpeg crf {crf!r}: expected a whole number from 0 to 63")
    name = settings.get("name", "video")
    if not _NAME_RE.fullmatch(name):
        raise BadSettings(f"ffmpeg name {name!r}: letters, digits, '_', '.', '-' (up to 64)")
    return {"codec": codec, "fps": fps_text, "crf": int(crf), "name": name}


class FfmpegBackend(Backend):
    name = "ffmpeg"
    executable = "ffmpeg"

    def version(self) -> str | None:
        return probe_version("ffmpeg", "-version", r"ffmpeg version (\S+)")

    def check(self, settings: dict[str, str], scene: Path, frame_ids: list[int]) -> list[str]:
        video_settings(settings)
        return []

    def _inputs(self, task: FrameTask) -> list[Path]:
        if not task.depends:
            raise DistrenError("an ffmpeg frame needs the frames to encode as its dependencies")
        images = []
        for url in task.depends:
            folder = task.dep_dir(url)
            found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) \
                if folder.is_dir() else []
            if not found:
                raise DistrenError(f"input frame {url} has no image to encode")
            if len(found) > 1:
                names = ", ".join(p.relative_to(folder).as_posix() for p in found[:5])
                raise DistrenError(f"input frame {url} has {len(found)} images ({names}); expected one")
            images.append(found[0])
        suffixes = {p.suffix.lower() for p in images}
        if len(suffixes) > 1:
            raise DistrenError(f"input frames mix image types: {', '.join(sorted(suffixes))}")
        return images

    def prepare(self, task: FrameTask) -> None:
        """Every input frame's image is there: link them as one gap-free numbered sequence."""
        images = self._inputs(task)
        seq = task.deps / SEQUENCE
        seq.mkdir(exist_ok=True)
        for i, image in enumerate(images):
            link = seq / f"{i:08d}{image.suffix.lower()}"
            link.symlink_to(Path("..") / image.relative_to(task.deps))

    def command(self, task: FrameTask) -> list[str]:
        s = video_settings(task.settings)
        images = self._inputs(task)
        encoder, container, extra = CODECS[s["codec"]]
        pattern = f"{task.sandbox_path(task.deps / SEQUENCE)}/%08d{images[0].suffix.lower()}"
        return [
            self.executable, "-nostdin", "-hide_banner", "-loglevel", "warning",
            "-framerate", s["fps"], "-start_number", "0", "-i", pattern,
            "-frames:v", str(len(images)),
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v", encoder, "-crf", str(s["crf"]), *extra,
            "-threads", str(max(1, task.threads)),
            "-y", f"{OUT_DIR}/{s['name']}.{container}",
        ]

    def verify(self, task: FrameTask, outputs: list[Path]) -> str | None:
        """The video has exactly one frame per input frame. ffprobe reads the video, which
        ffmpeg made from the job's images: it runs in the frame's sandbox, under the render's
        limits, with its own timeout."""
        expected = len(task.depends)
        video = outputs[0]
        rc, log, timed_out = self.run_sandboxed(task, [
            "ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0",
            "-show_entries", "stream=nb_read_packets", "-of", "json", task.sandbox_path(video),
        ], PROBE_TIMEOUT)
        try:
            if timed_out:
                raise ValueError(f"ffprobe timed out after {PROBE_TIMEOUT} s")
            if rc != 0:  # its message: the last line that is not part of the JSON
                raise ValueError(next((line.strip() for line in reversed(log.splitlines())
                                       if line.strip() and line.strip()[0] not in '{}[]"'),
                                      f"ffprobe failed ({exit_reason(rc)})"))
            count = int(json.loads(log[log.index("{"): log.rindex("}") + 1])["streams"][0]["nb_read_packets"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return f"cannot count the frames of {video.name}: {exc}"
        if count != expected:
            return f"{video.name} has {count} frames, expected {expected}"
        return None


def add_video(spec, settings: dict[str, str] | None = None) -> int:
    """Add an encode frame to a JobSpec: id one past the highest frame, depending on every
    frame of the job in order. Returns its id."""
    from ...job.spec import FrameSpec, draft_dep

    settings = dict(settings or {})
    video_settings(settings)
    frame_id = max(spec.frame_ids()) + 1
    deps = [draft_dep(f) for f in sorted(spec.frame_ids())]
    spec.extra_backends["ffmpeg"] = settings
    spec.frames.append(FrameSpec(frame_id, deps, "ffmpeg"))
    return frame_id

"""The ffmpeg backend: a frame that encodes other frames' images into a video, and
`add_video`, which adds that frame to a job when it is packed (`--video`)."""

from .backend import FfmpegBackend, add_video

__all__ = ["FfmpegBackend", "add_video"]

"""Video files for the trainer: read whole clips and fit them to a model's geometry (PyAV + Pillow);
writing and hashing are the labeler's own (``labeler.media.video``, the one media module both
sides import), with the trainer's stricter rules on what it writes. Every failure is a
``MediaError`` naming the file and the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labeler.errors import DenseprefError, VideoError
from labeler.media import video as labeler_video

__all__ = ["MediaError", "Video", "file_sha256", "fit_frames", "read_video", "resample_fps", "write_video"]


class MediaError(DenseprefError):
    """A video that cannot be read, is too short for the requested clip, or cannot be written."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class Video:
    frames: np.ndarray  # [F, H, W, 3] uint8 RGB
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def read_video(
    path: str | os.PathLike, max_frames: int | None = None, max_seconds: float | None = None
) -> Video:
    """Decode the frames of a video as RGB uint8: all, or the first ``max_frames`` / ``max_seconds``."""
    import av

    path = str(path)
    if not os.path.isfile(path):
        raise MediaError(path, "file not found")
    frames: list[np.ndarray] = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise MediaError(path, "the video stream has no frame rate")
            if max_seconds is not None:
                by_time = int(max_seconds * float(rate)) + 1
                max_frames = by_time if max_frames is None else min(max_frames, by_time)
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except MediaError:
        raise
    except Exception as exc:  # PyAV raises many FFmpeg error subclasses
        raise MediaError(path, f"cannot decode: {exc}") from exc
    if not frames:
        raise MediaError(path, "the video has zero frames")
    return Video(np.stack(frames), float(rate))


def resample_fps(video: Video, fps: float, num_frames: int, *, path: str = "<video>") -> np.ndarray:
    """``num_frames`` frames at ``fps`` from the start of ``video`` (the source frame on screen at each time), so a
    clip keeps its real speed whatever the source frame rate. Too short a video is an error."""
    if fps <= 0 or num_frames <= 0:
        raise ValueError(f"fps ({fps}) and num_frames ({num_frames}) must be positive")
    # Source frame i is on screen during [i / fps_src, (i + 1) / fps_src): take the one showing at each time.
    idx = np.floor(np.arange(num_frames) / fps * video.fps + 1e-6).astype(int)
    if idx[-1] >= video.num_frames:
        raise MediaError(
            path,
            f"too short: {video.num_frames} frames at {video.fps:g} fps, need {num_frames} frames at {fps:g} fps "
            f"({(num_frames - 1) / fps + 1 / video.fps:.2f} s)",
        )
    return video.frames[idx]


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Scale [F, H, W, 3] frames to cover ``height`` x ``width`` (keeping the aspect) and center-crop."""
    from PIL import Image

    h, w = frames.shape[1:3]
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    out = [
        np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0))[
            top : top + height, left : left + width
        ]
        for f in frames
    ]
    return np.stack(out)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, *, crf: int = 12) -> Path:
    """Write [F, H, W, 3] uint8 RGB as H.264 MP4 with ``labeler.media.video.write_video`` (atomic:
    a killed run leaves no half-written video). Stricter than the labeler's: a training clip must
    keep its exact geometry, so odd sizes (which yuv420p cannot hold) are refused, not cropped."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise MediaError(path, f"frames must be [F, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise MediaError(path, f"H.264 needs even frame sizes, got {frames.shape[2]}x{frames.shape[1]}")
    return labeler_video.write_video(path, frames, fps, crf=crf)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, the content identity used in cache keys: the labeler's
    ``file_hash`` (remembered by the file's identity, so a rerun does not read the clip again)."""
    try:
        return labeler_video.file_hash(path)
    except VideoError as exc:
        raise MediaError(path, exc.reason) from exc

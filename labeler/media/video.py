"""Video access for the labeler: probe, segment (docs/design.md §2.2), sample, decode, resize, write.

Frames are read by PyAV from an index of the packets (labeler.media.video_index), else, for a file
that index cannot number, by a plain PyAV decode; probing is PyAV's. Every failure of a file is a
VideoError that names the file and the reason; anything else (a bug) is raised as it is, never
swallowed by a fall-back. The trainer writes and hashes its videos with these functions too.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from labeler.errors import VideoError, VideoMismatchError, VideoReadError
from labeler.fileio import atomic_path
from labeler.media.identity import NOT_REGULAR, IdentityMemo, file_identity
from labeler.media.video_index import NotIndexable, decode_wanted

__all__ = [
    "DECODE_CHUNK",
    "VideoError",
    "VideoInfo",
    "VideoMismatchError",
    "VideoReadError",
    "check_aligned",
    "file_hash",
    "file_identity",
    "fit_max_side",
    "plan_segments",
    "probe",
    "read_frames",
    "resize_max_side",
    "sample_indices",
    "segment_spans",
    "write_video",
]

FPS_TOLERANCE = 1e-3
ASPECT_TOLERANCE = 0.01  # relative; 1920x1080 vs 1280x720 pass, 1080x1920 (rotated) does not


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float
    num_frames: int
    width: int
    height: int
    backend: str

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


# --------------------------------------------------------------------------- probing


def _probe_av(path: str) -> VideoInfo:
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream (audio-only or not a video file)")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise VideoReadError(path, "the video stream has no frame rate")
            # Count by demuxing packets: exact, and no decoding.
            stamps = [pkt.pts for pkt in container.demux(stream) if pkt.size]
            n = len(stamps)
            width, height = stream.codec_context.width, stream.codec_context.height
            _refuse_variable_rate(path, stamps)
            if n:
                container.seek(0)
                _refuse_rotation(path, next(container.decode(stream), None))
    except VideoReadError:
        raise
    except Exception as exc:  # av raises many FFmpeg error subclasses
        raise VideoReadError(path, f"cannot read video: {exc}") from exc
    if n == 0:
        raise VideoReadError(path, "the video has zero frames")
    return VideoInfo(path, float(rate), n, int(width), int(height), "av")


#: Largest departure of one frame's duration from the median one, as a share of it, that still
#: counts as a constant frame rate (timestamps rounded to a coarse time base jitter a little).
VFR_TOLERANCE = 0.5


def _refuse_variable_rate(path: str, stamps: list[int | None]) -> None:
    """VideoReadError for a variable-frame-rate stream: segments are cut by frame count at the
    average rate, so its frames would be given times they do not have (#24)."""
    known = sorted(t for t in stamps if t is not None)
    gaps = [b - a for a, b in itertools.pairwise(known)]
    if len(gaps) < 2:
        return
    median = sorted(gaps)[len(gaps) // 2]
    if median > 0 and any(abs(g - median) > VFR_TOLERANCE * median for g in gaps):
        raise VideoReadError(
            path,
            f"variable frame rate (frame durations from {min(gaps)} to {max(gaps)} time-base ticks): "
            "segments would get the wrong times; re-encode it at a constant rate "
            "(ffmpeg -i IN -fps_mode cfr -r FPS OUT)",
        )


def _refuse_rotation(path: str, first: Any) -> None:
    """VideoReadError for a video rotated by its metadata (a phone video): the frames decode
    sideways, so the judge would see what a player does not show (#24)."""
    rotation = int(first.rotation) if first is not None else 0
    if rotation % 360:
        raise VideoReadError(
            path,
            f"rotated {rotation} degrees by its metadata: the frames decode sideways; re-encode it "
            "upright (ffmpeg -i IN -c:v libx264 OUT applies the rotation) and label that",
        )


def probe(path: str | os.PathLike) -> VideoInfo:
    """fps, frame count and size of a video, or VideoReadError saying why not."""
    path = str(path)
    if not os.path.exists(path):
        raise VideoReadError(path, "file not found")
    if not os.path.isfile(path):
        raise VideoReadError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "the file is empty")
    # PyAV counts frames from the packets, as the first-choice reader numbers them
    # (labeler.media.video_index), without decoding a frame.
    return _probe_av(path)


def check_aligned(a: VideoInfo, b: VideoInfo, *, role: str = "video_b") -> None:
    """Raise VideoMismatchError unless ``b`` has the fps and frame count of ``a`` (no silent
    truncation), and its size (``video_b``) or aspect ratio (``reference``)."""
    if abs(a.fps - b.fps) > FPS_TOLERANCE:
        raise VideoMismatchError(
            b.path, f"{role} has {b.fps:.4f} fps but video_a ({a.path}) has {a.fps:.4f} fps"
        )
    if a.num_frames != b.num_frames:
        raise VideoMismatchError(
            b.path, f"{role} has {b.num_frames} frames but video_a ({a.path}) has {a.num_frames}"
        )
    size_a, size_b = f"{a.width}x{a.height}", f"{b.width}x{b.height}"
    if role == "reference":
        # A reference may be stored at another resolution (it is resized like A and B), but not
        # another shape: a rotated or cropped reference would compare different content.
        if abs(b.width * a.height - a.width * b.height) > ASPECT_TOLERANCE * a.width * b.height:
            raise VideoMismatchError(
                b.path, f"{role} is {size_b}, another aspect ratio than video_a ({a.path}, {size_a})"
            )
    elif (a.width, a.height) != (b.width, b.height):
        raise VideoMismatchError(b.path, f"{role} is {size_b} but video_a ({a.path}) is {size_a}")


# --------------------------------------------------------------------------- segmentation (§2.2)


def plan_segments(
    num_frames: int, fps: float, segment_seconds: float, *, align_to: int | None = None
) -> list[tuple[int, int]]:
    """Half-open frame ranges of ``round(segment_seconds * fps)`` frames; a last remainder shorter
    than half a segment merges into the previous segment.

    ``align_to=r`` (a causal video VAE's temporal compression, 4 for Wan) moves every boundary
    between two segments to the nearest frame ``1 + r*k``: latent frame 0 encodes frame 0 and latent
    k >= 1 frames ``[1 + (k-1)*r, 1 + k*r)``, so no latent frame then straddles two segments (one that
    does is masked in training wherever the two labels differ). Boundaries that meet are merged."""
    bounds = _plan_segments(num_frames, fps, segment_seconds)
    if align_to is None:
        return bounds
    if align_to <= 0:
        raise ValueError(f"align_to must be positive, got {align_to}")
    cuts = sorted({1 + align_to * round((end - 1) / align_to) for _, end in bounds[:-1]} - {0})
    cuts = [c for c in cuts if 0 < c < num_frames]
    edges = [0, *cuts, num_frames]
    return list(itertools.pairwise(edges))


def _plan_segments(num_frames: int, fps: float, segment_seconds: float) -> list[tuple[int, int]]:
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if not (math.isfinite(fps) and fps > 0 and math.isfinite(segment_seconds) and segment_seconds > 0):
        raise ValueError(f"fps ({fps}) and segment_seconds ({segment_seconds}) must be positive and finite")
    length = max(1, round(segment_seconds * fps))
    bounds = [(s, min(s + length, num_frames)) for s in range(0, num_frames, length)]
    if len(bounds) > 1 and (bounds[-1][1] - bounds[-1][0]) * 2 < length:
        start, _ = bounds[-2]
        bounds[-2:] = [(start, num_frames)]
    return bounds


@dataclass(frozen=True)
class SegmentSpan:
    """One segment of a video: its frame range [start, end) and its times in seconds."""

    index: int
    start: int
    end: int
    start_s: float
    end_s: float


def segment_spans(
    info: VideoInfo, segment_seconds: float, *, align_to: int | None = None
) -> list[SegmentSpan]:
    """The segments of a video as every consumer cuts them (engine, annotation page, dry run);
    ``align_to``: see ``plan_segments``."""
    fps = info.fps
    return [
        SegmentSpan(i, start, end, round(start / fps, 4), round(end / fps, 4))
        for i, (start, end) in enumerate(
            plan_segments(info.num_frames, fps, segment_seconds, align_to=align_to)
        )
    ]


def sample_indices(start: int, end: int, k: int) -> list[int]:
    """``k`` frame indices spread uniformly inside [start, end) (bin centres); every frame when the
    segment has fewer than ``k``."""
    if start < 0:
        raise ValueError(f"segment start {start} is negative")
    if end <= start:
        raise ValueError(f"empty segment [{start}, {end})")
    if k <= 0:
        raise ValueError(f"frames per segment must be positive, got {k}")
    n = end - start
    if n <= k:
        return list(range(start, end))
    return [start + math.floor((i + 0.5) * n / k) for i in range(k)]


# --------------------------------------------------------------------------- decoding


#: Frames decoded at full resolution at a time before they are resized: the decoder's peak memory
#: is this many full-size frames, whatever the length of the video or the number of frames asked.
DECODE_CHUNK = 8


def fit_max_side(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """(width, height) of a frame resized so its long side is ``max_side`` (never upscaled), or
    None when it already fits. The one place this size is computed: decoding, inline frames and
    the service's pixel accounting all use it."""
    if not max_side or max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize_frame(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    if size is None:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def resize_max_side(frames: np.ndarray, max_side: int | None) -> np.ndarray:
    """Resize [K, H, W, 3] frames so the long side is ``max_side`` (never upscales)."""
    size = fit_max_side(frames.shape[2], frames.shape[1], max_side)
    if size is None:
        return frames
    return np.stack([_resize_frame(f, size) for f in frames])


class _Frames:
    """The resized frames of one read, written into one array allocated at the first frame.

    One allocation, not one per frame: many small long-lived arrays between the freed full-size
    chunks fragment the heap, and the process would keep that memory (measured: 358 MiB against
    241 MiB for 128 frames of a 720p video)."""

    def __init__(self, count: int, max_side: int | None):
        self.count, self.max_side = count, max_side
        self.size: tuple[int, int] | None = None
        self.array: np.ndarray | None = None

    def put(self, row: int, frame: np.ndarray) -> None:
        if self.array is None:
            self.size = fit_max_side(frame.shape[1], frame.shape[0], self.max_side)
            w, h = self.size or (frame.shape[1], frame.shape[0])
            self.array = np.empty((self.count, h, w, 3), np.uint8)
        self.array[row] = _resize_frame(frame, self.size)


def _read_av(path: str, wanted: list[int], max_side: int | None) -> np.ndarray:
    import av

    row = {index: k for k, index in enumerate(wanted)}
    out, found, decoded = _Frames(len(wanted), max_side), set(), 0
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                if i in row:
                    out.put(row[i], frame.to_ndarray(format="rgb24"))
                    found.add(i)
                if i >= wanted[-1]:
                    break
    except (av.error.FFmpegError, OSError) as exc:  # FFmpeg's failures on this file; a bug is raised as is
        raise VideoReadError(path, f"cannot decode: {exc}") from exc
    missing = [i for i in wanted if i not in found]
    if missing or out.array is None:
        outside = [i for i in missing if not 0 <= i < decoded]
        where = f": outside [0, {decoded})" if outside and len(outside) == len(missing) else ""
        raise VideoReadError(path, f"frames {missing[:5]} could not be decoded{where}")
    return out.array


def _read_indexed(path: str, wanted: list[int], max_side: int | None) -> np.ndarray:
    out = _Frames(len(wanted), max_side)
    decode_wanted(path, wanted, out.put)
    assert out.array is not None  # decode_wanted put every wanted frame, or raised
    return out.array


def read_frames(path: str | os.PathLike, indices: Sequence[int], max_side: int | None = None) -> np.ndarray:
    """Decode just the frames at ``indices`` (any order, repeats allowed) as [K, H, W, 3] uint8 RGB,
    resized to ``max_side`` as they are decoded, so memory is bounded by what is returned plus
    :data:`DECODE_CHUNK` full-size frames.

    Readers: the indexed PyAV reader (fast: it skips the frames nothing refers to), and a plain
    PyAV decode for a file the index cannot number (:class:`NotIndexable`: no timestamps, repeated
    timestamps...) or that FFmpeg refuses to open the indexed way; that reader's own failure is the
    VideoReadError. Both give the same pixels (tests/test_video_index.py). Any other exception is
    a bug and is raised as it is, never hidden behind a fall-back."""
    import av

    path = str(path)
    if not indices:
        raise ValueError("read_frames needs at least one index")
    wanted = sorted(set(indices))
    try:
        frames = _read_indexed(path, wanted, max_side)
    except (NotIndexable, av.error.FFmpegError):
        frames = _read_av(path, wanted, max_side)
    if list(indices) == wanted:
        return frames
    row = {index: k for k, index in enumerate(wanted)}
    return frames[[row[i] for i in indices]]


# --------------------------------------------------------------------------- hashing


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    # O_NONBLOCK: a FIFO swapped in since the stat must not block the open; then only a regular
    # file is read, and no further than its size at the open (a file still growing is read once).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise VideoReadError(path, f"cannot read: {exc.strerror}") from exc
    try:
        with open(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO: reading it would never end
                raise VideoReadError(path, NOT_REGULAR)
            left = st.st_size
            while left > 0 and (chunk := fh.read(min(1 << 20, left))):
                digest.update(chunk)
                left -= len(chunk)
    except OSError as exc:
        raise VideoReadError(path, f"cannot read: {exc.strerror}") from exc
    return digest.hexdigest()


#: sha256 of a file's bytes (the cache's video identity, the trainer's latent-cache key),
#: remembered by :func:`file_identity`; VideoReadError for a file that cannot be read.
file_hash: IdentityMemo[str] = IdentityMemo(_sha256)


# --------------------------------------------------------------------------- writing


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray] | np.ndarray,
    fps: float,
    *,
    crf: int = 18,
    preset: str = "medium",
) -> Path:
    """Write RGB uint8 frames as H.264 (yuv420p) MP4. Odd sizes are cropped by one pixel, since
    yuv420p needs even dimensions."""
    import av

    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    # Atomic: a killed or failed writer never leaves a half-written video under the real name.
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w") as container:
        stream = None
        for frame in frames:
            frame = np.asarray(frame, dtype=np.uint8)
            h, w = frame.shape[0] & ~1, frame.shape[1] & ~1
            if stream is not None and (h, w) != (stream.height, stream.width):
                raise ValueError(
                    f"{path}: frame of {frame.shape[:2]} after frames of {(stream.height, stream.width)}"
                )
            if stream is None:
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height = w, h
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf), "preset": preset}
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return path

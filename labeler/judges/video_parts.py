"""A segment as one ``video_url`` part, for ``--judge openai --input video`` (docs/endpoints.md).

vLLM and SGLang take a video in a chat message as ``{"type": "video_url", "video_url": {"url":
...}}``. The sampled frames go as ``data:video/jpeg;base64,<f1>,<f2>,...`` — vLLM's
``VideoMediaIO.load_base64`` splits that on commas and decodes each JPEG, so the model sees exactly
the frames the frames mode shows as images, with no re-encoding and no decoder on the server.

Such a frame list carries no timing, so vLLM assumes 1 fps unless the request says otherwise:
Qwen2.5-VL's time encoding and Qwen3-VL's ``<t seconds>`` timestamps would then be wrong. The body's
``media_io_kwargs.video`` gives the real timing (vLLM reads ``fps`` as the *source* video's rate and
``frames_indices`` as the sampled frames' numbers in it, as its Qwen3-VL processor says). vLLM
refuses per-request ``media_io_kwargs`` unless started with ``--trust-request-mm-kwargs``.
One ``media_io_kwargs`` serves every video of a request: A, B and the reference are sampled at the
same frame numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from labeler.media.images import JpegUriCache
from labeler.schemas import SegmentRequest

__all__ = ["INPUT_MODES", "InputMode", "VideoTiming", "media_io_kwargs", "timing_of", "video_url_part"]

InputMode = Literal["frames", "video"]
INPUT_MODES: tuple[InputMode, ...] = ("frames", "video")

_JPEG_PREFIX = "data:image/jpeg;base64,"


@dataclass(frozen=True)
class VideoTiming:
    """Where a segment's sampled frames sit in their source video."""

    fps: float  # the source video's frame rate
    frames_indices: tuple[int, ...]  # each sampled frame's number in the source video
    total_num_frames: int  # frames of the source known to exist (at least up to the last sampled)

    def __post_init__(self) -> None:
        if not (self.fps > 0 and np.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        if list(self.frames_indices) != sorted(set(self.frames_indices)):
            raise ValueError(f"frames_indices must rise strictly, got {list(self.frames_indices)}")
        if self.total_num_frames < len(self.frames_indices):
            raise ValueError("total_num_frames must be at least the number of frames sent")


def timing_of(request: SegmentRequest) -> VideoTiming:
    """The request's timing: its frame numbers when the engine gave them, else its frame times at its
    fps, else (inline frames with neither) the frames spread evenly over the segment, which is
    what the frames mode's prompt says too."""
    k = request.frames_first.shape[0]
    if request.fps and len(request.frame_indices) == k:
        indices = [int(i) for i in request.frame_indices]
        fps = float(request.fps)
    elif request.fps and len(request.frame_times) == k:
        fps = float(request.fps)
        indices = [round(t * fps) for t in request.frame_times]
    else:
        duration = max(request.end_s - request.start_s, 1e-3)
        fps = k / duration  # the sampling rate: frame i sits at start + (i + 0.5) / fps
        indices = list(range(k))
        first = round(request.start_s * fps)
        indices = [first + i for i in indices]
    return VideoTiming(fps=fps, frames_indices=tuple(indices), total_num_frames=max(indices) + 1)


def media_io_kwargs(timing: VideoTiming) -> dict[str, dict[str, Any]]:
    """The body field that gives vLLM the frames' real timing. ``num_frames`` is the count sent:
    vLLM keeps only the first ``num_frames`` (default 32) comma-separated frames of a JPEG list."""
    return {
        "video": {
            "fps": timing.fps,
            "frames_indices": list(timing.frames_indices),
            "total_num_frames": timing.total_num_frames,
            "num_frames": len(timing.frames_indices),
        }
    }


def video_url_part(frames: np.ndarray, jpeg: JpegUriCache, quality: int) -> dict[str, Any]:
    """One ``video_url`` part holding ``frames`` ([K, H, W, 3] uint8) as a JPEG sequence."""
    encoded = []
    for frame in frames:
        uri = jpeg.data_uri(frame, quality)
        encoded.append(uri.removeprefix(_JPEG_PREFIX))
    return {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(encoded)}}


def presentation_id(prompt_id: str, input_mode: str, show_reference: bool) -> str:
    """The prompt id a judge records: the template's id, plus how the videos are shown when that
    is not the default still frames without reference (``conservative@ab12cd34+video+reference``),
    so records and cache keys of different presentations never mix."""
    suffix = ("+video" if input_mode == "video" else "") + ("+reference" if show_reference else "")
    return prompt_id + suffix


def video_tokens_of(messages: list[dict[str, Any]], model: str) -> tuple[int, int]:
    """(prompt tokens, count) of the neutral ``video`` parts of rendered messages."""
    from labeler.judges.video_tokens import video_tokens

    total = count = 0
    for message in messages:
        for part in message["content"]:
            if part["type"] == "video":
                k, h, w = part["frames"].shape[:3]
                total += video_tokens(model, k, h, w)
                count += 1
    return total, count


def without_videos(messages: list[dict[str, Any]], *, images: bool = False) -> list[dict[str, Any]]:
    """The messages with their ``video`` parts (and ``image`` parts too when ``images``) left out,
    to count the rest's tokens alone."""
    drop = {"video", "image"} if images else {"video"}
    return [{**m, "content": [p for p in m["content"] if p["type"] not in drop]} for m in messages]


def qwen_image_tokens_of(messages: list[dict[str, Any]], model: str) -> tuple[int, int] | None:
    """(prompt tokens, count) of the neutral ``image`` parts by the model family's own processor
    rule, or None for a model of no known video family (OpenAI's rules then apply)."""
    from labeler.judges.video_tokens import image_tokens, rule_for

    if not rule_for(model)[1]:
        return None
    total = count = 0
    for message in messages:
        for part in message["content"]:
            if part["type"] == "image":
                h, w = part["image"].shape[:2]
                total += image_tokens(model, h, w)
                count += 1
    return total, count

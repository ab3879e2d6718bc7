"""Prompt tokens of one video for the open VLMs that take video natively (``--input video`` dry runs).

The rules are those of the models' own Hugging Face video processors (transformers
``Qwen2VLVideoProcessor``, used by Qwen2-VL and Qwen2.5-VL, and ``Qwen3VLVideoProcessor``), at
their default sizes:

- every frame is resized to a multiple of ``patch * merge`` px on each side (``smart_resize``),
  keeping its area within [min_pixels, max_pixels]; Qwen3-VL bounds the whole clip's pixels
  (frames x height x width) instead of each frame's;
- the frame count is padded to a multiple of the temporal patch (2: two frames share a patch);
- tokens = (frames / 2) x (height / patch) x (width / patch) / merge², plus the markers around them:
  ``<|vision_start|>``/``<|vision_end|>`` once (Qwen2.x) or per temporal patch with a
  ``<t seconds>`` timestamp (Qwen3-VL).

A model of another family falls back to the Qwen2.5-VL rule: a rough stand-in, said as such.

Still images of these families (``--input frames``) follow the same grid at the image processor's
size as the released checkpoints set it (``preprocessor_config.json``: Qwen2/2.5-VL 56² to
12,845,056 pixels, Qwen3-VL 256² to 16,777,216), one temporal patch each, plus two markers:
:func:`image_tokens`, so a dry run compares frames and video in the model's own tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["VIDEO_RULES", "VideoTokenRule", "image_tokens", "rule_for", "smart_resize", "video_tokens"]


@dataclass(frozen=True)
class VideoTokenRule:
    family: str
    patch: int
    merge: int
    temporal: int
    min_pixels: int
    max_pixels: int
    #: True: max_pixels bounds frames x height x width (Qwen3-VL); False: each frame (Qwen2.x).
    clip_budget: bool
    #: Marker tokens per temporal patch (Qwen3-VL: vision start/end and a "<1.2 seconds>" stamp).
    tokens_per_step: int
    #: Marker tokens per video (Qwen2.x: vision start and end).
    tokens_per_video: int
    #: Pixel bounds of one still image (the checkpoints' image processor size).
    image_min_pixels: int
    image_max_pixels: int


VIDEO_RULES: dict[str, VideoTokenRule] = {
    # transformers Qwen2VLVideoProcessor: size {"shortest_edge": 128*28*28, "longest_edge": 28*28*768}.
    "qwen2-vl": VideoTokenRule(
        "qwen2-vl", 14, 2, 2, 128 * 28 * 28, 768 * 28 * 28, False, 0, 2, 3136, 12845056
    ),
    "qwen2.5-vl": VideoTokenRule(
        "qwen2.5-vl", 14, 2, 2, 128 * 28 * 28, 768 * 28 * 28, False, 0, 2, 3136, 12845056
    ),
    # transformers Qwen3VLVideoProcessor: size {"shortest_edge": 128*32*32, "longest_edge": 32*32*768}
    # over the whole clip; each temporal patch is "<t seconds><|vision_start|>...<|vision_end|>".
    "qwen3-vl": VideoTokenRule(
        "qwen3-vl", 16, 2, 2, 128 * 32 * 32, 768 * 32 * 32, True, 8, 0, 65536, 16777216
    ),
}


def rule_for(model: str) -> tuple[VideoTokenRule, bool]:
    """(rule, known): the family whose name the model's contains, else the Qwen2.5-VL rule."""
    name = model.lower().rsplit("/", 1)[-1].replace("_", "-")
    for family in sorted(VIDEO_RULES, key=len, reverse=True):
        if family in name:
            return VIDEO_RULES[family], True
    return VIDEO_RULES["qwen2.5-vl"], False


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int, frames: int = 1
) -> tuple[int, int]:
    """transformers' ``smart_resize``: sides rounded to multiples of ``factor``, area (times
    ``frames`` for a clip budget) kept within [min_pixels, max_pixels]."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if frames * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif frames * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_tokens(model: str, frames: int, height: int, width: int) -> int:
    """Prompt tokens of one video of ``frames`` frames of ``width`` x ``height`` for ``model``."""
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"a video needs frames and a size, got {frames} frames of {width}x{height}")
    rule, _ = rule_for(model)
    padded = frames + (-frames % rule.temporal)
    factor = rule.patch * rule.merge
    budget_frames = padded if rule.clip_budget else 1
    h, w = smart_resize(height, width, factor, rule.min_pixels, rule.max_pixels, budget_frames)
    steps = padded // rule.temporal
    per_step = (h // rule.patch) * (w // rule.patch) // (rule.merge**2)
    return steps * (per_step + rule.tokens_per_step) + rule.tokens_per_video


def image_tokens(model: str, height: int, width: int) -> int:
    """Prompt tokens of one still image for ``model``'s family (its vision start/end included)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    rule, _ = rule_for(model)
    factor = rule.patch * rule.merge
    h, w = smart_resize(height, width, factor, rule.image_min_pixels, rule.image_max_pixels)
    return (h // rule.patch) * (w // rule.patch) // (rule.merge**2) + 2

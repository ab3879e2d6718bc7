"""One image holding a frame of each video (the 'side-by-side' layout), arranged to keep pixels.

OpenAI shrinks a ``detail: low`` image to fit 512x512 before the model sees it
(https://platform.openai.com/docs/guides/images-vision#low-or-high-fidelity-image-understanding).
Two 448x252 frames side by side make a 904x252 composite, which arrives 512x143: each video keeps
about 252 px of its 448. Stacked (A above B) the same frames make 448x512 and lose nothing. With a
``fit`` bound the arrangement that keeps the larger scale per video is chosen, and the composite is
shrunk to the bound here, so what is sent is what the model sees (and the upload is smaller).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from labeler.media.images import GAP_VALUE, side_by_side

__all__ = ["LOW_DETAIL_SIDE", "Arrangement", "CompositePlan", "compose_pair", "plan_composite", "seen_size"]

Arrangement = Literal["left-right", "top-bottom"]
GAP = 8
#: OpenAI shrinks a ``detail: low`` image to fit this square.
LOW_DETAIL_SIDE = 512


@dataclass(frozen=True)
class CompositePlan:
    arrangement: Arrangement
    scale: float  # applied to each video's frame (1.0: no shrink)
    frame_width: int  # of each video inside the composite, in pixels
    frame_height: int
    width: int  # of the composite
    height: int


def plan_composite(width: int, height: int, fit: int | None) -> CompositePlan:
    """The arrangement of two ``width x height`` frames that keeps the most pixels per video within
    ``fit`` x ``fit`` (None: no bound; left-right, the layout's historical arrangement). The white
    stripe keeps its width; the frames shrink (never grow) so the whole composite fits."""
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if fit is not None and fit <= 2 * GAP:
        raise ValueError(f"composite bound must exceed {2 * GAP} px, got {fit}")
    bound = float("inf") if fit is None else float(fit)
    scales: dict[Arrangement, float] = {
        "left-right": min(1.0, (bound - GAP) / (2 * width), bound / height),
        "top-bottom": min(1.0, bound / width, (bound - GAP) / (2 * height)),
    }
    name: Arrangement = "top-bottom" if scales["top-bottom"] > scales["left-right"] else "left-right"
    scale = scales[name]
    fw, fh = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
    cw = 2 * fw + GAP if name == "left-right" else fw
    ch = fh if name == "left-right" else 2 * fh + GAP
    return CompositePlan(name, scale, fw, fh, cw, ch)


def _resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.shape[1] == width and frame.shape[0] == height:
        return frame
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))


def compose_pair(
    first: np.ndarray, second: np.ndarray, fit: int | None = None
) -> tuple[np.ndarray, Arrangement]:
    """(composite, arrangement) of one frame of each video: first left/top, white stripe, second."""
    if first.shape != second.shape:
        raise ValueError(f"composite frames differ in shape: {first.shape} and {second.shape}")
    plan = plan_composite(first.shape[1], first.shape[0], fit)
    a = _resize(first, plan.frame_width, plan.frame_height)
    b = _resize(second, plan.frame_width, plan.frame_height)
    if plan.arrangement == "left-right":
        return side_by_side(a, b, gap=GAP), plan.arrangement
    stripe = np.full((GAP, a.shape[1], 3), GAP_VALUE, dtype=np.uint8)
    return np.concatenate([a, stripe, b], axis=0), plan.arrangement


def seen_size(width: int, height: int, detail: str) -> tuple[int, int]:
    """The size OpenAI's vision models look at: low detail fits 512x512; high (and auto, at most)
    fits 2048x2048 and then shrinks the short side to 768 (pricing module's sources)."""
    if detail == "low":
        scale = min(1.0, LOW_DETAIL_SIDE / width, LOW_DETAIL_SIDE / height)
    else:
        scale = min(1.0, 2048 / width, 2048 / height)
        scale *= min(1.0, 768 / (min(width, height) * scale))
    return max(1, round(width * scale)), max(1, round(height * scale))

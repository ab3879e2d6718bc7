"""Segment labels → latent-frame labels for a causal video VAE (docs/training.md).

A causal video VAE with temporal compression ``r`` (Wan, CogVideoX, LTX: r = 4 or 8) encodes
pixel frame 0 alone into latent frame 0 and every following group of ``r`` pixel frames into one
latent frame::

    latent frame 0      <- pixel frames [0, 1)
    latent frame k >= 1 <- pixel frames [1 + (k-1)*r, 1 + k*r)

so a video of ``F`` frames has ``1 + (F - 1) // r`` latent frames (Wan's ``1 + (F-1)/4`` layout).
Pixel ranges are clipped to the video's length (a VAE that pads a short last group still reads
only real frames).

A latent frame takes the label of the segment that contains **all** of its pixel frames. It is
masked (label 0, segment id -1) when its frames straddle segments with different labels, or fall
partly outside every segment; a latent frame inside a tie segment has label 0 too but keeps its
segment id. (A latent frame straddling two segments with the *same* label keeps that label but gets
segment id -1: for ``reduction="segment"`` it belongs to neither segment.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LatentLabels", "latent_frame_labels", "latent_frame_ranges", "num_latent_frames"]


def num_latent_frames(num_pixel_frames: int, r: int) -> int:
    """Latent frames of a causal VAE over ``num_pixel_frames`` frames: ``1 + (F - 1) // r``."""
    if num_pixel_frames <= 0 or r <= 0:
        raise ValueError(f"num_pixel_frames ({num_pixel_frames}) and r ({r}) must be positive")
    return 1 + (num_pixel_frames - 1) // r


def latent_frame_ranges(
    num_latents: int, r: int, num_pixel_frames: int | None = None
) -> list[tuple[int, int]]:
    """The half-open pixel range ``[start, end)`` of each latent frame, clipped to ``num_pixel_frames``."""
    if num_latents <= 0 or r <= 0:
        raise ValueError(f"num_latents ({num_latents}) and r ({r}) must be positive")
    ranges = [(0, 1)] + [(1 + (k - 1) * r, 1 + k * r) for k in range(1, num_latents)]
    if num_pixel_frames is not None:
        ranges = [(min(s, num_pixel_frames), min(e, num_pixel_frames)) for s, e in ranges]
    return ranges


@dataclass(frozen=True)
class LatentLabels:
    labels: list[int]  # per latent frame: +1 (A better), -1 (B better), 0 (tie or masked)
    segment_ids: list[int]  # per latent frame: index of the one segment holding all its frames, or -1
    # Latent frames masked because their pixel frames straddle segments with different labels: the
    # signal lost to segment boundaries inside latent frames (``labeler.batch --align-to-latent``).
    straddling: int = 0


def latent_frame_labels(
    segments: Sequence[tuple[int, int, int]], num_latents: int, r: int, num_pixel_frames: int
) -> LatentLabels:
    """Label each latent frame from ``segments`` = ``(start_frame, end_frame, label)`` half-open pixel
    ranges with labels in {+1, -1, 0}, by the rule in this module's docstring."""
    for s, e, lab in segments:
        if not 0 <= s < e:
            raise ValueError(f"bad segment range [{s}, {e})")
        if lab not in (1, -1, 0):
            raise ValueError(f"segment [{s}, {e}) has label {lab!r}, expected +1, -1 or 0")
    labels, seg_ids, straddling = [], [], 0
    for start, end in latent_frame_ranges(num_latents, r, num_pixel_frames):
        if end <= start:  # the latent frame lies past the end of the video
            labels.append(0)
            seg_ids.append(-1)
            continue
        overlapping = [(i, s, e, lab) for i, (s, e, lab) in enumerate(segments) if s < end and start < e]
        covered = sum(min(e, end) - max(s, start) for _, s, e, _ in overlapping)
        seg_labels = {lab for *_, lab in overlapping}
        if covered < end - start or len(seg_labels) != 1:
            labels.append(0)  # partly outside every segment, or straddling different labels
            seg_ids.append(-1)
            straddling += len(seg_labels) > 1
            continue
        labels.append(seg_labels.pop())
        seg_ids.append(overlapping[0][0] if len(overlapping) == 1 else -1)
    return LatentLabels(labels, seg_ids, straddling)

"""decord as a reference reader for the tests: the labeler no longer reads with it (it returns other
frames than asked for with B-frames in AVI and MPEG-TS), but on H.264 in MP4 it is an independent
decoder whose pixels the labeler's PyAV readers must match. Skips when decord is not installed
(it is a ``dev`` extra, not a dependency of the package)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pytest

from labeler.media.video import resize_max_side


def decord_frames(
    path: str | os.PathLike[str], wanted: Sequence[int], max_side: int | None = None
) -> np.ndarray:
    """The frames at ``wanted`` as decord decodes them, resized like the labeler's readers do."""
    decord = pytest.importorskip("decord")
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return resize_max_side(reader.get_batch(list(wanted)).asnumpy(), max_side)


def decord_probe(path: str | os.PathLike[str]) -> tuple[float, int, int, int]:
    """(fps, frame count, width, height) as decord reads them."""
    decord = pytest.importorskip("decord")
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    height, width = reader[0].shape[:2]
    return float(reader.get_avg_fps()), len(reader), int(width), int(height)

"""Videos whose frames would be judged wrong are refused clearly (#24): rotated by metadata (a phone
video decodes sideways) or with a variable frame rate (segments are cut at the average rate)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from labeler.errors import VideoReadError
from labeler.media import video
from tests.conftest import textured_frames


def _write(path: Path, frames: np.ndarray, *, rotation: int = 0, pts: list[int] | None = None) -> Path:
    """H.264 in MP4 at 8 fps (time base 1/8 s unless ``pts`` are given, in 1/1000 s)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, frame in enumerate(frames):
            f = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(f):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_metadata_rotated_video_is_refused_naming_the_rotation(tmp_path):
    path = _write(tmp_path / "phone.mp4", textured_frames(8), rotation=90)
    with pytest.raises(VideoReadError, match="rotated 90 degrees by its metadata"):
        video.probe(path)
    assert video.probe(_write(tmp_path / "upright.mp4", textured_frames(8))).num_frames == 8


def test_a_variable_frame_rate_video_is_refused(tmp_path):
    steps = [0, 125, 250, 375, 500, 1000, 1125, 1500]  # 8 fps, then a half-second gap and others
    path = _write(tmp_path / "vfr.mp4", textured_frames(8), pts=steps)
    with pytest.raises(VideoReadError, match="variable frame rate"):
        video.probe(path)

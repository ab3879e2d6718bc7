"""Shared fixtures: small real videos written in code. Module-specific fixtures live beside their tests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def textured_frames(n: int, h: int = 64, w: int = 96, seed: int = 0, motion: int = 2) -> np.ndarray:
    """A moving smooth texture with edges: real structure for quality metrics, cheap to make."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    big = np.kron(base, np.ones((8, 8, 1), np.float32))
    xx = np.mgrid[0:h, 0:w][1]
    out = []
    for t in range(n):
        dx = (t * motion) % 8
        frame = big[:h, dx : dx + w].copy()
        frame += 40 * np.sin((xx + t * motion) / 5.0)[..., None]
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    """make_video(name, n_frames=48, fps=24.0, frames=None, **texture_kwargs) -> path of an H.264 mp4."""
    from labeler.video import write_video

    def _make(
        name: str, n_frames: int = 48, fps: float = 24.0, frames: np.ndarray | None = None, **kw
    ) -> Path:
        if frames is None:
            frames = textured_frames(n_frames, **kw)
        return write_video(tmp_path / name, frames, fps, crf=10)

    return _make

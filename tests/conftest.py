"""Shared fixtures: small real videos written in code, and the stand-in OpenAI-compatible server.
Module-specific fixtures live beside their tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from labeler.standin import StandinServer

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
    from labeler.media.video import write_video

    def _make(
        name: str, n_frames: int = 48, fps: float = 24.0, frames: np.ndarray | None = None, **kw
    ) -> Path:
        if frames is None:
            frames = textured_frames(n_frames, **kw)
        return write_video(tmp_path / name, frames, fps, crf=10)

    return _make


#: The stand-in settings every test starts from (``standin`` restores them): deterministic
#: "hash" answers with logprobs, no latency, no auth, every model and parameter accepted, and a
#: short Batch API delay so batch tests finish quickly.
STANDIN_DEFAULTS: dict[str, Any] = {
    "policy": "hash", "latency_ms": 0, "max_concurrency": 64, "logprobs": True, "supports_logprobs": True,
    "supports_response_format": True, "api_key": None, "models": [], "batch_delay_s": 0.02,
}  # fmt: skip


@pytest.fixture(scope="module")
def standin_server() -> Iterator[StandinServer]:
    """One stand-in server on loopback per test module (starting one per test would be slow)."""
    from labeler.standin import StandinServer

    with StandinServer() as server:
        yield server


@pytest.fixture
def standin(standin_server: StandinServer) -> StandinServer:
    """The module's stand-in server, with counters, faults and rules cleared and STANDIN_DEFAULTS set."""
    # A request an earlier test abandoned (a hang past the client's timeout) must finish before the
    # counters are reset, or its late answer would be counted in this test.
    for _ in range(500):
        if standin_server.stats()["in_flight"] == 0:
            break
        time.sleep(0.01)
    standin_server.control(reset=True, **STANDIN_DEFAULTS)
    return standin_server


def level_pairs_manifest(
    root: Path, pairs: int, segments: int, *, a: tuple[int, int], b: tuple[int, int], fps: float = 8.0
) -> Path:
    """A manifest of ``pairs`` flat-gray pairs of ``segments`` one-second segments at ``fps``: pair i's
    A sits at gray level ``a[0] + a[1]·i`` and its B at ``b[0] + b[1]·i`` (plus the segment index)."""
    import json

    from labeler.media import video
    from tests.fake_judges import frames_with_level

    lines = []
    for i in range(pairs):
        for side, (base, step) in (("a", a), ("b", b)):
            frames = [frames_with_level(int(fps), base + step * i + k, h=32, w=48) for k in range(segments)]
            video.write_video(root / f"p{i}_{side}.mp4", np.concatenate(frames), fps)
        lines.append(
            {"pair_id": f"p{i}", "prompt": f"scene {i}", "video_a": f"p{i}_a.mp4", "video_b": f"p{i}_b.mp4"}
        )
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path

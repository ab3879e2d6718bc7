"""Fixtures for the trainer tests: tiny random-weight models, source videos and label files, all
built in code (no downloads)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from labeler.schemas import LABEL_VALUE, DensePreferenceRecord, LabelerInfo, Segment, video_level
from tests.conftest import textured_frames

TINY_FPS, TINY_FRAMES = 8.0, 33  # the tiny preset's clips: 4 one-second segments


@pytest.fixture(scope="session")
def tiny_adapter():
    """The tiny Wan adapter (VAE, UMT5 and transformer of a few tens of thousands of parameters)."""
    from trainer.models import load_adapter

    return load_adapter("tiny")


@pytest.fixture(scope="session")
def source_videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real H.264 clips (moving textures) long enough for the tiny preset: 5 s at 10 fps."""
    from trainer.media import write_video

    root = tmp_path_factory.mktemp("sources")
    return [
        write_video(root / f"clip{i}.mp4", textured_frames(50, h=72, w=96, seed=i, motion=2 + i), 10.0)
        for i in range(2)
    ]


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory: pytest.TempPathFactory, source_videos: list[Path]) -> Path:
    """Four guided pairs (two per source clip) from the tiny model, through the CLI; returns the
    manifest path."""
    from trainer.pairs import main

    out = tmp_path_factory.mktemp("pairs")
    prompts = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    prompts.write_text("a textured surface slides to the left\na textured surface slides faster\n")
    argv = ["--videos", *map(str, source_videos), "--prompts", str(prompts), "--model", "tiny", "--out", str(out),
            "--pairs-per-video", "2", "--seed", "0"]  # fmt: skip
    assert main(argv) == 0
    return out / "manifest.jsonl"


def make_record(
    pair_id: str,
    labels: Sequence[str],
    *,
    video_a: str = "a.mp4",
    video_b: str = "b.mp4",
    num_frames: int = TINY_FRAMES,
    fps: float = TINY_FPS,
    bounds: Sequence[tuple[int, int]] | None = None,
    prompt: str = "a test clip",
) -> DensePreferenceRecord:
    """A dense preference record with the given segment labels (1 s segments by default)."""
    if bounds is None:
        step = round(fps)
        bounds = [(i * step, (i + 1) * step) for i in range(len(labels))]
        bounds[-1] = (bounds[-1][0], num_frames)
    probs = {"A": (0.8, 0.1, 0.1), "B": (0.1, 0.8, 0.1), "tie": (0.1, 0.1, 0.8)}
    segments = [
        Segment(index=i, start_frame=s, end_frame=e, start_s=s / fps, end_s=e / fps, label=lab,
                p_a=probs[lab][0], p_b=probs[lab][1], p_tie=probs[lab][2])
        for i, ((s, e), lab) in enumerate(zip(bounds, labels, strict=True))
    ]  # fmt: skip
    label, score = video_level(segments)
    return DensePreferenceRecord(
        pair_id=pair_id, prompt=prompt, video_a=video_a, video_b=video_b, fps=fps, num_frames=num_frames,
        segments=segments, video_label=label, video_score=score, labeler=LabelerInfo(judge="test"),
    )  # fmt: skip


def write_records(path: Path, records: Sequence[DensePreferenceRecord]) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in records), encoding="utf-8")
    return path


__all__ = ["LABEL_VALUE", "TINY_FPS", "TINY_FRAMES", "make_record", "write_records"]

"""The judge interface (labeler.judges.base): each optional capability is honoured by its caller.

The reference test goes through ``python -m labeler.batch`` end to end: a segment whose only defect
(a mirrored scene) is invisible without the ground truth must be decided by the reference, and
not without it; a judge that does not use references must never have one decoded or checked.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labeler.dryrun import dry_run
from labeler.engine import Engine, EngineConfig
from labeler.judges.base import BatchApiUnsupported, Judge
from labeler.media import video
from labeler.schemas import JudgeEstimate, Judgment, ManifestEntry, SegmentRequest, read_records
from tests.conftest import textured_frames
from tests.fake_judges import BrightnessJudge, frames_with_level

REPO = Path(__file__).resolve().parents[1]
FPS = 8.0


def _manifest(tmp_path: Path, entries: list[dict[str, Any]]) -> Path:
    import json

    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return path


@pytest.fixture
def chroma_pair(tmp_path: Path) -> Path:
    """A is the reference itself; B is the reference mirrored left to right: equally sharp, clean
    and smooth (every no-reference measure is blind to it), but not the scene that was asked for."""
    clean = textured_frames(24, h=96, w=128, seed=3)
    video.write_video(tmp_path / "ref.mp4", clean, FPS, crf=4)
    video.write_video(tmp_path / "a.mp4", clean, FPS, crf=4)
    video.write_video(tmp_path / "b.mp4", clean[:, :, ::-1].copy(), FPS, crf=4)
    entry = {"pair_id": "p1", "prompt": "texture", "video_a": "a.mp4", "video_b": "b.mp4",
             "reference": "ref.mp4"}  # fmt: skip
    return _manifest(tmp_path, [entry])


def _batch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labeler.batch", *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


def test_reference_decides_a_defect_only_it_reveals_through_the_batch_cli(chroma_pair, tmp_path):
    with_ref, without = tmp_path / "with.jsonl", tmp_path / "without.jsonl"
    common = ["--no-cache", "--quiet"]
    first = _batch(str(chroma_pair), "--out", str(with_ref), *common)
    second = _batch(str(chroma_pair), "--out", str(without), "--no-reference", *common)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    labels_with = read_records(with_ref)[0].labels
    labels_without = read_records(without)[0].labels
    assert labels_with == ["A"] * len(labels_with), labels_with
    assert labels_without.count("A") < len(labels_without), labels_without


def test_missing_reference_fails_that_pair_when_the_judge_uses_references(tmp_path, make_video):
    make_video("a.mp4", n_frames=16, fps=FPS)
    make_video("b.mp4", n_frames=16, fps=FPS, seed=1)
    good = {"pair_id": "good", "prompt": "x", "video_a": "a.mp4", "video_b": "b.mp4"}
    bad = {**good, "pair_id": "bad", "reference": "missing.mp4"}
    manifest = _manifest(tmp_path, [good, bad])
    out = tmp_path / "out.jsonl"
    proc = _batch(str(manifest), "--out", str(out), "--no-cache", "--quiet")
    assert proc.returncode == 1, proc.stderr  # some pairs failed
    assert [r.pair_id for r in read_records(out)] == ["good"]
    errors = (tmp_path / "out.errors.jsonl").read_text(encoding="utf-8")
    assert '"bad"' in errors and "missing.mp4" in errors


@pytest.mark.parametrize(
    ("ref_kwargs", "message"),
    [
        ({"n_frames": 12}, "frames"),
        ({"fps": 12.0}, "fps"),
        ({"h": 96, "w": 64}, "aspect ratio"),
    ],
)
def test_mismatched_reference_is_a_clear_error(tmp_path, make_video, ref_kwargs, message):
    make_video("a.mp4", n_frames=16, fps=FPS)
    make_video("b.mp4", n_frames=16, fps=FPS)
    kw = {"n_frames": 16, "fps": FPS, **ref_kwargs}
    ref = make_video("ref.mp4", **kw)
    entry = ManifestEntry(pair_id="p", prompt="x", video_a=str(tmp_path / "a.mp4"),
                          video_b=str(tmp_path / "b.mp4"), reference=str(ref))  # fmt: skip
    from labeler.judges.metrics import MetricsJudge

    with pytest.raises(video.VideoMismatchError, match=message) as info:
        Engine(MetricsJudge()).plan_pair(entry)
    assert "ref.mp4" in str(info.value)


def test_a_judge_without_references_never_decodes_or_checks_one(tmp_path, monkeypatch):
    a = np.concatenate([frames_with_level(8, 120), frames_with_level(8, 90)])
    pa = video.write_video(tmp_path / "a.mp4", a, FPS, crf=8)
    pb = video.write_video(tmp_path / "b.mp4", a[::-1].copy(), FPS, crf=8)
    entry = ManifestEntry(pair_id="p", prompt="x", video_a=str(pa), video_b=str(pb),
                          reference=str(tmp_path / "not-there.mp4"))  # fmt: skip
    judge = BrightnessJudge()
    assert judge.uses_reference is False
    record = asyncio.run(Engine(judge, EngineConfig(frames_per_segment=4)).label_pair(entry))
    assert record.labels == ["A", "B"]
    assert all(call.reference is None for call in judge.calls)


def test_a_judge_that_uses_references_receives_the_decoded_frames(tmp_path):
    a = frames_with_level(16, 120)
    pa = video.write_video(tmp_path / "a.mp4", a, FPS, crf=8)
    pb = video.write_video(tmp_path / "b.mp4", a, FPS, crf=8)
    pr = video.write_video(tmp_path / "r.mp4", frames_with_level(16, 200), FPS, crf=8)

    class RefJudge(BrightnessJudge):
        uses_reference = True

    judge = RefJudge()
    entry = ManifestEntry(pair_id="p", prompt="x", video_a=str(pa), video_b=str(pb), reference=str(pr))
    asyncio.run(Engine(judge, EngineConfig(frames_per_segment=4)).label_pair(entry))
    assert judge.calls and all(c.reference is not None for c in judge.calls)
    assert all(abs(float(c.reference.mean()) - 200) < 4 for c in judge.calls)  # type: ignore[union-attr]


class _Recording(Judge):
    """A minimal judge overriding only the capability under test."""

    name = "recording"
    model = "rec-1"

    def __init__(self) -> None:
        self.closed = 0
        self.estimated: list[tuple[int, ...]] = []

    def fingerprint(self) -> dict[str, Any]:
        return {}

    async def judge(self, request: SegmentRequest) -> Judgment:
        return Judgment(label="tie", p_a=0.1, p_b=0.1, p_tie=0.8)

    async def aclose(self) -> None:
        self.closed += 1

    def estimate(self, request: SegmentRequest) -> JudgeEstimate:
        self.estimated.append(request.frames_first.shape)
        return JudgeEstimate(images=7, input_tokens=1000, output_tokens=10)


def test_engine_aclose_closes_the_judge():
    judge = _Recording()
    asyncio.run(Engine(judge).aclose())
    assert judge.closed == 1


def test_dry_run_counts_what_the_judge_estimates(tmp_path, make_video):
    make_video("a.mp4", n_frames=16, fps=FPS)
    make_video("b.mp4", n_frames=16, fps=FPS, seed=1)
    manifest = _manifest(tmp_path, [{"pair_id": "p", "prompt": "x", "video_a": "a.mp4", "video_b": "b.mp4"}])
    judge = _Recording()
    report = dry_run(manifest, Engine(judge, EngineConfig(segment_seconds=1.0)))
    assert judge.estimated, "the dry run never asked the judge"
    # 2 segments x 2 orders, 7 images and 1000 input tokens each, as the judge said
    assert "28" in report and "4000" in report


def test_default_judges_refuse_the_batch_api_with_a_clear_error():
    judge = _Recording()
    assert judge.supports_batch_api is False
    blank = np.zeros((1, 4, 4, 3), np.uint8)
    with pytest.raises(BatchApiUnsupported, match="recording"):
        judge.build_body(SegmentRequest("x", blank, blank, 0.0, 1.0))
    with pytest.raises(BatchApiUnsupported):
        judge.batch_client()


def test_ready_defaults_to_true_and_can_be_overridden():
    class Down(_Recording):
        async def ready(self) -> bool:
            return False

    assert asyncio.run(_Recording().ready()) is True
    assert asyncio.run(Down().ready()) is False

"""labeler.frame_source: a window's videos read once, segments as views, shared videos decoded once.

Pairs are real H.264 files labeled through the real engine (``run_batch``) with a judge that uses
references; ``video.read_frames`` is wrapped (not replaced) to count what is decoded.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from labeler.engine import Engine, EngineConfig
from labeler.media import video
from labeler.runners.local import run_batch
from labeler.schemas import Judgment, ManifestEntry, SegmentRequest
from tests.conftest import textured_frames
from tests.fake_judges import BrightnessJudge

FPS = 8.0


class ReferenceJudge(BrightnessJudge):
    """Asks for references, and keeps no request (so no frames) once it has answered."""

    name = "test-reference"
    uses_reference = True

    async def judge(self, request: SegmentRequest) -> Judgment:
        answer = await super().judge(request)
        self.calls.clear()
        return answer


@pytest.fixture
def decoded(monkeypatch) -> Counter:
    """How many times each video file was decoded."""
    counts: Counter = Counter()
    real = video.read_frames

    def counting(path, indices, max_side=None):
        counts[Path(path).name] += 1
        return real(path, indices, max_side)

    monkeypatch.setattr(video, "read_frames", counting)
    return counts


def write(path: Path, seed: int, n: int = 24) -> str:
    return str(video.write_video(path, textured_frames(n, seed=seed), FPS, crf=12, preset="ultrafast"))


def pairs_sharing_a_reference(tmp_path: Path, n: int, *, ref_copies: int = 1) -> list[ManifestEntry]:
    """``n`` pairs with their own A and B and one reference (``ref_copies`` files with its bytes)."""
    refs = [write(tmp_path / "ref.mp4", 0)]
    for k in range(1, ref_copies):
        refs.append(str(shutil.copy(refs[0], tmp_path / f"ref_copy{k}.mp4")))
    return [
        ManifestEntry(
            pair_id=f"p{i}",
            prompt="x",
            video_a=write(tmp_path / f"a{i}.mp4", 10 + i),
            video_b=write(tmp_path / f"b{i}.mp4", 50 + i),
            reference=refs[i % len(refs)],
            segment_seconds=None,
        )
        for i in range(n)
    ]


def label(entries: list[ManifestEntry], tmp_path: Path, config: EngineConfig, workers: int) -> Engine:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(e.model_dump_json() + "\n" for e in entries))
    engine = Engine(ReferenceJudge(), config)
    result = asyncio.run(run_batch(manifest, tmp_path / "out.jsonl", engine, workers=workers, progress=False))
    assert result.ok == len(entries) and result.failed == 0
    return engine


def test_segments_are_read_only_views_of_one_read_per_video(tmp_path, decoded):
    (entry,) = pairs_sharing_a_reference(tmp_path, 1)
    engine = Engine(ReferenceJudge(), EngineConfig(frames_per_segment=4))
    plan = engine.plan_pair(entry)
    frames = asyncio.run(engine.decode_segments(plan, plan.segments))
    assert decoded == {"a0.mp4": 1, "b0.mp4": 1, "ref.mp4": 1}
    for seg in plan.segments:
        fa, fb, ref = frames[seg.index]
        for got, path in ((fa, entry.video_a), (fb, entry.video_b), (ref, str(entry.reference))):
            assert np.array_equal(got, video.read_frames(path, seg.frame_indices, 448))
            assert got.base is not None and not got.flags.writeable  # a view, and nobody may write it
    assert frames[0][0].base is frames[1][0].base  # one array per video for the whole window


def test_pairs_in_flight_together_decode_a_shared_reference_once(tmp_path, decoded):
    entries = pairs_sharing_a_reference(tmp_path, 3)
    engine = label(entries, tmp_path, EngineConfig(frame_memo_mib=0), workers=3)
    assert decoded["ref.mp4"] == 1 and engine.stats.shared_decodes == 2
    assert all(decoded[f"{side}{i}.mp4"] == 1 for side in "ab" for i in range(3))


def test_a_reference_read_again_later_is_kept_from_its_first_read(tmp_path, decoded):
    """One pair at a time: a reference is kept from its first read (the generations for a prompt
    are all compared with it), so the later pairs get it from the memo; the pairs' own videos,
    each read by one pair, are never kept."""
    entries = pairs_sharing_a_reference(tmp_path, 4)
    engine = label(entries, tmp_path, EngineConfig(), workers=1)
    assert decoded["ref.mp4"] == 1 and engine.stats.shared_decodes == 3
    assert len(engine.frames._memo) == 1


def test_no_memo_decodes_the_reference_for_every_pair_one_at_a_time(tmp_path, decoded):
    entries = pairs_sharing_a_reference(tmp_path, 4)
    engine = label(entries, tmp_path, EngineConfig(frame_memo_mib=0), workers=1)
    assert decoded["ref.mp4"] == 4 and engine.stats.shared_decodes == 0


def test_sharing_is_by_content_not_by_path(tmp_path, decoded):
    entries = pairs_sharing_a_reference(tmp_path, 4, ref_copies=2)  # ref.mp4, ref_copy1.mp4, ...
    label(entries, tmp_path, EngineConfig(), workers=1)
    assert decoded["ref.mp4"] + decoded["ref_copy1.mp4"] == 1  # 4 reads of the same bytes


def test_the_memo_stays_within_its_size(tmp_path, decoded):
    """Two references read alternately, with room for one: the memo never holds more than its size."""
    entries = pairs_sharing_a_reference(tmp_path, 6)
    other = write(tmp_path / "ref2.mp4", 7)
    entries = [e.model_copy(update={"reference": other}) if i % 2 else e for i, e in enumerate(entries)]
    window = sum(len(s.frame_indices) for s in Engine(ReferenceJudge()).plan_pair(entries[0]).segments)
    size_mib = 1.5 * window * 64 * 96 * 3 / 2**20  # room for one reference's frames, not two
    engine = label(entries, tmp_path, EngineConfig(frame_memo_mib=size_mib), workers=1)
    assert len(engine.frames._memo) == 1 and engine.frames._memo_bytes <= size_mib * 2**20
    assert decoded["ref.mp4"] + decoded["ref2.mp4"] == 6  # each evicts the other: nothing served


def test_a_shared_reference_that_cannot_be_read_fails_every_pair_using_it(tmp_path):
    entries = pairs_sharing_a_reference(tmp_path, 3)
    Path(str(entries[0].reference)).write_bytes(b"not a video at all" * 100)  # after writing, before labeling
    manifest = tmp_path / "manifest.jsonl"
    good = entries[0].model_copy(update={"pair_id": "ok", "reference": None})
    manifest.write_text("".join(e.model_dump_json() + "\n" for e in [*entries, good]))
    engine = Engine(ReferenceJudge())
    result = asyncio.run(run_batch(manifest, tmp_path / "out.jsonl", engine, workers=3, progress=False))
    assert result.ok == 1 and result.failed == 3
    assert all("VideoReadError" in message for _, message in result.failures)


@pytest.mark.parametrize("workers", [1, 3])
def test_decode_workers_bounds_the_videos_decoding_at_once(tmp_path, monkeypatch, workers):
    """A pair's A, B and reference decode in parallel, never more than ``decode_workers`` at once."""
    running, peak, lock = [0], [0], threading.Lock()
    real = video.read_frames

    def slow(path, indices, max_side=None):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)  # long enough for the other reads to start if they may
        try:
            return real(path, indices, max_side)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(video, "read_frames", slow)
    label(pairs_sharing_a_reference(tmp_path, 2), tmp_path, EngineConfig(decode_workers=workers), workers=2)
    assert peak[0] == workers


def test_a_video_two_pairs_read_at_the_same_time_is_kept_for_the_pairs_after_them(tmp_path, decoded):
    """Read by a second pair while the first still holds it (or waits for its decode): that is two
    pairs, so the frames go to the memo, and a third pair, after both let go, decodes nothing."""
    import gc

    from labeler.engine_types import EngineStats
    from labeler.frame_source import FrameSource

    path = write(tmp_path / "ref.mp4", 0)

    async def read(source: FrameSource) -> np.ndarray:
        return await source.frames(path, "digest-of-ref", [0, 2, 4])

    async def held_by_one_then_read_by_another() -> FrameSource:
        source = FrameSource(EngineConfig(), EngineStats())
        first = await read(source)
        second = await read(source)  # the first pair still holds the frames
        assert second is first and decoded["ref.mp4"] == 1
        return source

    async def decoded_for_two_at_once() -> FrameSource:
        source = FrameSource(EngineConfig(), EngineStats())
        first, second = await asyncio.gather(read(source), read(source))  # one decode, two readers
        assert second is first and decoded["ref.mp4"] == 1
        return source

    for together in (held_by_one_then_read_by_another, decoded_for_two_at_once):
        decoded.clear()
        source = asyncio.run(together())
        gc.collect()  # both pairs are done: nothing holds the frames but the memo
        asyncio.run(read(source))
        assert decoded["ref.mp4"] == 1 and source.stats.shared_decodes == 2, together.__name__


def test_a_video_read_by_one_pair_only_is_not_kept(tmp_path, decoded):
    from labeler.engine_types import EngineStats
    from labeler.frame_source import FrameSource

    path = write(tmp_path / "a.mp4", 0)
    source = FrameSource(EngineConfig(), EngineStats())
    asyncio.run(source.frames(path, "digest-of-a", [0, 2, 4]))
    assert not source._memo and source._memo_bytes == 0

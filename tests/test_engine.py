"""Engine: swap voting, caching (no decode, no request on a hit), retries, budgets, inline frames."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from labeler.cache import JudgmentCache
from labeler.engine import BudgetExceeded, Engine, EngineConfig, FrameSegment
from labeler.media import video
from labeler.schemas import FatalJudgeError, ManifestEntry, TransientJudgeError
from tests.fake_judges import BrightnessJudge, ScriptedFailures, frames_with_level

FPS = 8.0


@pytest.fixture
def pair(tmp_path):
    """3 one-second segments at 8 fps: B darker in segment 0, equal in 1, brighter in 2."""
    a = np.concatenate([frames_with_level(8, 120)] * 3)
    b = np.concatenate([frames_with_level(8, 90), frames_with_level(8, 120), frames_with_level(8, 150)])
    pa = video.write_video(tmp_path / "a.mp4", a, FPS, crf=8)
    pb = video.write_video(tmp_path / "b.mp4", b, FPS, crf=8)
    return ManifestEntry(pair_id="p1", prompt="a gray wall", video_a=str(pa), video_b=str(pb))


def run(coro):
    return asyncio.run(coro)


def test_labels_follow_the_judge_in_both_orders(pair):
    judge = BrightnessJudge()
    record = run(Engine(judge, EngineConfig(frames_per_segment=4)).label_pair(pair))
    assert record.labels == ["A", "tie", "B"]
    assert [s.consistent for s in record.segments] == [True, True, True]
    assert [(s.start_frame, s.end_frame) for s in record.segments] == [(0, 8), (8, 16), (16, 24)]
    assert record.segments[0].votes[0].order == "ab" and record.segments[0].votes[1].order == "ba"
    assert record.video_label == "tie"  # one A, one B
    # 3 segments x 2 orders, and the "ba" request really shows B first
    assert len(judge.calls) == 6
    first_means = sorted(round(float(c.frames_first.mean())) for c in judge.calls if c.index == 0)
    assert first_means[0] < 100 < first_means[1]
    assert record.usage.requests == 6 and record.usage.input_tokens == 60


def test_position_bias_becomes_inconsistent_tie(pair):
    record = run(Engine(BrightnessJudge(position_bias=True)).label_pair(pair))
    assert record.labels == ["tie", "tie", "tie"]
    assert all(s.consistent is False for s in record.segments)
    assert all(abs(s.p_a - s.p_b) < 1e-6 for s in record.segments)


def test_no_swap_sends_one_order(pair):
    judge = BrightnessJudge(position_bias=True)
    record = run(Engine(judge, EngineConfig(swap=False)).label_pair(pair))
    assert record.labels == ["A", "A", "A"]
    assert len(judge.calls) == 3 and record.segments[0].consistent is None
    assert record.labeler.swap is False


def test_cache_hit_costs_no_decode_and_no_request(pair, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = BrightnessJudge()
    r1 = run(Engine(first, cache=JudgmentCache(cache_dir)).label_pair(pair))

    def no_decode(*a, **k):
        raise AssertionError("a fully cached pair must not decode frames")

    monkeypatch.setattr(video, "read_frames", no_decode)
    monkeypatch.setattr(video, "probe", no_decode)  # probe results and hashes are cached too
    monkeypatch.setattr(video, "file_hash", no_decode)
    second = BrightnessJudge()
    engine = Engine(second, cache=JudgmentCache(cache_dir))
    r2 = run(engine.label_pair(pair))
    assert second.calls == []
    assert engine.stats.cache_hits == 6 and r2.usage.cache_hits == 6 and r2.usage.requests == 0
    assert r1.model_dump(exclude={"usage"}) == r2.model_dump(exclude={"usage"})
    assert r2.usage.input_tokens == r1.usage.input_tokens  # what the labels cost, cached or not


def test_rewritten_video_is_probed_and_judged_again(pair, tmp_path):
    cache_dir = tmp_path / "cache"
    run(Engine(BrightnessJudge(), cache=JudgmentCache(cache_dir)).label_pair(pair))
    video.write_video(pair.video_b, np.concatenate([frames_with_level(8, 200)] * 3), FPS, crf=8)
    judge = BrightnessJudge()
    record = run(Engine(judge, cache=JudgmentCache(cache_dir)).label_pair(pair))
    assert len(judge.calls) == 6 and record.labels == ["B", "B", "B"]


def test_cache_key_changes_with_settings(pair, tmp_path):
    cache_dir = tmp_path / "cache"
    run(Engine(BrightnessJudge(), cache=JudgmentCache(cache_dir)).label_pair(pair))
    for judge, cfg in [
        (BrightnessJudge(margin=3.0), EngineConfig()),  # judge fingerprint
        (BrightnessJudge(), EngineConfig(max_side=32)),  # resize setting
        (BrightnessJudge(), EngineConfig(frames_per_segment=3)),  # frame indices
    ]:
        run(Engine(judge, cfg, JudgmentCache(cache_dir)).label_pair(pair))
        assert len(judge.calls) == 6
    other_prompt = pair.model_copy(update={"prompt": "another prompt"})
    judge = BrightnessJudge()
    run(Engine(judge, cache=JudgmentCache(cache_dir)).label_pair(other_prompt))
    assert len(judge.calls) == 6


def test_partial_cache_decodes_only_missing_segments(pair, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    # Fill the cache for the whole pair, then drop segment 1's entries.
    engine = Engine(BrightnessJudge(), EngineConfig(frames_per_segment=4), JudgmentCache(cache_dir))
    run(engine.label_pair(pair))
    plan = engine.plan_pair(pair)
    for key in plan.segments[1].keys.values():
        engine.cache._cache.delete(key)
    engine.cache.close()
    decoded: list[list[int]] = []
    real = video.read_frames

    def spy(path, indices, max_side=None):
        decoded.append(list(indices))
        return real(path, indices, max_side)

    monkeypatch.setattr(video, "read_frames", spy)
    judge = BrightnessJudge()
    run(Engine(judge, EngineConfig(frames_per_segment=4), JudgmentCache(cache_dir)).label_pair(pair))
    assert len(judge.calls) == 2 and {c.index for c in judge.calls} == {1}
    assert decoded == [plan.segments[1].frame_indices] * 2  # A and B, only segment 1's frames


def test_transient_failures_retry_and_honor_retry_after(pair):
    judge = ScriptedFailures(
        [TransientJudgeError("429", retry_after=0.2, status=429), TransientJudgeError("503", status=503)]
    )
    engine = Engine(judge, EngineConfig(backoff_initial=0.01, backoff_max=0.02))
    loop_time = []

    async def go():
        t0 = asyncio.get_running_loop().time()
        rec = await engine.label_pair(pair)
        loop_time.append(asyncio.get_running_loop().time() - t0)
        return rec

    record = run(go())
    assert record.labels == ["A", "tie", "B"]
    assert engine.stats.retries == 2 and engine.stats.requests == 8
    assert loop_time[0] >= 0.2  # the Retry-After pause was respected


def test_gives_up_after_max_attempts(pair):
    judge = ScriptedFailures([TransientJudgeError("503", status=503)] * 100)
    engine = Engine(
        judge, EngineConfig(max_attempts=3, backoff_initial=0.001, backoff_max=0.002, concurrency=1)
    )
    with pytest.raises(TransientJudgeError):
        run(engine.label_pair(pair))
    assert engine.stats.judge_errors >= 1


def test_fatal_errors_are_not_retried(pair):
    judge = ScriptedFailures([FatalJudgeError("401 bad key")] * 6)
    engine = Engine(judge, EngineConfig(concurrency=1))
    with pytest.raises(FatalJudgeError):
        run(engine.label_pair(pair))
    assert engine.stats.retries == 0


def test_timeout_is_transient_and_retried(pair):
    class SlowOnce(BrightnessJudge):
        slow = 2

        async def judge(self, request):
            if self.slow:
                self.slow -= 1
                await asyncio.sleep(5)
            return await super().judge(request)

    engine = Engine(SlowOnce(), EngineConfig(request_timeout=0.2, backoff_initial=0.01, backoff_max=0.02))
    record = run(engine.label_pair(pair))
    assert record.labels == ["A", "tie", "B"] and engine.stats.retries == 2


def test_request_budget_stops_sending(pair):
    judge = BrightnessJudge()
    engine = Engine(judge, EngineConfig(max_requests=4, concurrency=1))
    with pytest.raises(BudgetExceeded):
        run(engine.label_pair(pair))
    assert len(judge.calls) == 4


def test_concurrency_bound(pair):
    class Tracking(BrightnessJudge):
        live = peak = 0

        async def judge(self, request):
            Tracking.live += 1
            Tracking.peak = max(Tracking.peak, Tracking.live)
            await asyncio.sleep(0.02)
            Tracking.live -= 1
            return await super().judge(request)

    run(Engine(Tracking(), EngineConfig(concurrency=2)).label_pair(pair))
    assert Tracking.peak == 2


def test_mismatched_pair_is_a_clear_error(tmp_path, pair):
    short = video.write_video(tmp_path / "short.mp4", frames_with_level(20, 120), FPS)
    bad = pair.model_copy(update={"video_b": str(short)})
    with pytest.raises(video.VideoMismatchError, match="24"):
        run(Engine(BrightnessJudge()).label_pair(bad))


def test_inline_frames(tmp_path):
    segs = [
        FrameSegment(frames_with_level(4, 130), frames_with_level(4, 100), 0.0, 1.0),
        FrameSegment(frames_with_level(4, 100), frames_with_level(4, 100), 1.0, 2.0),
    ]
    judge = BrightnessJudge()
    engine = Engine(judge, cache=JudgmentCache(tmp_path / "c"))
    record = run(engine.label_frames("prompt", segs, pair_id="x"))
    assert record.labels == ["A", "tie"] and record.num_frames == 8
    assert [(s.start_frame, s.end_frame) for s in record.segments] == [(0, 4), (4, 8)]
    again = run(Engine(BrightnessJudge(), cache=JudgmentCache(tmp_path / "c")).label_frames("prompt", segs))
    assert again.usage.cache_hits == 4
    with pytest.raises(ValueError, match="differ in shape"):
        run(engine.label_frames("p", [FrameSegment(frames_with_level(4, 1), frames_with_level(3, 1), 0, 1)]))


def test_judge_prepare_runs_before_a_request_slot_is_taken(pair):
    """A judge's prepare() (frame encoding) must not hold one of the engine's request slots: with
    one slot, the other requests get prepared while the first one is being judged."""

    class Preparing(BrightnessJudge):
        def __init__(self):
            super().__init__(delay=0.05)
            self.in_judge = 0
            self.prepared_while_judging = 0
            self.prepares = 0
            self.started = asyncio.Event()

        async def prepare(self, request):
            self.prepares += 1
            if self.prepares > 1:
                await self.started.wait()  # resumes while judge() sleeps, unless prepare needs a slot
            self.prepared_while_judging += self.in_judge > 0

        async def judge(self, request):
            self.in_judge += 1
            self.started.set()
            try:
                return await super().judge(request)
            finally:
                self.in_judge -= 1

    judge = Preparing()
    record = run(Engine(judge, EngineConfig(concurrency=1)).label_pair(pair))
    assert record.labels == ["A", "tie", "B"]
    assert judge.prepares == 6 and judge.prepared_while_judging == 5


# --------------------------------------------------------------------------- hostile input (#15)


def _padded(path, size: int) -> bytes:
    """The file's bytes followed by an MP4 ``free`` box, so two different clips can share a size."""
    data = path.read_bytes()
    pad = size - len(data)
    return data + pad.to_bytes(4, "big") + b"free" + b"\0" * (pad - 8)


def test_same_size_rewrite_with_restored_mtime_is_judged_again(pair, tmp_path):
    """#15 item 5: the content hash decides, not (path, size, mtime)."""
    import os
    import time

    new_b = video.write_video(
        tmp_path / "b2.mp4", np.concatenate([frames_with_level(8, 200)] * 3), FPS, crf=8
    )
    old_b = tmp_path / "b-old.mp4"
    os.replace(pair.video_b, old_b)
    size = max(old_b.stat().st_size, new_b.stat().st_size) + 64
    with open(pair.video_b, "wb") as fh:
        fh.write(_padded(old_b, size))
    cache_dir = tmp_path / "cache"
    first = run(Engine(BrightnessJudge(), cache=JudgmentCache(cache_dir)).label_pair(pair))
    assert first.labels == ["A", "tie", "B"]
    before = os.stat(pair.video_b)
    time.sleep(0.01)
    with open(pair.video_b, "r+b") as fh:  # rewritten in place: same inode, same size
        fh.write(_padded(new_b, size))
    os.utime(pair.video_b, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(pair.video_b)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )
    judge = BrightnessJudge()
    record = run(Engine(judge, cache=JudgmentCache(cache_dir)).label_pair(pair))
    assert len(judge.calls) == 6 and record.labels == ["B", "B", "B"]


@pytest.mark.parametrize("garbage", ['{"not json', '{"info": 1}', '{"fps": "x"}', "[1, 2]", 7])
def test_a_corrupt_video_meta_entry_is_a_miss(pair, tmp_path, garbage):
    """#15 item 6: the pair is labeled from the cache anyway, and the entry is rewritten."""
    cache_dir = tmp_path / "cache"
    first = run(Engine(BrightnessJudge(), cache=JudgmentCache(cache_dir)).label_pair(pair))
    cache = JudgmentCache(cache_dir)
    meta_keys = [k for k in cache._cache.iterkeys() if str(k).startswith("video-")]
    assert meta_keys
    for key in meta_keys:
        cache._cache.set(key, garbage)
    judge = BrightnessJudge()
    record = run(Engine(judge, cache=cache).label_pair(pair))
    assert judge.calls == [] and record.labels == first.labels
    again = JudgmentCache(cache_dir)
    assert all(isinstance(again.get_meta(k), dict) for k in meta_keys)


def test_a_retry_after_over_the_cap_is_a_failed_attempt_not_a_pause(pair):
    """#15 item 9: Retry-After 100000 must not pause the run; it costs an attempt like a 503."""
    judge = ScriptedFailures([TransientJudgeError("429 slow down", retry_after=100000, status=429)] * 100)
    engine = Engine(
        judge, EngineConfig(max_attempts=3, backoff_initial=0.001, backoff_max=0.002, max_retry_after=60)
    )

    async def bounded():  # without the cap this waits 100000 s: the guard turns a hang into a failure
        return await asyncio.wait_for(engine.label_pair(pair), 60)

    with pytest.raises(TransientJudgeError, match="over --max-retry-after 60 s"):
        run(bounded())
    assert judge.attempts >= 3


def test_retry_after_within_the_cap_is_honoured(pair):
    judge = ScriptedFailures([TransientJudgeError("429", retry_after=0.2, status=429)])
    engine = Engine(judge, EngineConfig(max_retry_after=0.5, backoff_initial=0.001, backoff_max=0.002))
    t = []

    async def go():
        t0 = asyncio.get_running_loop().time()
        await engine.label_pair(pair)
        t.append(asyncio.get_running_loop().time() - t0)

    run(go())
    assert t[0] >= 0.2 and engine.stats.retries == 1


@pytest.mark.parametrize("window, calls", [(1, 3), (2, 2), (16, 1)])
def test_decode_window_bounds_the_frames_held_per_pair(pair, monkeypatch, window, calls):
    """#15 item 11: a pair's frames are decoded (and held) ``decode_window`` segments at a time."""
    decoded: list[int] = []
    real = video.read_frames

    def spy(path, indices, max_side=None):
        decoded.append(len(indices))
        return real(path, indices, max_side)

    monkeypatch.setattr(video, "read_frames", spy)
    cfg = EngineConfig(frames_per_segment=4, decode_window=window)
    record = run(Engine(BrightnessJudge(), cfg).label_pair(pair))
    assert record.labels == ["A", "tie", "B"]
    assert len(decoded) == 2 * calls and max(decoded) <= 4 * window  # A and B per window

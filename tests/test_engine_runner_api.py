"""The engine's public API for runners (pending requests, record) and its one ledger."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from labeler.cache import JudgmentCache
from labeler.engine import BudgetExceeded, Engine, EngineConfig, PairPlan, SegmentPlan
from labeler.ledger import Ledger, Limits
from labeler.media import video
from labeler.schemas import Judgment, ManifestEntry
from tests.fake_judges import BrightnessJudge, frames_with_level

FPS = 8.0


@pytest.fixture
def pair(tmp_path):
    """3 one-second segments at 8 fps."""
    a = np.concatenate([frames_with_level(8, 120)] * 3)
    b = np.concatenate([frames_with_level(8, 90), frames_with_level(8, 120), frames_with_level(8, 150)])
    pa = video.write_video(tmp_path / "a.mp4", a, FPS, crf=8)
    pb = video.write_video(tmp_path / "b.mp4", b, FPS, crf=8)
    return ManifestEntry(pair_id="p1", prompt="a gray wall", video_a=str(pa), video_b=str(pb))


class _CountingEngine(Engine):
    """Records how many segments each decode asks for (through the public decode_segments)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoded: list[int] = []

    async def decode_segments(self, plan: PairPlan, missing: list[SegmentPlan]) -> dict[int, tuple]:
        self.decoded.append(len(missing))
        return await super().decode_segments(plan, missing)


async def _collect(engine: Engine, entries, skipped=None):
    return [p async for p in engine.pending_requests(entries, skipped=skipped)]


@pytest.mark.parametrize("window, decodes", [(1, [1, 1, 1]), (2, [2, 1]), (16, [3])])
def test_pending_requests_decode_a_window_at_a_time(pair, tmp_path, window, decodes):
    engine = _CountingEngine(BrightnessJudge(), EngineConfig(frames_per_segment=4, decode_window=window))
    pending = asyncio.run(_collect(engine, [pair, pair]))  # the same pair twice: its keys come once
    assert engine.decoded[: len(decodes)] == decodes
    assert len(pending) == 6 and len({p.key for p in pending}) == 6
    assert {(p.request.index, p.pair_id) for p in pending} == {(i, "p1") for i in range(3)}
    ba = [p.request for p in pending if p.request.index == 0][1]  # "ba" shows B first
    assert ba.frames_first.mean() < ba.frames_second.mean()


def test_pending_requests_skip_cached_keys_and_unplannable_pairs(pair, tmp_path):
    engine = Engine(BrightnessJudge(), EngineConfig(frames_per_segment=4), JudgmentCache(tmp_path / "c"))
    first = asyncio.run(_collect(engine, [pair]))
    engine.record(first[0].key, Judgment(label="tie", p_a=0.2, p_b=0.2, p_tie=0.6))
    broken = pair.model_copy(update={"pair_id": "bad", "video_a": str(tmp_path / "missing.mp4")})
    skipped: list[str] = []
    again = asyncio.run(_collect(engine, [broken, pair], skipped=lambda e, exc: skipped.append(e.pair_id)))
    assert skipped == ["bad"] and [p.key for p in again] == [p.key for p in first[1:]]
    engine.cache.close()


class _PricedJudge(BrightnessJudge):
    name = "test-priced"

    def cost_usd(
        self, input_tokens: int, output_tokens: int, *, batch: bool = False, cached_tokens: int = 0
    ) -> float | None:
        return (input_tokens - cached_tokens / 2 + output_tokens) * (0.5 if batch else 1.0)


def test_record_bills_at_batch_price_and_the_ledger_enforces_the_budget():
    engine = Engine(_PricedJudge(), EngineConfig(max_cost=10.0))
    answer = Judgment(label="A", p_a=0.8, p_b=0.1, p_tie=0.1, input_tokens=6, output_tokens=2)
    engine.record("k1", answer, batch=True)
    assert engine.stats.cost_usd == 4.0 and engine.stats.input_tokens == 6
    engine.ledger.check()  # $4 of $10: room left
    assert engine.ledger.left() == (None, 6.0)
    engine.record("k2", answer)  # online price: $8 more
    assert engine.ledger.spent() is not None and "cost budget spent" in engine.ledger.spent()
    with pytest.raises(BudgetExceeded):
        engine.ledger.before_request()
    assert engine.stats.requests == 0  # nothing counted for a request that was refused


def test_the_request_budget_counts_submitted_lines_too():
    ledger = Ledger(budget=Limits(max_requests=3))
    ledger.submitted(2)
    ledger.before_request()
    with pytest.raises(BudgetExceeded, match="3 requests sent"):
        ledger.before_request()

"""Cached input tokens (``usage.prompt_tokens_details.cached_tokens``) billed at the model's
cached-input rate, from the answer through the ledger, online and through the Batch API."""

from __future__ import annotations

import asyncio
import json

import pytest

from labeler.engine import Engine, EngineConfig
from labeler.judges.openai_answer import read_completion
from labeler.judges.openai_api import OpenAIJudge
from labeler.judges.pricing import estimate_cost
from labeler.ledger import Ledger
from labeler.schemas import SegmentRequest
from labeler.standin import StandinServer
from tests.conftest import textured_frames

M = 1_000_000


def _answer(prompt: int, cached: int, completion: int = 100) -> dict:
    return {
        "model": "gpt-4.1",
        "choices": [
            {
                "message": {"content": json.dumps({"label": "A", "rationale": "sharper"})},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


@pytest.mark.parametrize(
    ("model", "cached_rate"),
    [("gpt-4o", 1.25), ("gpt-4.1", 0.50), ("gpt-4.1-nano", 0.025), ("gpt-5", 0.125), ("gpt-5.2", 0.175)],
)
def test_cached_tokens_cost_the_cached_rate(model, cached_rate):
    assert estimate_cost(model, M, 0, cached_tokens=M) == pytest.approx(cached_rate)
    full = estimate_cost(model, M, 0)
    assert full is not None and full > cached_rate  # the discount is real
    # Half cached: half at each rate; the Batch API halves the whole.
    half = estimate_cost(model, 2 * M, 0, cached_tokens=M)
    assert half == pytest.approx(full + cached_rate)
    assert estimate_cost(model, 2 * M, 0, cached_tokens=M, batch=True) == pytest.approx(
        (full + cached_rate) / 2
    )


@pytest.mark.parametrize("model", ["o3-pro", "gpt-5-pro", "chatgpt-4o-latest"])
def test_a_model_without_a_cached_rate_bills_cached_tokens_as_input(model):
    assert estimate_cost(model, M, 10, cached_tokens=M) == estimate_cost(model, M, 10)


def test_a_price_override_names_no_cached_rate_so_cached_tokens_are_input():
    assert estimate_cost("my-model", M, 0, price=(2.0, 8.0), cached_tokens=M) == pytest.approx(2.0)


def test_cached_tokens_outside_the_input_are_refused():
    with pytest.raises(ValueError, match="cached_tokens"):
        estimate_cost("gpt-4.1", 10, 0, cached_tokens=11)


def test_a_batch_answer_with_cached_tokens_is_billed_at_the_cached_rate():
    judge = OpenAIJudge("gpt-4.1", base_url="http://127.0.0.1:9/v1", api_key="k")
    engine = Engine(judge, EngineConfig())
    judgment, _, error = read_completion(_answer(prompt=M, cached=800_000, completion=0), "gpt-4.1")
    assert error is None and judgment is not None and judgment.cached_input_tokens == 800_000
    engine.record("k", judgment, batch=True)
    # 200k at $2.00 + 800k at $0.50, halved by the Batch API: $0.40 (all as input: $1.00).
    assert engine.stats.cost_usd == pytest.approx(0.40)
    assert engine.stats.cached_input_tokens == 800_000 and engine.stats.input_tokens == M


def test_the_online_judge_meters_cached_tokens_at_their_rate():
    """Each HTTP answer's cached count reaches the ledger through the judge's own meter."""
    with StandinServer(cached_prompt_tokens=10**9) as server:  # every prompt token cached
        judge = OpenAIJudge("gpt-4.1", base_url=server.base_url, api_key="k")
        ledger = Ledger(
            price=lambda i, o, batch, cached: judge.cost_usd(i, o, batch=batch, cached_tokens=cached)
        )
        judge.attach_meter(ledger)
        frames = textured_frames(2, 64, 96)
        request = SegmentRequest(
            prompt="a dog", frames_first=frames, frames_second=frames[::-1], start_s=0, end_s=1
        )

        async def ask():
            try:
                return await judge.judge(request)
            finally:
                await judge.aclose()

        judgment = asyncio.run(ask())
        billed_usd = server.stats()["billed_usd"]["online"]
    s = ledger.stats
    assert s.input_tokens > 0 and s.cached_input_tokens == s.input_tokens == judgment.cached_input_tokens
    all_cached = estimate_cost("gpt-4.1", s.input_tokens, s.output_tokens, cached_tokens=s.input_tokens)
    assert s.cost_usd == pytest.approx(all_cached)
    assert s.cost_usd < estimate_cost("gpt-4.1", s.input_tokens, s.output_tokens)  # input at $0.50, not $2.00
    assert billed_usd == pytest.approx(s.cost_usd)  # what the stand-in bills for the same answer

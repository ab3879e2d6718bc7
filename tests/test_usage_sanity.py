"""Token usage is checked before it reaches the budgets (issue 24: negative usage defeated --max-cost)."""

from __future__ import annotations

import pytest

from labeler.judges.openai_answer import read_completion
from labeler.judges.usage import MAX_TOKENS_PER_REQUEST, ImpossibleUsage, TokenUsage, read_usage


def test_real_usage_is_read_with_cached_tokens():
    usage = {"prompt_tokens": 1200, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 1024}}
    assert read_usage(usage) == TokenUsage(1200, 40, 1024)
    assert read_usage(None) == TokenUsage() and read_usage({"prompt_tokens": 3.0}).prompt_tokens == 3


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1_000_000_000},
        {"completion_tokens": -1},
        {"prompt_tokens": MAX_TOKENS_PER_REQUEST + 1},
        {"prompt_tokens": 1e308},
        {"prompt_tokens": float("nan")},
        {"prompt_tokens": 2.5},
        {"prompt_tokens": "12"},
        {"prompt_tokens": True},
        {"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 11}},
        [1, 2],
    ],
)
def test_impossible_usage_is_refused(usage):
    with pytest.raises(ImpossibleUsage):
        read_usage(usage)


def test_an_answer_with_impossible_usage_is_not_read_as_a_judgment():
    response = {
        "choices": [{"message": {"content": '{"label": "A", "rationale": "x"}'}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": -5, "completion_tokens": 3},
    }
    with pytest.raises(ImpossibleUsage, match="prompt_tokens"):
        read_completion(response, "m")

"""Judges: ``metrics`` (embedded, model-free default), ``openai`` (any OpenAI-compatible endpoint,
vLLM included), ``gemini`` (Google's Gemini through google-genai) and ``hf`` (in-process
transformers VLM). Each loads lazily, so choosing the metrics
judge never imports torch or the OpenAI client."""

from __future__ import annotations

from typing import Any

from labeler.judges.base import Judge

JUDGE_NAMES = ("metrics", "openai", "hf", "gemini")


def build_judge(name: str, **options: Any) -> Judge:
    """Construct a judge by name; ``options`` are the judge class's keyword arguments
    (None values are dropped so each judge keeps its own defaults)."""
    options = {k: v for k, v in options.items() if v is not None}
    if name == "metrics":
        from labeler.judges.metrics import MetricsJudge

        return MetricsJudge(**options)
    if name == "openai":
        from labeler.judges.openai_api import OpenAIJudge

        return OpenAIJudge(**options)
    if name == "gemini":
        from labeler.judges.gemini import GeminiJudge

        return GeminiJudge(**options)
    if name == "hf":
        from labeler.judges.hf_local import HFJudge

        return HFJudge(**options)
    raise ValueError(f"unknown judge {name!r}; choose one of {', '.join(JUDGE_NAMES)}")

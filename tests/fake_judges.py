"""Small in-process judges with scripted behaviour for engine tests: real Judge implementations
(the engine cannot tell them from a VLM), not mocks."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from labeler.judges.base import Judge
from labeler.schemas import FatalJudgeError, Judgment, SegmentRequest, TransientJudgeError


class BrightnessJudge(Judge):
    """Prefers the brighter segment (a stand-in for 'better'); ties within ``margin`` gray levels.
    Records every request it answers."""

    name = "test-brightness"
    model = "brightness-v1"

    def __init__(self, margin: float = 2.0, position_bias: bool = False, delay: float = 0.0):
        self.margin = margin
        self.position_bias = position_bias
        self.delay = delay
        self.calls: list[SegmentRequest] = []

    def fingerprint(self) -> dict[str, Any]:
        return {"margin": self.margin, "position_bias": self.position_bias}

    async def judge(self, request: SegmentRequest) -> Judgment:
        self.calls.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.position_bias:  # always prefers whatever it is shown first
            return Judgment(label="A", p_a=0.9, p_b=0.05, p_tie=0.05, rationale="first looks better")
        diff = float(request.frames_first.mean()) - float(request.frames_second.mean())
        if abs(diff) < self.margin:
            return Judgment(label="tie", p_a=0.1, p_b=0.1, p_tie=0.8, input_tokens=10, output_tokens=2)
        label = "A" if diff > 0 else "B"
        p_win = 0.85
        return Judgment(
            label=label,
            p_a=p_win if label == "A" else 0.05,
            p_b=p_win if label == "B" else 0.05,
            p_tie=0.1,
            rationale=f"brightness differs by {diff:.1f}",
            input_tokens=10,
            output_tokens=2,
            prob_source="score",
        )


class ScriptedFailures(BrightnessJudge):
    """Raises the scripted exceptions on the first calls, then answers like BrightnessJudge."""

    name = "test-scripted"

    def __init__(self, failures: list[BaseException], fail_prompt: str | None = None, **kw: Any):
        super().__init__(**kw)
        self.failures = list(failures)
        self.fail_prompt = fail_prompt
        self.attempts = 0

    async def judge(self, request: SegmentRequest) -> Judgment:
        self.attempts += 1
        if self.fail_prompt is not None and self.fail_prompt in request.prompt:
            raise TransientJudgeError("server error 500 for this pair", status=500)
        if self.failures:
            raise self.failures.pop(0)
        return await super().judge(request)


def frames_with_level(n: int, level: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(level)
    noise = rng.integers(-3, 4, size=(n, h, w, 3))
    return np.clip(level + noise, 0, 255).astype(np.uint8)


__all__ = [
    "BrightnessJudge",
    "FatalJudgeError",
    "ScriptedFailures",
    "TransientJudgeError",
    "frames_with_level",
]

"""The sampling and format parameters of the ``openai`` judge's chat.completions body.

They follow :mod:`labeler.judges.models_table`, not the model's name: a reasoning model gets
``max_completion_tokens`` sized for its effort's hidden reasoning plus the answer, and
``temperature``/``logprobs`` only at an effort where the model accepts them (gpt-5.1 and later at
effort "none"). A model outside the table is a plain chat model (vLLM, a gateway's alias), unless
``reasoning_effort`` is given: then it is a reasoning model of unknown rules, given the reasoning
budget and no sampling parameters, so it has room to think.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from labeler.judges.models_table import (
    EXPECTED_REASONING_TOKENS,
    REASONING_BUDGET,
    RESPONSES_ONLY,
    lookup,
)
from labeler.judges.parsing import answer_json_schema

__all__ = ["ANSWER_ORDERS", "AnswerOrder", "RequestSettings", "parse_price"]

AnswerOrder = Literal["label-first", "rationale-first"]
ANSWER_ORDERS: tuple[AnswerOrder, ...] = ("label-first", "rationale-first")
EFFORTS = tuple(REASONING_BUDGET)


def parse_price(text: str) -> tuple[float, float]:
    """``"IN,OUT"`` (USD per 1M input and output tokens) -> (IN, OUT); both finite and >= 0."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 2 or not all(math.isfinite(p) and p >= 0 for p in parts):
        raise ValueError(f"--price wants IN,OUT in USD per 1M tokens (e.g. 0.15,0.60), got {text!r}")
    return parts[0], parts[1]


@dataclass
class RequestSettings:
    """What the judge asks for, resolved once against the model table."""

    model: str
    max_tokens: int = 300
    temperature: float = 0.0
    logprobs: bool = True
    top_logprobs: int = 5
    strict: bool = True
    reasoning_effort: str | None = None
    reasoning_budget: int | None = None
    answer_order: AnswerOrder = "label-first"
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.answer_order not in ANSWER_ORDERS:
            raise ValueError(
                f"answer order must be one of {', '.join(ANSWER_ORDERS)}, got {self.answer_order!r}"
            )
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not math.isfinite(self.temperature) or not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if self.reasoning_budget is not None and self.reasoning_budget < 0:
            raise ValueError(f"reasoning_budget must be >= 0, got {self.reasoning_budget}")
        info = lookup(self.model)
        if info is not None and info.family in RESPONSES_ONLY:
            raise ValueError(
                f"{self.model} is served by OpenAI's Responses API only, and the openai judge speaks "
                "chat.completions: every request would fail. Choose another model (e.g. "
                f"{info.family.removesuffix('-pro')})"
            )
        effort = self.reasoning_effort
        if effort is not None and effort not in EFFORTS:
            raise ValueError(f"reasoning effort must be one of {', '.join(EFFORTS)}, got {effort!r}")
        if info is not None and info.reasoning and effort is not None and effort not in info.efforts:
            raise ValueError(
                f"{self.model} accepts reasoning efforts {', '.join(info.efforts)}, not {effort!r}"
            )
        if info is not None and not info.reasoning and effort is not None:
            raise ValueError(f"{self.model} is not a reasoning model: drop --reasoning-effort")
        #: Whether the body speaks the reasoning dialect (max_completion_tokens, reasoning_effort).
        self.reasoning_model = info.reasoning if info is not None else effort is not None
        #: The effort in force (None for a chat model).
        self.effort = effort or (info.default_effort if info is not None else None)
        sampling_at = info.sampling_at if info is not None else ("none",)
        #: Whether temperature and logprobs may be sent.
        self.sampling = not self.reasoning_model or self.effort in sampling_at
        self.logprobs = self.logprobs and self.sampling

    @property
    def thinking_tokens(self) -> int:
        """Completion tokens reserved for hidden reasoning on top of the answer."""
        if not self.reasoning_model:
            return 0
        if self.reasoning_budget is not None:
            return self.reasoning_budget
        return REASONING_BUDGET.get(self.effort or "medium", REASONING_BUDGET["medium"])

    @property
    def expected_reasoning_tokens(self) -> int:
        """What a dry run assumes one request spends thinking (billed as output)."""
        if not self.reasoning_model:
            return 0
        return min(self.thinking_tokens, EXPECTED_REASONING_TOKENS.get(self.effort or "medium", 1_500))

    def params(self, fallbacks: dict[str, str]) -> dict[str, Any]:
        """Body parameters besides model and messages, after the endpoint's fallbacks."""
        params: dict[str, Any] = {}
        # "reasoning": the endpoint's first answer showed a reasoning model behind a name the table
        # does not know (an Azure deployment, a gateway alias): room to think, no sampling params.
        detected = "reasoning" in fallbacks and not self.reasoning_model
        if self.reasoning_model or detected or "max_tokens" in fallbacks:
            thinking = REASONING_BUDGET["medium"] if detected else self.thinking_tokens
            params["max_completion_tokens"] = self.max_tokens + thinking
        else:
            params["max_tokens"] = self.max_tokens
        if self.reasoning_model and self.effort is not None:
            params["reasoning_effort"] = self.effort
        if self.sampling and not detected and "temperature" not in fallbacks:
            params["temperature"] = self.temperature
        if self.logprobs and not detected and "logprobs" not in fallbacks:
            params["logprobs"] = True
            if self.top_logprobs:
                params["top_logprobs"] = self.top_logprobs
        if "response_format" not in fallbacks:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "segment_judgment",
                    "schema": answer_json_schema(self.answer_order),
                    "strict": self.strict and "strict" not in fallbacks,
                },
            }
        params.update(self.extra_body)
        return params

    def fingerprint(self) -> dict[str, Any]:
        fp: dict[str, Any] = {
            "temperature": self.temperature if self.sampling else None,
            "max_tokens": self.max_tokens,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs if self.logprobs else None,
            "strict": self.strict,
            "answer_order": self.answer_order,
        }
        if self.reasoning_model:
            fp["reasoning_effort"] = self.effort
            fp["reasoning_budget"] = self.thinking_tokens
        if self.extra_body:
            fp["extra_body"] = json.loads(json.dumps(self.extra_body, sort_keys=True, default=str))
        return fp

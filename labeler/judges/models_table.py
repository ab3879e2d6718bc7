"""What the ``openai`` judge knows about OpenAI's model families: price and reasoning behaviour, as data.

A model name maps to a family only when it *is* the family's name, optionally followed by a dated
snapshot suffix (``gpt-4o-2024-08-06``) or preceded by a provider path (``openai/gpt-4.1``). There is
no longest-prefix guessing: ``gpt-4.1-nano`` is not ``gpt-4.1`` and ``o3-pro`` is not ``o3`` (their
prices differ 20x and 10x). A name outside the table (a vLLM model, a new OpenAI model) has no price
and is treated as a plain chat model unless ``--reasoning-effort`` says otherwise; ``--max-cost`` on
it needs ``--price IN,OUT``.

Sources, checked on :data:`TABLE_AS_OF` (edit both when OpenAI changes them):

- prices, USD per 1M tokens, standard tier, with the cached-input rate the pricing page lists
  (none for the pro models and the 2024-05-13 / chatgpt-4o-latest gpt-4o: their cached tokens are
  billed as input): https://platform.openai.com/docs/pricing and
  https://platform.openai.com/docs/guides/prompt-caching (the Batch API bills 50 % of these:
  https://platform.openai.com/docs/guides/batch);
- reasoning efforts and which parameters reasoning models refuse:
  https://platform.openai.com/docs/guides/reasoning and
  https://platform.openai.com/docs/guides/latest-model ("gpt-5.1 and later default to
  reasoning_effort none; temperature, top_p and logprobs are accepted only at effort none").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BATCH_DISCOUNT",
    "EXPECTED_REASONING_TOKENS",
    "MODELS",
    "REASONING_BUDGET",
    "RESPONSES_ONLY",
    "TABLE_AS_OF",
    "TABLE_SOURCES",
    "ModelInfo",
    "lookup",
]

TABLE_AS_OF = "2026-12-04"
TABLE_SOURCES = (
    "https://platform.openai.com/docs/pricing",
    # cross-check of every gpt-5.x row (input, cached, output, batch, endpoints, efforts), read on
    # 2026-12-04: BerriAI/litellm model_prices_and_context_window.json @ 00035b69f416
    "https://github.com/BerriAI/litellm/blob/main/model_prices_and_context_window.json",
    "https://platform.openai.com/docs/guides/reasoning",
    "https://platform.openai.com/docs/guides/latest-model",
)
BATCH_DISCOUNT = 0.5
#: Families OpenAI serves through the Responses API only (their model pages: "available in the
#: Responses API only"); ``/chat/completions`` can only fail for them, so the judge refuses them.
#: gpt-5-pro, gpt-5.2-pro, gpt-5.4-pro and gpt-5.5-pro: litellm lists ``"mode": "responses"`` and
#: only ``/v1/responses`` and ``/v1/batch`` as their endpoints (json @ 00035b69f416, 2026-12-04).
RESPONSES_ONLY = frozenset({"o1-pro", "o3-pro", "gpt-5-pro", "gpt-5.2-pro", "gpt-5.4-pro", "gpt-5.5-pro"})

_O_EFFORTS = ("low", "medium", "high")
_GPT5_EFFORTS = ("minimal", "low", "medium", "high")
_GPT51_EFFORTS = ("none", "low", "medium", "high")
_GPT52_EFFORTS = ("none", "low", "medium", "high", "xhigh")


@dataclass(frozen=True)
class ModelInfo:
    """One model family. ``default_effort`` None means a plain chat model (never reasons);
    sampling parameters (temperature, logprobs) are accepted only at the efforts in ``sampling_at``."""

    family: str
    input_usd: float  # per 1M input tokens
    output_usd: float  # per 1M output tokens (reasoning tokens are billed as output)
    #: per 1M input tokens served from the prompt cache (``prompt_tokens_details.cached_tokens``);
    #: None where the pricing page lists none (billed at ``input_usd``)
    cached_input_usd: float | None = None
    default_effort: str | None = None
    efforts: tuple[str, ...] = ()
    sampling_at: tuple[str, ...] = ()

    @property
    def reasoning(self) -> bool:
        return self.default_effort is not None


def _chat(family: str, price_in: float, price_out: float, cached: float | None = None) -> ModelInfo:
    return ModelInfo(family, price_in, price_out, cached)


def _reasoning(
    family: str,
    price_in: float,
    price_out: float,
    default: str,
    efforts: tuple[str, ...],
    cached: float | None = None,
) -> ModelInfo:
    # Sampling parameters only where the model does not reason at all (effort "none").
    return ModelInfo(
        family, price_in, price_out, cached, default, efforts, tuple(e for e in efforts if e == "none")
    )


MODELS: dict[str, ModelInfo] = {
    m.family: m
    for m in (
        _chat("gpt-4o", 2.50, 10.00, 1.25),
        _chat("gpt-4o-2024-05-13", 5.00, 15.00),  # the first gpt-4o snapshot kept its launch price
        _chat("chatgpt-4o-latest", 5.00, 15.00),
        _chat("gpt-4o-mini", 0.15, 0.60, 0.075),
        _chat("gpt-4.1", 2.00, 8.00, 0.50),
        _chat("gpt-4.1-mini", 0.40, 1.60, 0.10),
        _chat("gpt-4.1-nano", 0.10, 0.40, 0.025),
        _chat("gpt-4.5-preview", 75.00, 150.00, 37.50),
        _chat("gpt-5-chat-latest", 1.25, 10.00, 0.125),
        _reasoning("o1", 15.00, 60.00, "medium", _O_EFFORTS, 7.50),
        _reasoning("o1-pro", 150.00, 600.00, "medium", _O_EFFORTS),
        _reasoning("o3", 2.00, 8.00, "medium", _O_EFFORTS, 0.50),
        _reasoning("o3-pro", 20.00, 80.00, "medium", _O_EFFORTS),
        _reasoning("o4-mini", 1.10, 4.40, "medium", _O_EFFORTS, 0.275),
        _reasoning("gpt-5", 1.25, 10.00, "medium", _GPT5_EFFORTS, 0.125),
        _reasoning("gpt-5-mini", 0.25, 2.00, "medium", _GPT5_EFFORTS, 0.025),
        _reasoning("gpt-5-nano", 0.05, 0.40, "medium", _GPT5_EFFORTS, 0.005),
        _reasoning("gpt-5-pro", 15.00, 120.00, "high", ("high",)),
        # gpt-5-pro: litellm 15.00 / 120.00, no cached rate, Responses only (matches).
        # gpt-5-mini / 5-nano / 4.x / o-series / 4o: prices not re-checked on 2026-12-04
        # beyond gpt-5 (litellm: 1.25 / cached 0.125 / 10.00, matches); the rest as entered.
        # gpt-5.1, gpt-5.2, gpt-5.2-pro: input, cached and output equal litellm's json
        # @ 00035b69f416 (2026-12-04); gpt-5.2-pro has no cached rate there (billed as input).
        _reasoning("gpt-5.1", 1.25, 10.00, "none", _GPT51_EFFORTS, 0.125),
        _reasoning("gpt-5.2", 1.75, 14.00, "none", _GPT52_EFFORTS, 0.175),
        _reasoning("gpt-5.2-pro", 21.00, 168.00, "medium", ("medium", "high", "xhigh")),
        # gpt-5.4 family (2026-03-05 / -03-17 snapshots): litellm json @ 00035b69f416
        # (2026-12-04), same caveats as gpt-5.5 below. 5.4 2.50 / cached 0.25 / 15.00; mini 0.75 /
        # 0.075 / 4.50; nano 0.20 / 0.02 / 1.25; pro 30.00 / 3.00 / 180.00 (Responses only).
        # "minimal" is left out of the efforts (litellm: yes for 5.4, no for mini and nano).
        _reasoning("gpt-5.4", 2.50, 15.00, "medium", _GPT52_EFFORTS, 0.25),
        _reasoning("gpt-5.4-mini", 0.75, 4.50, "medium", _GPT52_EFFORTS, 0.075),
        _reasoning("gpt-5.4-nano", 0.20, 1.25, "medium", _GPT52_EFFORTS, 0.02),
        _reasoning("gpt-5.4-pro", 30.00, 180.00, "medium", ("medium", "high", "xhigh"), 3.00),
        # gpt-5.5 (2026-04-23 snapshot) and gpt-5.5-pro: litellm json @ 00035b69f416 (2026-12-04):
        # 5.00 / cached 0.50 / 30.00 (batch 2.50 / 15.00 = the 50 % rule); pro 30.00 / cached 3.00
        # / 180.00, Responses only. Efforts: litellm says none and xhigh supported, minimal not.
        # The default effort is UNVERIFIED (no source read): "medium" is assumed because it is
        # the safe side (reasoning room reserved, sampling parameters not sent). Prices above
        # 272k input tokens (2x) are not modelled.
        _reasoning("gpt-5.5", 5.00, 30.00, "medium", _GPT52_EFFORTS, 0.50),
        _reasoning("gpt-5.5-pro", 30.00, 180.00, "medium", ("medium", "high", "xhigh"), 3.00),
    )
}

#: Completion tokens reserved for hidden reasoning on top of the answer, per effort. Reasoning is
#: billed as output and counts against ``max_completion_tokens``: a budget without this room ends
#: the answer at finish_reason "length" with empty content. Unknown efforts get the "medium" room.
REASONING_BUDGET: dict[str, int] = {
    "none": 0,
    "minimal": 1_000,
    "low": 4_000,
    "medium": 8_000,
    "high": 25_000,
    "xhigh": 50_000,
}
#: What a dry run assumes a request spends on reasoning (a judgment of one segment is a short task;
#: the real number varies and is read from each answer's usage).
EXPECTED_REASONING_TOKENS: dict[str, int] = {
    "none": 0,
    "minimal": 100,
    "low": 400,
    "medium": 1_500,
    "high": 5_000,
    "xhigh": 10_000,
}

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def lookup(model: str) -> ModelInfo | None:
    """The family of ``model`` (exact name, a dated snapshot of it, or ``provider/name``), else None."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    if name in MODELS:
        return MODELS[name]
    return MODELS.get(_SNAPSHOT.sub("", name))

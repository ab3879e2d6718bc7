"""Token usage as an endpoint or an import file reports it, checked before it is counted.

The budgets (``--max-cost``, ``--max-requests``) trust these numbers: a negative count would
lower the spend and let a run go past its budget, a huge or fractional one is not a count at all.
So a ``usage`` object is read into whole, non-negative token counts no larger than any request can
use, or refused with :class:`ImpossibleUsage` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labeler.errors import ImpossibleUsage

__all__ = ["MAX_TOKENS_PER_REQUEST", "ImpossibleUsage", "TokenUsage", "read_usage"]

#: More tokens than any one chat request can use (the largest context windows are ~2M tokens,
#: reasoning output included); a count above this is an endpoint's error, not a bill.
MAX_TOKENS_PER_REQUEST = 4_000_000


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Input tokens served from the provider's prompt cache (``prompt_tokens_details.cached_tokens``,
    #: part of ``prompt_tokens``).
    cached_tokens: int = 0


def _count(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ImpossibleUsage(f"usage.{name} is not a number: {value!r}"[:200])
    if isinstance(value, float) and not value.is_integer():
        raise ImpossibleUsage(f"usage.{name} is not a whole number of tokens: {value!r}")
    if not 0 <= value <= MAX_TOKENS_PER_REQUEST:
        raise ImpossibleUsage(
            f"usage.{name} = {value!r} is impossible for one request (0 to {MAX_TOKENS_PER_REQUEST:,})"
        )
    return int(value)


def read_usage(usage: Any) -> TokenUsage:
    """The counts of a chat.completion's ``usage`` (absent: zeros); ImpossibleUsage if unreal."""
    if usage is None:
        return TokenUsage()
    if not isinstance(usage, dict):
        raise ImpossibleUsage(f"usage is not an object: {usage!r}"[:200])
    prompt = _count(usage.get("prompt_tokens"), "prompt_tokens")
    completion = _count(usage.get("completion_tokens"), "completion_tokens")
    details = usage.get("prompt_tokens_details")
    cached = (
        _count(details.get("cached_tokens"), "prompt_tokens_details.cached_tokens")
        if isinstance(details, dict)
        else 0
    )
    if cached > prompt:
        raise ImpossibleUsage(f"usage reports {cached} cached tokens out of {prompt} prompt tokens")
    return TokenUsage(prompt, completion, cached)

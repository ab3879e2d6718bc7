"""The one account of what a run spent: requests, tokens, cost, and the budgets that cap them.

The engine owns one :class:`Ledger` (``engine.ledger``) and every runner and the service go
through it: the engine's own judge calls, a judge that meters its HTTP requests itself (the ledger
is the :class:`~labeler.judges.base.UsageMeter` it is given), the Batch API runner's submitted
lines and half-price answers, and the Ray driver folding its actors' counters. The counters live
in the engine's :class:`~labeler.engine_types.EngineStats` (what summaries and ``/metrics`` read);
only the ledger writes its request, token and cost fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Protocol

from labeler.engine_types import EngineStats
from labeler.errors import BudgetExceeded
from labeler.schemas import Judgment

__all__ = ["COUNTED_FIELDS", "Budget", "Ledger", "Limits", "Price"]

#: USD for (input tokens, output tokens, at Batch API price?, cached input tokens among the input),
#: or None when the price is unknown.
Price = Callable[[int, int, bool, int], "float | None"]

#: The counters of EngineStats; every one of them is a sum, so two engines' counters add up.
COUNTED_FIELDS = tuple(f.name for f in fields(EngineStats))


class Budget(Protocol):
    """Where the limits are read, at every check (an ``EngineConfig`` is one)."""

    @property
    def max_requests(self) -> int | None: ...

    @property
    def max_cost(self) -> float | None: ...


@dataclass
class Limits:
    """A budget on its own (the Ray driver's, tests')."""

    max_requests: int | None = None
    max_cost: float | None = None


def _free(_input_tokens: int, _output_tokens: int, _batch: bool, _cached: int) -> float:
    return 0.0


class Ledger:
    """Requests, tokens and USD spent, checked against the budget's ``max_requests`` and
    ``max_cost`` (None: no limit; 0 is a budget too: send nothing, label from the cache only).
    The budget is read at every check, so it is the engine's configuration as it is now."""

    def __init__(
        self, stats: EngineStats | None = None, *, budget: Budget | None = None, price: Price = _free
    ):
        self.stats = stats if stats is not None else EngineStats()
        self.budget: Budget = budget if budget is not None else Limits()
        self._price = price

    @property
    def max_requests(self) -> int | None:
        return self.budget.max_requests

    @property
    def max_cost(self) -> float | None:
        return self.budget.max_cost

    # ------------------------------------------------------------------ budgets

    def spent(self) -> str | None:
        """Why nothing more may be sent, or None while the budgets leave room."""
        s = self.stats
        if self.max_requests is not None and s.requests >= self.max_requests:
            return f"request budget spent: {s.requests} requests sent (--max-requests {self.max_requests})"
        if self.max_cost is not None and s.cost_usd >= self.max_cost:
            return f"cost budget spent: ${s.cost_usd:.4f} (--max-cost {self.max_cost})"
        return None

    def check(self) -> None:
        """Raise :class:`BudgetExceeded` once a budget is spent."""
        reason = self.spent()
        if reason is not None:
            raise BudgetExceeded(reason)

    def left(self) -> tuple[int | None, float | None]:
        """Requests and USD the budgets still allow (None: unlimited)."""
        s = self.stats
        return (
            None if self.max_requests is None else self.max_requests - s.requests,
            None if self.max_cost is None else self.max_cost - s.cost_usd,
        )

    def price(
        self, input_tokens: int, output_tokens: int, *, batch: bool = False, cached_tokens: int = 0
    ) -> float | None:
        """USD these tokens would cost (``batch``: at Batch API price; ``cached_tokens`` of the
        input at the cached-input rate); None when unknown."""
        return self._price(input_tokens, output_tokens, batch, cached_tokens)

    # ------------------------------------------------------------------ recording

    def before_request(self) -> None:
        """UsageMeter: one more request is about to go out; raises when a budget is spent."""
        self.check()
        self.stats.requests += 1

    def billed(
        self, input_tokens: int, output_tokens: int, *, batch: bool = False, cached_tokens: int = 0
    ) -> None:
        """UsageMeter: tokens the endpoint billed, usable answer or not (``batch``: half price;
        ``cached_tokens``: of the input, those served from the prompt cache, at its rate)."""
        self.stats.input_tokens += input_tokens
        self.stats.output_tokens += output_tokens
        self.stats.cached_input_tokens += cached_tokens
        price = self.price(input_tokens, output_tokens, batch=batch, cached_tokens=cached_tokens)
        self.stats.cost_usd += price or 0.0

    def bill(self, judgment: Judgment, *, batch: bool = False) -> None:
        """The tokens of one judgment."""
        self.billed(
            judgment.input_tokens,
            judgment.output_tokens,
            batch=batch,
            cached_tokens=judgment.cached_input_tokens,
        )

    def submitted(self, requests: int) -> None:
        """Requests sent outside the engine's own calls (the Batch API's lines)."""
        self.stats.requests += requests

    def add(self, counts: Mapping[str, float]) -> None:
        """Fold counters measured by another engine (a Ray actor's chunk) into these."""
        for name in COUNTED_FIELDS:
            setattr(self.stats, name, getattr(self.stats, name) + counts[name])

    @staticmethod
    def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        """What happened between two snapshots (``dataclasses.asdict(stats)``) of the counters."""
        return {name: after[name] - before[name] for name in COUNTED_FIELDS}

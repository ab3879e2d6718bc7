"""Everything an engine is built from, as one typed, picklable object: :class:`EngineSpec`.

The CLI builds it from flags (``labeler.cli_options.spec_from_args``); the service builds its
engine from it, and every Ray actor builds its own from the same spec, on its own node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from labeler.cache import JudgmentCache, default_cache_dir
from labeler.engine import Engine, EngineConfig
from labeler.errors import UsageError
from labeler.judge_config import JudgeConfig

__all__ = ["EngineSpec"]


@dataclass(frozen=True)
class EngineSpec:
    """The judge's config, the engine's config, and the judgment cache to use."""

    judge: JudgeConfig
    engine: EngineConfig
    #: The judgment cache folder; None: $DENSEPREF_CACHE_DIR or the default, resolved where the
    #: engine is built (each Ray node resolves its own).
    cache_dir: Path | None = None
    use_cache: bool = True

    def cache(self) -> JudgmentCache:
        if not self.use_cache:
            return JudgmentCache(None)
        directory = self.cache_dir or Path(os.environ.get("DENSEPREF_CACHE_DIR") or default_cache_dir())
        return JudgmentCache(directory)

    def build(self) -> Engine:
        """The engine; UsageError when ``max_cost`` cannot limit the judge (no known price)."""
        judge = self.judge.build(timeout=self.engine.request_timeout)
        if self.engine.max_cost is not None and judge.cost_usd(1_000_000, 1_000_000) is None:
            raise UsageError(
                f"--max-cost cannot limit {judge.model}: the price table does not list it; "
                "give its price with --price IN,OUT (USD per 1M tokens)"
            )
        return Engine(judge, self.engine, self.cache())

"""The embedded, model-free ``metrics`` judge (docs/metrics_judge.md).

- :mod:`.judge` - :class:`MetricsJudge`: coefficients, probabilities, rationale, worker processes;
- :mod:`.features` - every signal of a segment pair as a gap between the sides (``measure``);
- :mod:`.regions` - region-by-region and over-time signals;
- :mod:`.signals` - frame-quality measures of one side;
- :mod:`.local` - per-cell and per-step measures;
- :mod:`.transport` and :mod:`.worker` - the worker processes' shared-memory frames and allocator.
"""

from labeler.judges.metrics.judge import (
    COEFFICIENTS,
    DEFAULT_WEIGHTS,
    TEMPERATURES,
    TIE_MARGINS,
    MetricsJudge,
)

__all__ = ["COEFFICIENTS", "DEFAULT_WEIGHTS", "TEMPERATURES", "TIE_MARGINS", "MetricsJudge"]

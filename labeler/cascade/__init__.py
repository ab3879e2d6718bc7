"""Spend the main judge (a VLM) only where the cheap one is unsure: a cascade (docs/design.md §2.8).

``labeler.cascade.policy`` ranks segments by the cheap judge's confidence and merges records;
``labeler.cascade.runner`` runs the two resumable passes; ``labeler.cascade.options`` holds the
``--cascade-from`` / ``--escalate-share`` / ``--escalate-below`` options.
"""

from labeler.cascade.policy import (
    Escalation,
    EscalationRule,
    choose_escalated,
    merge,
    pair_confidence,
    segment_confidence,
)
from labeler.cascade.runner import CascadeResult, cheap_path_for, run_cascade

__all__ = [
    "CascadeResult",
    "Escalation",
    "EscalationRule",
    "cheap_path_for",
    "choose_escalated",
    "merge",
    "pair_confidence",
    "run_cascade",
    "segment_confidence",
]

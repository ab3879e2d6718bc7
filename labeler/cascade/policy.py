"""Which segments a cascade escalates, and how a cheap record and the main judge's segments merge.

A segment's confidence is the largest of its ``p_a``, ``p_b``, ``p_tie`` under the cheap judge; a
pair's is its least-confident segment's. ``--escalate-share F`` escalates the least-confident share
F of all segments (ranked by confidence, then pair id, then index, so the choice is the same on every
run over the same cheap labels); ``--escalate-below P`` every segment whose confidence is below P.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from labeler.errors import CascadeMismatchError, UsageError
from labeler.schemas import (
    CheapVerdict,
    DensePreferenceRecord,
    LabelerInfo,
    Segment,
    Usage,
    video_level,
)

__all__ = ["CascadeMismatchError", "Escalation", "EscalationRule", "choose_escalated", "merge"]

#: A segment by (pair_id, index).
SegmentKey = tuple[str, int]


def segment_confidence(segment: Segment) -> float:
    return max(segment.p_a, segment.p_b, segment.p_tie)


def pair_confidence(record: DensePreferenceRecord) -> float:
    return min(segment_confidence(s) for s in record.segments)


@dataclass(frozen=True)
class EscalationRule:
    """Exactly one of ``share`` (the least-confident share of segments, 0..1) or ``below`` (every
    segment whose cheap confidence is below it)."""

    share: float | None = None
    below: float | None = None

    def __post_init__(self) -> None:
        if (self.share is None) == (self.below is None):
            raise UsageError("give exactly one of an escalated share or a confidence threshold")
        for name, value in (("share", self.share), ("below", self.below)):
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise UsageError(f"escalate {name} must be between 0 and 1, got {value}")

    def describe(self) -> dict[str, float]:
        """The rule as the records' ``labeler.cascade`` block names it."""
        if self.share is not None:
            return {"escalate_share": self.share}
        assert self.below is not None  # __post_init__: exactly one is set
        return {"escalate_below": self.below}


@dataclass(frozen=True)
class Escalation:
    segments: frozenset[SegmentKey]
    total: int  # segments ranked
    #: Highest cheap confidence escalated (None when nothing is).
    highest: float | None

    def of_pair(self, pair_id: str) -> set[int]:
        return {index for pid, index in self.segments if pid == pair_id}

    def by_pair(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for pid, index in self.segments:
            out.setdefault(pid, set()).add(index)
        return out


def choose_escalated(records: Iterable[DensePreferenceRecord], rule: EscalationRule) -> Escalation:
    """The segments ``rule`` sends to the main judge, from the cheap judge's records."""
    ranked = sorted((segment_confidence(s), r.pair_id, s.index) for r in records for s in r.segments)
    if rule.share is not None:
        chosen = ranked[: math.floor(rule.share * len(ranked) + 0.5)]
    else:
        assert rule.below is not None
        chosen = [item for item in ranked if item[0] < rule.below]
    return Escalation(
        frozenset((pid, index) for _, pid, index in chosen), len(ranked), chosen[-1][0] if chosen else None
    )


def cheap_verdict(segment: Segment, judge: str) -> CheapVerdict:
    return CheapVerdict(
        judge=judge, label=segment.label, p_a=segment.p_a, p_b=segment.p_b, p_tie=segment.p_tie
    )


def merge(
    cheap: DensePreferenceRecord,
    decided: Mapping[int, Segment],
    *,
    main_judge: str,
    labeler: LabelerInfo,
    usage: Usage,
    cascade: Mapping[str, Any],
) -> DensePreferenceRecord:
    """The cascade's record of a pair: the main judge's segment where it decided (``decided``, by
    index), the cheap judge's elsewhere; every segment carries ``decided_by`` and the cheap verdict.
    The video label and score are recomputed over the merged segments."""
    cheap_judge = cheap.labeler.judge
    by_index = {s.index: s for s in cheap.segments}
    for index, seg in decided.items():
        mine = by_index.get(index)
        if mine is None or (mine.start_frame, mine.end_frame) != (seg.start_frame, seg.end_frame):
            raise CascadeMismatchError(
                f"pair {cheap.pair_id}: segment {index} of the main judge does not match the cheap "
                "judge's segments (were they cut with other --segment-seconds?)"
            )
    segments = []
    for seg in cheap.segments:
        final = decided.get(seg.index)
        update: dict[str, Any] = {
            "decided_by": cheap_judge if final is None else main_judge,
            "cheap": cheap_verdict(seg, cheap_judge),
        }
        segments.append((seg if final is None else final).model_copy(update=update))
    video_label, video_score = video_level(segments)
    info = LabelerInfo.model_validate({**labeler.model_dump(), "cascade": {"from": cheap_judge, **cascade}})
    return cheap.model_copy(
        update={
            "segments": segments,
            "video_label": video_label,
            "video_score": video_score,
            "labeler": info,
            "usage": usage,
        }
    )

"""Combine the swapped-order votes of one segment into its label (docs/design.md §2.5).

Each vote is a Judgment already mapped back to the pair's A/B. Votes that agree give that label.
Votes that disagree are position bias, not evidence: the segment becomes a tie with
``consistent=False``, unless the averaged probabilities still favour one side by at least
``decisive_margin`` (only possible when the judge's probabilities are graded, not one-hot).
"""

from __future__ import annotations

from dataclasses import dataclass

from labeler.schemas import Judgment, Label, Order, Vote


@dataclass(frozen=True)
class SegmentOutcome:
    label: Label
    p_a: float
    p_b: float
    p_tie: float
    consistent: bool | None
    rationale: str
    votes: list[Vote]


def _normalised(p_a: float, p_b: float, p_tie: float) -> tuple[float, float, float]:
    total = p_a + p_b + p_tie
    values = [round(p / total, 4) for p in (p_a, p_b, p_tie)]
    # Rounding may leave the sum a hair off 1; give the remainder to the largest.
    largest = max(range(3), key=lambda i: values[i])
    values[largest] = round(values[largest] + 1.0 - sum(values), 4)
    return values[0], values[1], values[2]


def combine_votes(votes: list[tuple[Order, Judgment]], *, decisive_margin: float = 0.3) -> SegmentOutcome:
    """``votes``: (order, judgment mapped back to A/B) for "ab" and, with swap, "ba"."""
    if not votes:
        raise ValueError("combine_votes needs at least one vote")
    n = len(votes)
    p_a = sum(j.p_a for _, j in votes) / n
    p_b = sum(j.p_b for _, j in votes) / n
    p_tie = sum(j.p_tie for _, j in votes) / n
    p_a, p_b, p_tie = _normalised(p_a, p_b, p_tie)
    labels = {j.label for _, j in votes}
    vote_records = [
        Vote(order=order, label=j.label, p_a=j.p_a, p_b=j.p_b, p_tie=j.p_tie) for order, j in votes
    ]
    if len(labels) == 1:
        label = votes[0][1].label
        consistent = True if n > 1 else None
        rationale = votes[0][1].rationale
    else:
        consistent = False
        margin = p_a - p_b
        label = ("A" if margin > 0 else "B") if abs(margin) >= decisive_margin else "tie"
        said = "; ".join(
            f"{order}: {j.label}" + (f" ({j.rationale})" if j.rationale else "") for order, j in votes
        )
        rationale = f"order-dependent answers -> {label}. {said}"
    return SegmentOutcome(label, p_a, p_b, p_tie, consistent, rationale, vote_records)

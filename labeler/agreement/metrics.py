"""Agreement metrics on joined human/prediction labels (used by labeler.agreement).

Pure functions over numpy arrays; every one is checked against hand computations in the tests.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from labeler.schemas import LABEL_VALUE, LABELS, DensePreferenceRecord

COVERAGE_STEPS = 10  # coverage 10 %, 20 %, ... 100 %
_LABEL_ORDER = [LABEL_VALUE[x] for x in LABELS]  # A, B, tie
# Independent random streams per use, so adding one never shifts another's resamples.
STREAM_SEGMENT, STREAM_VIDEO, STREAM_SPLIT = 0, 1, 2


@dataclass
class Joined:
    """One comparison aligned into arrays: "ref" is the human side, "other" the prediction."""

    seg_pair: np.ndarray  # position of the segment's pair among the joined pairs
    seg_index: np.ndarray
    seg_ref: np.ndarray
    seg_other: np.ndarray
    seg_margin: np.ndarray  # p_a - p_b of the prediction
    vid_ref: np.ndarray
    vid_other: np.ndarray
    vid_margin: np.ndarray  # video_score of the prediction
    join: dict[str, Any]


# --------------------------------------------------------------------------- metrics


def forced_choice_credit(human: np.ndarray, pred: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Per-item credit of the DenseDPO paper's measure (meaningful where human != tie): the
    prediction's forced choice is its label when A/B, else the sign of its margin (p_a - p_b or
    video_score); 1 when it matches the human label, 0.5 when the margin is exactly 0, else 0."""
    choice = np.where(pred != 0, pred, np.sign(margin)).astype(int)
    return np.where(choice == human, 1.0, np.where(choice == 0, 0.5, 0.0))


def mean_or_none(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if x.size else None


def finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def cohen_kappa(human: np.ndarray, pred: np.ndarray) -> float | None:
    """Unweighted Cohen's κ over A/B/tie (scikit-learn); None where undefined (e.g. one class only)."""
    if human.size == 0:
        return None
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():  # the undefined case warns and returns NaN; we report None
        warnings.simplefilter("ignore")
        return finite(cohen_kappa_score(human, pred, labels=_LABEL_ORDER))


def krippendorff_alpha(human: np.ndarray, pred: np.ndarray) -> float | None:
    """Ordinal Krippendorff's α with B < tie < A; None where undefined (no variation at all)."""
    if human.size == 0:
        return None
    import krippendorff

    data = np.vstack([human, pred]).astype(float)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            value = krippendorff.alpha(
                reliability_data=data, value_domain=[-1, 0, 1], level_of_measurement="ordinal"
            )
        except ValueError:  # e.g. fewer than two values per unit
            return None
    return finite(value)


def confusion(human: np.ndarray, pred: np.ndarray) -> dict[str, dict[str, int]]:
    """``confusion[human_label][pred_label]`` counts over A, B, tie."""
    if human.size == 0:
        matrix = np.zeros((3, 3), dtype=int)
    else:
        from sklearn.metrics import confusion_matrix

        matrix = confusion_matrix(human, pred, labels=_LABEL_ORDER)
    return {h: {p: int(matrix[i, j]) for j, p in enumerate(LABELS)} for i, h in enumerate(LABELS)}


def bootstrap_ci(
    credit: np.ndarray, groups: np.ndarray, resamples: int, rng: np.random.Generator
) -> list[float] | None:
    """Percentile 95 % interval of mean(credit), resampling whole groups (pairs) with replacement.

    Vectorised over resamples via per-group sums; chunked so memory stays ~16 MB for any size.
    """
    if resamples <= 0 or credit.size == 0:
        return None
    _, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse, weights=credit)
    counts = np.bincount(inverse).astype(float)  # every group holds >= 1 item, so no 0/0
    n_groups = sums.size
    chunk = max(1, 2_000_000 // n_groups)
    stats = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n_groups, size=(min(chunk, resamples - start), n_groups))
        stats.append(sums[idx].sum(axis=1) / counts[idx].sum(axis=1))
    low, high = np.percentile(np.concatenate(stats), [2.5, 97.5])
    return [float(low), float(high)]


def metric_block(
    human: np.ndarray,
    pred: np.ndarray,
    margin: np.ndarray,
    groups: np.ndarray,
    rng: np.random.Generator,
    bootstrap: int,
) -> dict[str, Any]:
    no_tie = human != 0
    both = no_tie & (pred != 0)
    credit = forced_choice_credit(human, pred, margin)
    return {
        "n": int(human.size),
        "n_no_ties": int(no_tie.sum()),
        "accuracy_no_ties": mean_or_none(credit[no_tie]),
        # accuracy_no_ties scores a predicted tie by the sign of its margin, which flatters a judge
        # that ties every hard segment: these two say how much it decides, and how well.
        "decided_coverage": mean_or_none(both[no_tie].astype(float)),
        "n_both_decided": int(both.sum()),
        "accuracy_both_decided": mean_or_none((human[both] == pred[both]).astype(float)),
        "accuracy_with_ties": mean_or_none((human == pred).astype(float)),
        "cohen_kappa": cohen_kappa(human, pred),
        "krippendorff_alpha": krippendorff_alpha(human, pred),
        "accuracy_no_ties_ci95": bootstrap_ci(credit[no_tie], groups[no_tie], bootstrap, rng),
        "confusion": confusion(human, pred),
    }


def coverage_accuracy(credit: np.ndarray, confidence: np.ndarray) -> list[list[float]]:
    """[coverage, accuracy] keeping the ceil(c·n) most confident items (stable order on ties)."""
    n = credit.size
    if n == 0:
        return []
    running = np.cumsum(credit[np.argsort(-confidence, kind="stable")])
    out = []
    for step in range(1, COVERAGE_STEPS + 1):
        keep = -(-step * n // COVERAGE_STEPS)  # integer ceil: 0.3 * 10 must not round up to 4
        out.append([round(step / COVERAGE_STEPS, 2), float(running[keep - 1] / keep)])
    return out


def segment_position(j: Joined) -> list[dict[str, Any]]:
    credit = forced_choice_credit(j.seg_ref, j.seg_other, j.seg_margin)
    rows = []
    for index in np.unique(j.seg_index):
        at = j.seg_index == index
        no_tie = at & (j.seg_ref != 0)
        rows.append(
            {
                "index": int(index),
                "n": int(at.sum()),
                "n_no_ties": int(no_tie.sum()),
                "accuracy_no_ties": mean_or_none(credit[no_tie]),
                "accuracy_with_ties": mean_or_none((j.seg_ref[at] == j.seg_other[at]).astype(float)),
            }
        )
    return rows


def flip_rate(pred: Sequence[DensePreferenceRecord]) -> tuple[float | None, int]:
    """Share of segments whose first "ab" and first "ba" votes disagree, over the segments that
    carry both; (None, 0) when no segment does."""
    n = flips = 0
    for rec in pred:
        for seg in rec.segments:
            ab = next((v.label for v in seg.votes if v.order == "ab"), None)
            ba = next((v.label for v in seg.votes if v.order == "ba"), None)
            if ab is not None and ba is not None:
                n += 1
                flips += ab != ba
    return (flips / n if n else None), n


def relabel_with_tie_margin(pred: np.ndarray, margin: np.ndarray, threshold: float) -> np.ndarray:
    """Predictions under a tie margin: a tie where |margin| < threshold (raising the margin), and a
    predicted tie whose |margin| reaches it decided by the margin's sign (lowering it)."""
    decided = np.where(pred != 0, pred, np.sign(margin)).astype(int)
    return np.where(np.abs(margin) < threshold, 0, decided)


def tie_threshold_fit(j: Joined, seed: int) -> dict[str, Any] | None:
    """Fit on half the pairs the |p_a - p_b| tie margin (maximising 3-way accuracy; on equal
    accuracy the one changing fewest predictions, then the smallest), report it on the other half.
    The margin can raise the judge's own (decided predictions below it become ties) or lower it
    (predicted ties at or above it are decided by the sign of p_a - p_b)."""
    pairs = np.unique(j.seg_pair)
    if pairs.size < 2:
        return None
    shuffled = np.random.default_rng([seed, STREAM_SPLIT]).permutation(pairs)
    fit = np.isin(j.seg_pair, shuffled[: (pairs.size + 1) // 2])
    conf = np.abs(j.seg_margin)
    ref, other, margin = j.seg_ref[fit], j.seg_other[fit], j.seg_margin[fit]
    order = np.argsort(conf[fit], kind="stable")
    sorted_conf = conf[fit][order]
    candidates = np.unique(np.concatenate([[0.0], sorted_conf]))
    below = np.searchsorted(sorted_conf, candidates, side="left")  # items with conf < threshold
    decided = np.where(other != 0, other, np.sign(margin)).astype(int)[order]  # label at or above

    def cum(x: np.ndarray) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(x)])

    tie_right, decided_right = cum(ref[order] == 0), cum(decided == ref[order])
    correct = tie_right[below] + (decided_right[-1] - decided_right[below])
    to_tie, to_decided = cum(other[order] != 0), cum(decided != other[order])
    changed = to_tie[below] + (to_decided[-1] - to_decided[below])
    best = int(np.lexsort((candidates, changed, -correct))[0])
    threshold = float(candidates[best])
    held = ~fit
    relabeled = relabel_with_tie_margin(j.seg_other[held], j.seg_margin[held], threshold)
    return {
        "threshold": threshold,
        "fit_accuracy_with_ties": float(correct[best] / ref.size),
        "heldout_accuracy_with_ties": mean_or_none((relabeled == j.seg_ref[held]).astype(float)),
        "heldout_baseline_accuracy_with_ties": mean_or_none(
            (j.seg_other[held] == j.seg_ref[held]).astype(float)
        ),
        "heldout_decided_to_tie": int(((j.seg_other[held] != 0) & (relabeled == 0)).sum()),
        "heldout_tie_to_decided": int(((j.seg_other[held] == 0) & (relabeled != 0)).sum()),
        "n_fit_pairs": int((pairs.size + 1) // 2),
        "n_heldout_pairs": int(pairs.size // 2),
        "n_fit_segments": int(fit.sum()),
        "n_heldout_segments": int(held.sum()),
    }


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, bins: int = 10) -> float | None:
    """Top-label expected calibration error: items are binned by the probability of their most
    probable label ([n, 3] rows over A, B, tie), and each bin's |accuracy - mean confidence| is
    weighted by its share of items. 0 is perfectly calibrated; None without items."""
    if len(truth) == 0:
        return None
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == truth).astype(float)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)

"""Two label files of the same pairs, compared segment by segment: which presentation agrees better?

    python -m labeler.agreement --pred FRAMES.jsonl --compare VIDEO.jsonl [--human HUMAN.jsonl] --out DIR

The two files are usually one judge run twice in different modes (``--input frames`` vs
``--input video``, with vs without ``--show-reference``; each record's ``labeler.prompt_id`` says
which). Without human labels the report says how often the modes agree (same label, Cohen's κ, the
confusion of one against the other, the mean shift of ``p_a - p_b``) and lists the segments where
they differ. With human labels it adds each mode's agreement with the first human file, on the
segments both modes and the human share, and, on the segments where the modes disagree, how often
each one matches the human: the mode that wins there is the one that agrees better.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from labeler.agreement.compute import _by_pair_id, _join, _json_safe, compute_agreement
from labeler.agreement.metrics import cohen_kappa, confusion
from labeler.errors import AgreementInputError
from labeler.schemas import LABEL_VALUE, DensePreferenceRecord

__all__ = ["compare_modes", "modes_headline"]

_NAME = {v: k for k, v in LABEL_VALUE.items()}


def _mode(records: Sequence[DensePreferenceRecord]) -> str:
    ids = sorted({r.labeler.prompt_id or r.labeler.judge for r in records})
    return ", ".join(ids)


def _labels(records: Sequence[DensePreferenceRecord]) -> dict[tuple[str, int], tuple[int, int, int]]:
    """(pair_id, index) -> (label value, start_frame, end_frame)."""
    return {
        (r.pair_id, s.index): (LABEL_VALUE[s.label], s.start_frame, s.end_frame)
        for r in records
        for s in r.segments
    }


def _with_human(
    first: Sequence[DensePreferenceRecord],
    second: Sequence[DensePreferenceRecord],
    human: Sequence[DensePreferenceRecord],
) -> dict[str, Any]:
    """Per-segment wins on the segments all three share with equal frame ranges."""
    a, b, h = _labels(first), _labels(second), _labels(human)
    shared = [k for k in a if k in b and k in h and a[k][1:] == b[k][1:] == h[k][1:]]
    differ = [k for k in shared if a[k][0] != b[k][0]]
    first_right = sum(1 for k in differ if a[k][0] == h[k][0])
    second_right = sum(1 for k in differ if b[k][0] == h[k][0])
    no_tie = [k for k in shared if h[k][0] != 0]
    return {
        "n_segments": len(shared),
        "accuracy_no_ties": {
            "first": float(np.mean([a[k][0] == h[k][0] for k in no_tie])) if no_tie else None,
            "second": float(np.mean([b[k][0] == h[k][0] for k in no_tie])) if no_tie else None,
            "n": len(no_tie),
        },
        "accuracy_with_ties": {
            "first": float(np.mean([a[k][0] == h[k][0] for k in shared])) if shared else None,
            "second": float(np.mean([b[k][0] == h[k][0] for k in shared])) if shared else None,
        },
        "where_modes_differ": {
            "n": len(differ),
            "first_matches_human": first_right,
            "second_matches_human": second_right,
        },
        "better": "first"
        if first_right > second_right
        else "second"
        if second_right > first_right
        else "even",
    }


def compare_modes(
    first: Sequence[DensePreferenceRecord],
    second: Sequence[DensePreferenceRecord],
    humans: Sequence[Sequence[DensePreferenceRecord]] = (),
    *,
    first_name: str = "first",
    second_name: str = "second",
    human_names: Sequence[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The comparison of two label files of the same pairs (see the module docstring); JSON-ready."""
    first, second = list(first), list(second)
    for records, name in ((first, first_name), (second, second_name)):
        if not records:
            raise AgreementInputError(f"{name} holds no records")
        _by_pair_id(records, name)
    j = _join(first, second, first_name, second_name)
    same = j.seg_ref == j.seg_other
    second_by_key = {(r.pair_id, s.index): s for r in second for s in r.segments}
    first_by_key = {(r.pair_id, s.index): s for r in first for s in r.segments}
    common = [pid for pid in _by_pair_id(first, first_name) if pid in _by_pair_id(second, second_name)]
    shifts, differ = [], []
    for p, i in zip(j.seg_pair, j.seg_index, strict=True):
        key = (common[p], int(i))
        s1, s2 = first_by_key[key], second_by_key[key]
        shifts.append((s2.p_a - s2.p_b) - (s1.p_a - s1.p_b))
        if s1.label != s2.label:
            differ.append({"pair_id": key[0], "index": key[1], "first": s1.label, "second": s2.label})
    result: dict[str, Any] = {
        "inputs": {
            "first": first_name,
            "second": second_name,
            "first_mode": _mode(first),
            "second_mode": _mode(second),
        },
        "segments": {
            "n": int(same.size),
            "same_label": float(same.mean()) if same.size else None,
            "cohen_kappa": cohen_kappa(j.seg_ref, j.seg_other),
            "confusion_first_vs_second": confusion(j.seg_ref, j.seg_other),
            "mean_margin_shift": float(np.mean(shifts)) if shifts else None,
            "mean_abs_margin_shift": float(np.mean(np.abs(shifts))) if shifts else None,
        },
        "differing_segments": differ,
        "join": j.join,
        "human": None,
    }
    if humans:
        names = (
            list(human_names) if human_names is not None else [f"human{i + 1}" for i in range(len(humans))]
        )
        result["human"] = {
            "name": names[0],
            "segment_wins": _with_human(first, second, humans[0]),
            "first": compute_agreement(
                first, humans, bootstrap=bootstrap, seed=seed, pred_name=first_name, human_names=names
            )["segment"],
            "second": compute_agreement(
                second, humans, bootstrap=bootstrap, seed=seed, pred_name=second_name, human_names=names
            )["segment"],
        }
    return _json_safe(result)


def _f(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def modes_headline(result: dict[str, Any]) -> str:
    """The compact comparison printed to stdout."""
    inputs, seg = result["inputs"], result["segments"]
    lines = [
        f"modes: {inputs['first']} ({inputs['first_mode']}) vs {inputs['second']} ({inputs['second_mode']})",
        f"  segments joined        {seg['n']}",
        f"  same label             {_f(seg['same_label'])}  (Cohen's kappa {_f(seg['cohen_kappa'])})",
        f"  p_a - p_b shift        {_f(seg['mean_margin_shift'])} mean, {_f(seg['mean_abs_margin_shift'])} mean abs",
        f"  differing segments     {len(result['differing_segments'])}",
    ]
    human = result["human"]
    if human:
        wins = human["segment_wins"]
        acc = wins["accuracy_no_ties"]
        differ = wins["where_modes_differ"]
        lines += [
            f"  vs {human['name']}: accuracy no ties  first {_f(acc['first'])}, second {_f(acc['second'])} "
            f"over {acc['n']} segments",
            f"  where the modes differ ({differ['n']}): first matches the human {differ['first_matches_human']}, "
            f"second {differ['second_matches_human']} -> better: {wins['better']}",
        ]
    return "\n".join(lines)

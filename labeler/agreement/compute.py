"""The accuracy harness: how well do predicted dense preferences agree with human labels?

    python -m labeler.agreement --pred PRED.jsonl --human HUMAN.jsonl [--human HUMAN2.jsonl ...] \
        --out REPORT_DIR [--bootstrap 1000] [--seed 0] [--fit-tie-threshold]
    python -m labeler.agreement --fit-cascade CHEAP.jsonl VLM.jsonl --human HUMAN.jsonl --out REPORT_DIR

Both inputs are dense preference JSONL (docs/design.md §2.3). Pairs join on ``pair_id`` and segments on
``index``; segments whose frame ranges differ are excluded and listed, never silently dropped.
The metric definitions live in ``agreement_report.DEFINITIONS_MD`` (printed into report.md).
Labels are handled as numbers throughout: A = +1, B = -1, tie = 0 (``schemas.LABEL_VALUE``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labeler.agreement.cascade_cli import add_cascade_fit_arguments, run_cascade_fit
from labeler.agreement.metrics import (
    STREAM_SEGMENT,
    STREAM_VIDEO,
    Joined,
    coverage_accuracy,
    finite,
    flip_rate,
    forced_choice_credit,
    metric_block,
    segment_position,
    tie_threshold_fit,
)
from labeler.agreement.report import headline, write_report
from labeler.errors import AgreementInputError
from labeler.schemas import LABEL_VALUE, DensePreferenceRecord, read_records

__all__ = ["AgreementInputError", "compute_agreement", "headline", "main", "write_report"]


# --------------------------------------------------------------------------- joining


def _annotator(rec: DensePreferenceRecord) -> str:
    return rec.labeler.annotator or rec.labeler.model or rec.labeler.judge


def _by_pair_id(records: Sequence[DensePreferenceRecord], name: str) -> dict[str, DensePreferenceRecord]:
    out: dict[str, DensePreferenceRecord] = {}
    for rec in records:
        if rec.pair_id in out:
            who = sorted({_annotator(out[rec.pair_id]), _annotator(rec)})
            raise AgreementInputError(
                f"{name} holds several records for pair_id {rec.pair_id!r} (labelers: {', '.join(who)}); "
                "one record per pair is expected: give each annotator's labels as a separate --human file"
            )
        out[rec.pair_id] = rec
    return out


def _frames(seg: Any) -> list[int] | None:
    return None if seg is None else [seg.start_frame, seg.end_frame]


def _join(
    ref_records: Sequence[DensePreferenceRecord],
    other_records: Sequence[DensePreferenceRecord],
    ref_name: str,
    other_name: str,
) -> Joined:
    ref, other = _by_pair_id(ref_records, ref_name), _by_pair_id(other_records, other_name)
    common = [pid for pid in ref if pid in other]
    only_human = [pid for pid in ref if pid not in other]
    only_pred = [pid for pid in other if pid not in ref]
    if not common:
        raise AgreementInputError(
            f"no pair_id in common between {other_name} ({len(other)} pairs, e.g. {list(other)[:3]}) "
            f"and {ref_name} ({len(ref)} pairs, e.g. {list(ref)[:3]})"
        )
    rows: list[tuple[int, int, int, int, float]] = []
    count_mismatches, boundary_mismatches = [], []
    for k, pid in enumerate(common):
        r_segs, o_segs = ref[pid].segments, other[pid].segments
        if len(r_segs) != len(o_segs):
            count_mismatches.append({"pair_id": pid, "n_pred": len(o_segs), "n_human": len(r_segs)})
        # Segments are validated to sit at position == index, so joining on index is positional.
        for i in range(max(len(r_segs), len(o_segs))):
            rs = r_segs[i] if i < len(r_segs) else None
            os_ = o_segs[i] if i < len(o_segs) else None
            if rs is None or os_ is None or _frames(rs) != _frames(os_):
                boundary_mismatches.append(
                    {"pair_id": pid, "index": i, "pred": _frames(os_), "human": _frames(rs)}
                )
                continue
            rows.append((k, i, LABEL_VALUE[rs.label], LABEL_VALUE[os_.label], os_.p_a - os_.p_b))
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    join = {
        "n_pairs_pred": len(other),
        "n_pairs_human": len(ref),
        "n_pairs_joined": len(common),
        "n_segments_joined": len(rows),
        "n_only_in_pred": len(only_pred),
        "n_only_in_human": len(only_human),
        "only_in_pred": only_pred,
        "only_in_human": only_human,
        "segment_count_mismatches": count_mismatches,
        "n_boundary_mismatches": len(boundary_mismatches),
        "boundary_mismatches": boundary_mismatches,
    }
    return Joined(
        seg_pair=np.asarray(cols[0], dtype=int),
        seg_index=np.asarray(cols[1], dtype=int),
        seg_ref=np.asarray(cols[2], dtype=int),
        seg_other=np.asarray(cols[3], dtype=int),
        seg_margin=np.asarray(cols[4], dtype=float),
        vid_ref=np.asarray([LABEL_VALUE[ref[p].video_label] for p in common], dtype=int),
        vid_other=np.asarray([LABEL_VALUE[other[p].video_label] for p in common], dtype=int),
        vid_margin=np.asarray([other[p].video_score for p in common], dtype=float),
        join=join,
    )


# --------------------------------------------------------------------------- assembling


def _compare(
    ref: Sequence[DensePreferenceRecord],
    other: Sequence[DensePreferenceRecord],
    ref_name: str,
    other_name: str,
    *,
    bootstrap: int,
    seed: int,
) -> tuple[dict[str, Any], Joined]:
    j = _join(ref, other, ref_name, other_name)
    seg_rng = np.random.default_rng([seed, STREAM_SEGMENT])
    vid_rng = np.random.default_rng([seed, STREAM_VIDEO])
    segment = metric_block(j.seg_ref, j.seg_other, j.seg_margin, j.seg_pair, seg_rng, bootstrap)
    video = metric_block(j.vid_ref, j.vid_other, j.vid_margin, np.arange(j.vid_ref.size), vid_rng, bootstrap)
    no_tie = j.seg_ref != 0
    credit = forced_choice_credit(j.seg_ref, j.seg_other, j.seg_margin)
    return {
        "segment": segment,
        "video": video,
        "coverage_accuracy": coverage_accuracy(credit[no_tie], np.abs(j.seg_margin[no_tie])),
        "segment_position": segment_position(j),
        "join": j.join,
    }, j


_SCALARS = (
    "accuracy_no_ties",
    "decided_coverage",
    "accuracy_both_decided",
    "accuracy_with_ties",
    "cohen_kappa",
    "krippendorff_alpha",
)


def _mean_block(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": sum(b["n"] for b in blocks), "n_no_ties": sum(b["n_no_ties"] for b in blocks)}
    for key in _SCALARS:
        values = [b[key] for b in blocks if b[key] is not None]
        out[key] = float(np.mean(values)) if values else None
    out["averaged_over"] = len(blocks)
    return out


def _human_ceiling(
    humans: Sequence[Sequence[DensePreferenceRecord]],
    names: list[str],
    bootstrap: int,
    seed: int,
    notes: list[str],
) -> dict[str, Any] | None:
    if len(humans) < 2:
        return None
    pairs = []
    for (i, a), (k, b) in itertools.combinations(enumerate(humans), 2):
        try:
            res, _ = _compare(a, b, names[i], names[k], bootstrap=bootstrap, seed=seed)
        except AgreementInputError as exc:
            notes.append(f"human ceiling {names[i]} vs {names[k]} skipped: {exc}")
            continue
        pairs.append({"reference": names[i], "other": names[k], **_summary(res)})
    if not pairs:
        return None
    if len(pairs) == 1:
        return {"segment": pairs[0]["segment"], "video": pairs[0]["video"], "pairs": pairs}
    return {
        "segment": _mean_block([p["segment"] for p in pairs]),
        "video": _mean_block([p["video"] for p in pairs]),
        "pairs": pairs,
    }


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    """A secondary comparison without its long lists: metric blocks and join counts only."""
    join_counts = {k: v for k, v in res["join"].items() if k.startswith("n_")}
    return {"segment": res["segment"], "video": res["video"], "join": join_counts}


def _undefined_notes(result: dict[str, Any], notes: list[str]) -> None:
    for level in ("segment", "video"):
        block = result[level]
        if block["n_no_ties"] == 0:
            notes.append(f"{level}: every human label is a tie, so accuracy_no_ties is undefined (null)")
        for key in ("cohen_kappa", "krippendorff_alpha"):
            if block[key] is None and block["n"] > 0:
                notes.append(
                    f"{level}: {key} is undefined (null): the labels show no variation to compare against chance"
                )


def _check_inputs(
    pred: list[DensePreferenceRecord],
    humans: Sequence[Sequence[DensePreferenceRecord]],
    names: list[str],
    pred_name: str,
    bootstrap: int,
) -> None:
    if not humans:
        raise AgreementInputError("no human label set given: pass at least one --human file")
    if len(names) != len(humans):
        raise AgreementInputError(f"{len(names)} human names for {len(humans)} human label sets")
    if bootstrap < 0:
        raise AgreementInputError(f"bootstrap must be >= 0, got {bootstrap}")
    for records, name in [(pred, pred_name), *zip(humans, names, strict=True)]:
        if not records:
            raise AgreementInputError(f"{name} holds no records")
        _by_pair_id(records, name)  # several annotators mixed in one file: fail before any work


def _per_human(
    pred: list[DensePreferenceRecord],
    humans: Sequence[Sequence[DensePreferenceRecord]],
    names: list[str],
    pred_name: str,
    bootstrap: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The prediction against each human file; a file that cannot be compared says why."""
    out: list[dict[str, Any]] = []
    for h, name in zip(humans, names, strict=True):
        try:
            res, _ = _compare(h, pred, name, pred_name, bootstrap=bootstrap, seed=seed)
            out.append({"human": name, **_summary(res)})
        except AgreementInputError as exc:
            out.append({"human": name, "error": str(exc)})
    return out


def compute_agreement(
    pred: Sequence[DensePreferenceRecord],
    humans: Sequence[Sequence[DensePreferenceRecord]],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    fit_tie_threshold: bool = False,
    pred_name: str = "pred",
    human_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Agreement of ``pred`` with ``humans[0]`` (main figures), with each human file (``per_human``)
    and between annotators (``human_ceiling``). JSON-ready: no NaN, no numpy types."""
    pred, humans = list(pred), [list(h) for h in humans]
    names = list(human_names) if human_names is not None else [f"human{i + 1}" for i in range(len(humans))]
    _check_inputs(pred, humans, names, pred_name, bootstrap)
    main_res, joined = _compare(humans[0], pred, names[0], pred_name, bootstrap=bootstrap, seed=seed)
    notes: list[str] = []
    _undefined_notes(main_res, notes)
    rate, n_flip = flip_rate(pred)
    if rate is None:
        notes.append("flip_rate is null: the prediction carries no pair of ab/ba votes")
    per_human = _per_human(pred, humans, names, pred_name, bootstrap, seed) if len(humans) > 1 else None
    tie_fit = None
    if fit_tie_threshold:
        tie_fit = tie_threshold_fit(joined, seed)
        if tie_fit is None:
            notes.append("fit_tie_threshold needs at least two joined pairs with segments; skipped")
    result = {
        "inputs": {
            "pred": pred_name,
            "human": names,
            "pred_labeler": pred[0].labeler.model_dump(exclude_none=True),
            "human_annotators": [sorted({_annotator(r) for r in h}) for h in humans],
        },
        "segment": main_res["segment"],
        "video": main_res["video"],
        "flip_rate": rate,
        "flip_rate_n": n_flip,
        "coverage_accuracy": main_res["coverage_accuracy"],
        "segment_position": main_res["segment_position"],
        "human_ceiling": _human_ceiling(humans, names, bootstrap, seed, notes),
        "per_human": per_human,
        "tie_threshold": tie_fit,
        "join": main_res["join"],
        "bootstrap": {"resamples": bootstrap, "seed": seed, "unit": "pair"},
        "notes": notes,
    }
    return _json_safe(result)


def _json_safe(obj: Any) -> Any:
    """Plain Python types only, NaN/inf -> None, so json.dumps(allow_nan=False) always works."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite(obj)
    return obj


# --------------------------------------------------------------------------- CLI


def _read(path: str, flag: str) -> list[DensePreferenceRecord]:
    if not Path(path).is_file():
        raise AgreementInputError(f"{flag} {path}: no such file")
    try:
        # Strict: a cut-off last line must be reported here, not silently left out of the figures.
        return read_records(path, tolerate_truncated_tail=False)
    except ValueError as exc:  # already names the file and line
        raise AgreementInputError(str(exc)) from exc


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m labeler.agreement",
        description="Agreement of predicted dense preference labels with human labels, at segment and "
        "video level, with pair-bootstrap confidence intervals. Writes agreement.json, report.md and "
        "PNG plots to --out and prints the headline table.",
    )
    parser.add_argument(
        "--pred", help="predicted labels, dense preference JSONL (needed unless --fit-cascade is given)"
    )
    parser.add_argument(
        "--human",
        action="append",
        help="human labels, same schema, one annotator per file; repeat for several annotators "
        "(the first is the reference; two or more also give the human-human ceiling). Required "
        "unless --compare is given",
    )
    parser.add_argument(
        "--compare",
        metavar="OTHER.jsonl",
        help="a second label file of the same pairs (e.g. --input video vs --pred's frames, or with "
        "vs without --show-reference): compare the two segment by segment, and against the first "
        "--human file when given; writes modes.json to --out",
    )
    parser.add_argument("--out", required=True, type=Path, help="report directory (created if missing)")
    parser.add_argument(
        "--bootstrap",
        type=_non_negative_int,
        default=1000,
        help="bootstrap resamples over pairs; 0 disables the CI (default 1000)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap and of the tie-threshold split (default 0)"
    )
    parser.add_argument(
        "--fit-tie-threshold",
        action="store_true",
        help="fit on half the pairs the |p_a - p_b| tie margin (max 3-way accuracy) and report it on the "
        "other half: below it a prediction becomes a tie, at or above it a predicted tie is decided by "
        "the sign of p_a - p_b (so the fit can raise or lower the judge's own margin)",
    )
    add_cascade_fit_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.pred is None and args.fit_cascade is None:
        parser.error("give --pred PRED.jsonl, or --fit-cascade CHEAP.jsonl VLM.jsonl, or both")
    if args.compare:
        if args.pred is None:
            parser.error("--compare OTHER.jsonl compares against --pred PRED.jsonl: give both")
        return _main_compare(args)
    if not args.human:
        parser.error("--human is required (or give --compare to compare two label files)")
    if args.fit_cascade is not None:
        code = run_cascade_fit(args, _read)
        if code or args.pred is None:
            return code
    try:
        pred = _read(args.pred, "--pred")
        humans = [_read(path, "--human") for path in args.human]
        result = compute_agreement(
            pred,
            humans,
            bootstrap=args.bootstrap,
            seed=args.seed,
            fit_tie_threshold=args.fit_tie_threshold,
            pred_name=args.pred,
            human_names=args.human,
        )
    except AgreementInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        paths = write_report(result, args.out)
    except OSError as exc:
        print(f"error: cannot write the report to {args.out}: {exc}", file=sys.stderr)
        return 1
    print(headline(result))
    print(f"\nreport: {paths['report']}  (json: {paths['json']})")
    return 0


def _main_compare(args: argparse.Namespace) -> int:
    import json

    from labeler.agreement.modes import compare_modes, modes_headline

    try:
        first, second = _read(args.pred, "--pred"), _read(args.compare, "--compare")
        humans = [_read(path, "--human") for path in args.human or []]
        result = compare_modes(
            first,
            second,
            humans,
            first_name=args.pred,
            second_name=args.compare,
            human_names=args.human,
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
    except AgreementInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "modes.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        print(f"error: cannot write the report to {args.out}: {exc}", file=sys.stderr)
        return 1
    print(modes_headline(result))
    print(f"\nreport: {path}")
    return 0

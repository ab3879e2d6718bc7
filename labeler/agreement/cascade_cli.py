"""The ``--fit-cascade`` options of ``python -m labeler.agreement`` (labeler.agreement.cascade_fit)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from labeler.agreement.cascade_fit import (
    TARGET_METRICS,
    cascade_headline,
    fit_cascade,
    write_cascade_report,
)
from labeler.errors import AgreementInputError
from labeler.judges.openai_request import parse_price
from labeler.schemas import DensePreferenceRecord

Reader = Callable[[str, str], list[DensePreferenceRecord]]


def _accuracy(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _price(text: str) -> tuple[float, float]:
    try:
        return parse_price(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_cascade_fit_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cascade fit (labeler.batch --cascade-from)")
    g.add_argument(
        "--fit-cascade",
        nargs=2,
        metavar=("CHEAP", "VLM"),
        help="the cheap judge's labels (a cascade run's OUT.cheap.jsonl) and the VLM's labels of the "
        "same pairs: report accuracy and cost at every escalated share against the first --human "
        "file, and the lowest-cost share reaching --target-accuracy (cascade.md, .json, .png in --out)",
    )
    g.add_argument(
        "--target-accuracy",
        type=_accuracy,
        default=0.9,
        help="--fit-cascade: the accuracy to reach (default: %(default)s)",
    )
    g.add_argument(
        "--target-metric",
        choices=TARGET_METRICS,
        default="accuracy_with_ties",
        help="--fit-cascade: the accuracy --target-accuracy is measured on (default: %(default)s)",
    )
    g.add_argument(
        "--price",
        type=_price,
        default=None,
        metavar="IN,OUT",
        help="--fit-cascade: USD per 1M input and output tokens of the VLM, when the price table does "
        "not list its model (without a price the cost is reported in tokens)",
    )


def run_cascade_fit(args: argparse.Namespace, read: Reader) -> int:
    """Fit, write the report, print the headline; 2 for unusable inputs, 1 for an unwritable --out."""
    cheap_path, vlm_path = args.fit_cascade
    try:
        fit = fit_cascade(
            read(cheap_path, "--fit-cascade CHEAP"),
            read(vlm_path, "--fit-cascade VLM"),
            read(args.human[0], "--human"),
            target=args.target_accuracy,
            metric=args.target_metric,
            price=args.price,
        )
    except AgreementInputError as exc:  # CascadeFitError, and _read's unreadable files
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        paths = write_cascade_report(fit, args.out)
    except OSError as exc:
        print(f"error: cannot write the cascade report to {args.out}: {exc}", file=sys.stderr)
        return 1
    print(cascade_headline(fit))
    print(f"\ncascade report: {paths['report']}  (json: {paths['json']}, plot: {paths['plot']})")
    return 0

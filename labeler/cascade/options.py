"""``--cascade-from`` / ``--escalate-share`` / ``--escalate-below`` (labeler.batch)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from labeler.cascade.policy import EscalationRule
from labeler.engine import Engine
from labeler.judges import build_judge

#: Judges a cascade can start from: free, calibrated, in-process.
CASCADE_SOURCES = ("metrics",)


def add_cascade_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cascade (spend the main judge only where the cheap one is unsure)")
    g.add_argument(
        "--cascade-from",
        choices=CASCADE_SOURCES,
        default=None,
        help="label every segment with this cheap judge first (into OUT.cheap.jsonl) and send only "
        "the least-confident segments to --judge; each segment records decided_by and the cheap verdict",
    )
    g.add_argument(
        "--escalate-share",
        type=float,
        default=None,
        metavar="F",
        help="with --cascade-from: escalate the least-confident share F (0..1) of all segments "
        "(confidence: the largest of the cheap judge's p_a, p_b, p_tie)",
    )
    g.add_argument(
        "--escalate-below",
        type=float,
        default=None,
        metavar="P",
        help="with --cascade-from: escalate every segment whose cheap confidence is below P",
    )


def cascade_rule_from_args(args: argparse.Namespace) -> EscalationRule | None:
    """The escalation rule of the options, or None without --cascade-from; ValueError (a usage
    error) for options that do not fit together."""
    share, below = args.escalate_share, args.escalate_below
    if args.cascade_from is None:
        if share is not None or below is not None:
            raise ValueError("--escalate-share / --escalate-below need --cascade-from")
        return None
    if (share is None) == (below is None):
        raise ValueError("--cascade-from needs exactly one of --escalate-share F or --escalate-below P")
    if args.judge == args.cascade_from:
        raise ValueError(
            f"--cascade-from {args.cascade_from} with --judge {args.judge}: nothing to escalate to"
        )
    for flag, name in (("--openai-batch", "openai_batch"), ("--batch-export", "batch_export")):
        if vars(args).get(name):
            raise ValueError(f"{flag} cannot be combined with --cascade-from (the cascade runs online)")
    if vars(args).get("batch_import"):
        raise ValueError("--batch-import cannot be combined with --cascade-from")
    if vars(args).get("dry_run"):
        raise ValueError(
            "--dry-run cannot be combined with --cascade-from (escalation needs the cheap labels)"
        )
    try:
        return EscalationRule(share=share, below=below)
    except ValueError as exc:
        raise ValueError(f"--escalate-{'share' if share is not None else 'below'}: {exc}") from None


def cheap_engine(main: Engine, source: str, *, processes: int | None) -> Engine:
    """The cheap judge's engine: the main engine's segmenting and frame settings (so both cut the same
    segments), without its budgets (they limit the main judge), over its own cache handle."""
    from labeler.cache import JudgmentCache

    judge = build_judge(source, processes=processes)
    config = dataclasses.replace(main.config, max_requests=None, max_cost=None)
    return Engine(judge, config, JudgmentCache(main.cache.directory))


def cascade_settings(source: str, rule: EscalationRule) -> dict[str, Any]:
    """The cascade's part of OUT's settings sidecar (labeler.fingerprint): the cheap judge, its
    fingerprint and the escalation rule; another of any is another labelling. The cheap judge is built
    as both passes build it (its defaults), without worker processes, only to be asked."""
    return {
        "cheap_judge": source,
        "cheap_judge_settings": build_judge(source, processes=0).fingerprint(),
        **rule.describe(),
    }

"""Command-line options shared by the entry points (``labeler.batch``, ``labeler.app``), so the
batch CLI and the HTTP service build judges and engines the same way."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

from labeler.cache import JudgmentCache, default_cache_dir
from labeler.engine import Engine, EngineConfig
from labeler.fileio import iter_jsonl
from labeler.judges import JUDGE_NAMES, build_judge
from labeler.judges.base import Judge
from labeler.judges.openai_request import ANSWER_ORDERS, EFFORTS, parse_price


class UsageError(ValueError):
    """Options that do not fit together; entry points report it as a usage error (exit 2)."""


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("judge")
    g.add_argument(
        "--judge",
        choices=JUDGE_NAMES,
        default="metrics",
        help="metrics: embedded model-free default (no key, no GPU); openai: any OpenAI-compatible "
        "chat endpoint (OpenAI GPT, vllm serve); hf: a local transformers VLM (default: %(default)s)",
    )
    g.add_argument(
        "--model",
        help="model name for --judge openai (e.g. gpt-4o-mini, Qwen/Qwen2.5-VL-7B-Instruct) "
        "or a model path / hub id for --judge hf",
    )
    g.add_argument(
        "--base-url",
        help="OpenAI-compatible endpoint, e.g. http://gpu-box:8000/v1 for vllm serve "
        "(default: OpenAI; the key comes from OPENAI_API_KEY)",
    )
    g.add_argument(
        "--prompt",
        default=None,
        help="judge prompt template name in prompts/ or a .j2 path (default: conservative)",
    )
    g.add_argument(
        "--layout",
        choices=("separate", "side-by-side"),
        default=None,
        help="frames of A then of B as separate images, or one A|B composite per time step "
        "(half the images) (default: separate)",
    )
    g.add_argument(
        "--detail", choices=("low", "high", "auto"), default=None, help="OpenAI image detail (default: low)"
    )
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 0)")
    g.add_argument("--max-tokens", type=int, default=None, help="answer token limit (default: 300)")
    g.add_argument(
        "--no-logprobs",
        action="store_true",
        help="do not ask the endpoint for logprobs (probabilities then come from votes)",
    )
    _add_openai_arguments(g)
    g.add_argument("--device", default=None, help="torch device for --judge hf (default: cpu)")
    g.add_argument("--dtype", default=None, help="torch dtype for --judge hf, e.g. bfloat16 (default: auto)")
    g.add_argument(
        "--rationale-tokens",
        type=int,
        default=None,
        help="--judge hf: let the model write a rationale of up to N tokens before the label is "
        "scored (default: 0, score the label directly)",
    )
    g.add_argument(
        "--tie-margin",
        type=float,
        default=None,
        help="metrics judge: score difference below which a segment is a tie",
    )
    g.add_argument(
        "--no-reference",
        action="store_true",
        help="metrics judge: ignore the manifest's reference videos (no-reference signals only)",
    )
    g.add_argument(
        "--judge-processes",
        type=int,
        default=None,
        metavar="N",
        help="metrics judge: measure segments in N worker processes, 0 in threads of this process "
        "(same answers; processes use every core, threads about 1.5 of 2). Default: one per CPU "
        "for a labeler.batch manifest of 16 pairs or more, else 0 (a demo, a few pairs, --ray, "
        "the service)",
    )


def _add_openai_arguments(g: argparse._ArgumentGroup) -> None:
    """--judge openai options for real endpoints (docs/endpoints.md)."""
    g.add_argument(
        "--no-strict",
        action="store_true",
        help="send the answer schema with strict: false (default: strict: true; vLLM ignores it)",
    )
    g.add_argument(
        "--reasoning-effort",
        choices=EFFORTS,
        default=None,
        help="reasoning models: the effort to ask for (default: the model's own, from the model table); "
        "on a model outside the table it marks it as a reasoning model and reserves thinking tokens",
    )
    g.add_argument(
        "--extra-body",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="server-specific fields merged into every request body, e.g. vLLM's "
        '\'{"top_k": 20, "repetition_penalty": 1.05}\' (they enter the cache key)',
    )
    g.add_argument(
        "--price",
        type=_price,
        default=None,
        metavar="IN,OUT",
        help="USD per 1M input and output tokens, for a model the price table does not list "
        "(needed for --max-cost on it)",
    )
    g.add_argument(
        "--answer-order",
        choices=ANSWER_ORDERS,
        default=None,
        help="label-first: p_* are the model's belief before any rationale (comparable with --judge hf); "
        "rationale-first: the model reasons first (default: label-first)",
    )


def _price(text: str) -> tuple[float, float]:
    try:
        return parse_price(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    for key in ("model", "messages"):
        if key in value:
            raise argparse.ArgumentTypeError(f"must not set {key!r} (the judge sends it)")
    return value


#: A batch run measures in worker processes from this many pairs on: below it, their start-up
#: (about a second) costs more than they save.
PAIRS_FOR_PROCESSES = 16


def default_judge_processes() -> int:
    """One metrics-judge worker per CPU, none on a single CPU."""
    cpus = min(os.cpu_count() or 1, 16)
    return cpus if cpus > 1 else 0


def batch_judge_processes(manifest: Path | None, *, demo: bool, ray: bool) -> int:
    """``--judge-processes`` when not given to ``labeler.batch``: one per CPU for a manifest of
    ``PAIRS_FOR_PROCESSES`` pairs or more; none for the demo, a handful of pairs, or on Ray, whose
    actors are processes already. An unreadable manifest gets none (the run reports it)."""
    if demo or ray or manifest is None:
        return 0
    try:
        pairs = sum(1 for _ in itertools.islice(iter_jsonl(manifest), PAIRS_FOR_PROCESSES))
    except (OSError, UnicodeDecodeError):
        return 0
    return default_judge_processes() if pairs >= PAIRS_FOR_PROCESSES else 0


#: The options each judge reads (argparse ``dest`` names). One given to a judge that does not read
#: it is refused: accepted and ignored, the user would believe it took effect.
JUDGE_READS: dict[str, frozenset[str]] = {
    "metrics": frozenset({"tie_margin", "no_reference", "judge_processes"}),
    "openai": frozenset(
        {
            *("model", "base_url", "prompt", "layout", "detail", "temperature", "max_tokens"),
            *("no_logprobs", "no_strict", "reasoning_effort", "extra_body", "price", "answer_order"),
        }
    ),
    "hf": frozenset({"model", "prompt", "layout", "device", "dtype", "rationale_tokens"}),
}


def _refuse_unread_options(args: argparse.Namespace) -> None:
    """A judge option given (not left at its default) that ``args.judge`` does not read is a usage
    error naming the flags and the judges that do read them."""
    unread = sorted(set().union(*JUDGE_READS.values()) - JUDGE_READS[args.judge])
    given = [name for name in unread if vars(args)[name] not in (None, False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        readers = sorted({judge for judge, reads in JUDGE_READS.items() for name in given if name in reads})
        raise UsageError(
            f"{flags}: --judge {args.judge} does not read {'it' if len(given) == 1 else 'them'} "
            f"(options of --judge {' / '.join(readers)})"
        )


def build_judge_from_args(args: argparse.Namespace) -> Judge:
    _refuse_unread_options(args)
    if args.judge == "metrics":
        return build_judge(
            "metrics",
            tie_margin=args.tie_margin,
            use_reference=False if args.no_reference else None,
            processes=args.judge_processes,
        )
    if not args.model:
        raise UsageError(f"--judge {args.judge} needs --model")
    common = {"prompt": args.prompt, "layout": args.layout}
    if args.judge == "openai":
        return build_judge(
            "openai",
            model=args.model,
            base_url=args.base_url,
            detail=args.detail,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            logprobs=False if args.no_logprobs else None,
            timeout=args.timeout,
            strict_schema=False if args.no_strict else None,
            reasoning_effort=args.reasoning_effort,
            extra_body=args.extra_body,
            price=args.price,
            answer_order=args.answer_order,
            **common,
        )
    return build_judge(
        "hf",
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        rationale_tokens=args.rationale_tokens,
        **common,
    )


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("segments and engine")
    d = EngineConfig()
    g.add_argument(
        "--segment-seconds",
        type=float,
        default=d.segment_seconds,
        help="segment length; a manifest entry's segment_seconds overrides it (default: %(default)s)",
    )
    g.add_argument(
        "--frames-per-segment",
        type=int,
        default=d.frames_per_segment,
        help="frames sampled uniformly inside each segment (default: %(default)s)",
    )
    g.add_argument(
        "--max-side",
        type=int,
        default=d.max_side,
        help="resize frames so the long side is this many pixels (default: %(default)s)",
    )
    g.add_argument(
        "--concurrency",
        type=int,
        default=d.concurrency,
        help="judge requests in flight (default: %(default)s)",
    )
    g.add_argument(
        "--no-swap",
        action="store_true",
        help="judge each segment once, in (A, B) order only (default: both orders, to cancel position bias)",
    )
    g.add_argument(
        "--cache-dir", type=Path, default=None, help=f"judgment cache folder (default: {default_cache_dir()})"
    )
    g.add_argument("--no-cache", action="store_true", help="do not read or write the judgment cache")
    g.add_argument(
        "--timeout",
        type=float,
        default=d.request_timeout,
        help="seconds per judge request before it is retried (default: %(default)s)",
    )
    g.add_argument(
        "--max-attempts",
        type=int,
        default=d.max_attempts,
        help="attempts per judge request on 429/5xx/timeouts (default: %(default)s)",
    )
    g.add_argument("--max-requests", type=int, default=None, help="stop after sending this many requests")
    g.add_argument(
        "--max-cost",
        type=float,
        default=None,
        help="stop once the billed spend reaches this many USD (a model without a listed price needs --price)",
    )
    g.add_argument(
        "--max-retry-after",
        type=float,
        default=d.max_retry_after,
        help="longest Retry-After (seconds) a 429/503 is honoured for; a longer one counts as a failed "
        "attempt instead of pausing every request (default: %(default)s)",
    )


#: Longest sensible value of a seconds option (a day): 1e308 would overflow timers and frame counts.
MAX_SECONDS = 86400.0


def _check_seconds(args: argparse.Namespace) -> None:
    for name in ("segment_seconds", "timeout", "max_retry_after"):
        value, flag = getattr(args, name), f"--{name.replace('_', '-')}"
        if not math.isfinite(value) or value < 0 or (value == 0 and name != "max_retry_after"):
            raise UsageError(f"{flag} must be a positive number of seconds, got {value}")
        if value > MAX_SECONDS:
            raise UsageError(f"{flag} must be at most {MAX_SECONDS:g} s, got {value:g}")


def _check_budgets(args: argparse.Namespace) -> None:
    # 0 is a budget too: label only what the cache already holds, send nothing.
    if args.max_requests is not None and args.max_requests < 0:
        raise UsageError(f"--max-requests must be 0 or more, got {args.max_requests}")
    if args.max_cost is not None and not (math.isfinite(args.max_cost) and args.max_cost >= 0):
        raise UsageError(f"--max-cost must be a finite amount of USD, 0 or more, got {args.max_cost}")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """The engine settings of the options; UsageError for values no run could use (NaN, inf,
    1e308 seconds, negative budgets)."""
    _check_seconds(args)
    _check_budgets(args)
    if args.max_side <= 0:
        raise UsageError("--max-side must be positive")
    for name in ("frames_per_segment", "concurrency", "max_attempts"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    return EngineConfig(
        segment_seconds=args.segment_seconds,
        frames_per_segment=args.frames_per_segment,
        max_side=args.max_side,
        swap=not args.no_swap,
        concurrency=args.concurrency,
        request_timeout=args.timeout,
        max_attempts=args.max_attempts,
        max_requests=args.max_requests,
        max_cost=args.max_cost,
        max_retry_after=args.max_retry_after,
    )


def cache_from_args(args: argparse.Namespace) -> JudgmentCache:
    if args.no_cache:
        return JudgmentCache(None)
    directory = args.cache_dir or Path(os.environ.get("DENSEPREF_CACHE_DIR") or default_cache_dir())
    return JudgmentCache(directory)


def engine_from_args(args: argparse.Namespace) -> Engine:
    judge = build_judge_from_args(args)
    config = engine_config_from_args(args)
    if config.max_cost is not None and judge.cost_usd(1_000_000, 1_000_000) is None:
        raise UsageError(
            f"--max-cost cannot limit {judge.model}: the price table does not list it; "
            "give its price with --price IN,OUT (USD per 1M tokens)"
        )
    return Engine(judge, config, cache_from_args(args))

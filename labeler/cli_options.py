"""Command-line options shared by the entry points (``labeler.batch``, ``labeler.app``), so the
batch CLI and the HTTP service build judges and engines the same way.

This is the one module where parsed flags (``argparse.Namespace``) live: they become typed objects
here (:class:`~labeler.judge_config.JudgeConfig`, :class:`~labeler.engine.EngineConfig`, together
an :class:`~labeler.engine_spec.EngineSpec`) and only those travel on, to the engine, the service
and the Ray actors."""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
from pathlib import Path

from labeler.cache import JudgmentCache, default_cache_dir
from labeler.engine import Engine, EngineConfig
from labeler.engine_spec import EngineSpec
from labeler.errors import UsageError
from labeler.fileio import iter_jsonl
from labeler.judge_config import JUDGE_READS, JudgeConfig, add_judge_config_arguments
from labeler.judges.base import Judge
from labeler.runners.ray.options import DEFAULT_WORKERS, LOCAL, RayOptions

__all__ = [
    "JUDGE_READS",
    "PAIRS_FOR_PROCESSES",
    "EngineSpec",
    "UsageError",
    "add_engine_arguments",
    "add_judge_arguments",
    "add_ray_arguments",
    "batch_judge_processes",
    "build_engine_parser",
    "build_judge_from_args",
    "cache_from_args",
    "default_judge_processes",
    "engine_config_from_args",
    "engine_from_args",
    "ray_options_from_args",
    "spec_from_args",
    "spec_from_argv",
]


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    """The judge's flags, generated from :class:`~labeler.judge_config.JudgeConfig`'s fields."""
    add_judge_config_arguments(parser.add_argument_group("judge"))


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


def build_judge_from_args(args: argparse.Namespace) -> Judge:
    """The judge of parsed flags (UsageError for options that do not fit the judge)."""
    return JudgeConfig.from_namespace(args).build(timeout=args.timeout)


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
        "--align-to-latent",
        type=int,
        default=None,
        metavar="R",
        help="move every boundary between segments to the nearest frame 1 + R*k, so that no latent frame of a "
        "causal video VAE with temporal compression R (Wan: 4) straddles two segments (training masks such "
        "frames where the labels differ); default: boundaries every --segment-seconds exactly",
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
        "--cache-dir",
        type=_folder_name,
        default=None,
        help=f"judgment cache folder (default: {default_cache_dir()})",
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


def _folder_name(text: str) -> Path:
    """A folder option's value; an empty one (an unset shell variable) would mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty name would mean the current folder; give a folder (or '.')"
        )
    return Path(text)


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """The engine settings of the options; EngineConfig itself refuses values no run could use
    (NaN, inf, 1e308 seconds, negative budgets) with a UsageError naming the flag."""
    return EngineConfig(
        segment_seconds=args.segment_seconds,
        align_to_latent=args.align_to_latent,
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
    return spec_from_args(args).cache()


def spec_from_args(args: argparse.Namespace) -> EngineSpec:
    """Everything an engine is built from, typed: what the service and Ray actors receive."""
    return EngineSpec(
        JudgeConfig.from_namespace(args), engine_config_from_args(args), args.cache_dir, not args.no_cache
    )


def engine_from_args(args: argparse.Namespace) -> Engine:
    return spec_from_args(args).build()


def build_engine_parser(add_help: bool = False) -> argparse.ArgumentParser:
    """The judge and engine flags alone (the service's ``DENSEPREF_ENGINE_ARGS``)."""
    parser = argparse.ArgumentParser(add_help=add_help, allow_abbrev=False)
    add_judge_arguments(parser)
    add_engine_arguments(parser)
    return parser


def spec_from_argv(argv: list[str]) -> EngineSpec:
    """The spec of judge and engine flags given as a list of strings; UsageError (never a
    SystemExit) naming the bad option."""
    try:
        args = build_engine_parser().parse_args(argv)
    except SystemExit:  # argparse exits on bad options; a factory must raise
        raise UsageError(f"invalid engine options {argv}") from None
    for name in ("segment_seconds", "timeout", "max_cost"):
        value = vars(args)[name]
        if value is not None and not math.isfinite(value):  # nan passes every "<= 0" check
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, not {value}")
    return spec_from_args(args)


# --------------------------------------------------------------------------- Ray


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scale out on Ray (pip install -e '.[ray]'; see docs/scale.md)")
    g.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL,
        default=None,
        metavar="ADDRESS",
        help="label on a Ray cluster: no ADDRESS starts a local Ray on this machine; 'auto' or "
        "ray://host:10001 joins an existing cluster. --workers is then the pairs each Ray worker "
        "labels at once",
    )
    g.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help=f"Ray worker actors, each holding one judge and one engine (default: {DEFAULT_WORKERS})",
    )
    g.add_argument(
        "--ray-gpus-per-worker",
        type=float,
        default=None,
        metavar="G",
        help="GPUs each Ray worker reserves, e.g. 1 with --judge hf for one model copy per GPU "
        "(default: 0; --judge hf then runs on cuda unless --device says otherwise)",
    )


def _check_ray_flags(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("ray") is None:
        raise ValueError("--ray needs Ray: pip install -e '.[ray]' (in the densepref checkout)")
    if args.openai_batch:
        raise ValueError("--openai-batch and --ray do not go together (the Batch API needs no workers)")
    if not args.ray.strip():
        raise ValueError("--ray ADDRESS is empty; give no ADDRESS for a local Ray, or 'auto'")


def ray_options_from_args(args: argparse.Namespace, pairs_per_worker: int) -> RayOptions | None:
    """The Ray options, or None without --ray; raises ValueError on options that do not fit.
    Reads ``args``, never changes them."""
    if args.ray is None:
        if args.ray_workers is not None or args.ray_gpus_per_worker is not None:
            raise ValueError("--ray-workers and --ray-gpus-per-worker need --ray")
        return None
    _check_ray_flags(args)
    workers = DEFAULT_WORKERS if args.ray_workers is None else args.ray_workers
    if workers < 1:
        raise ValueError("--ray-workers must be at least 1")
    gpus = 0.0 if args.ray_gpus_per_worker is None else args.ray_gpus_per_worker
    if not math.isfinite(gpus) or gpus < 0:
        raise ValueError("--ray-gpus-per-worker must be a finite number >= 0")
    if gpus > 1 and not gpus.is_integer():
        raise ValueError("--ray-gpus-per-worker above 1 must be a whole number of GPUs (Ray's rule)")
    if pairs_per_worker < 1:
        raise ValueError("--workers must be at least 1")
    address = None if args.ray == LOCAL else args.ray.strip()
    return RayOptions(address, workers, gpus, pairs_per_worker)

"""``python -m labeler.batch``: label a pair manifest into dense preference JSONL.

    python -m labeler.batch MANIFEST.jsonl --out OUT.jsonl [--judge metrics|openai|hf] [...]
    python -m labeler.batch --demo DIR      # build a demo set from real clips, label it, score it

Rerunning with the same --out resumes: pairs already written are skipped, cached judgments are
never requested again, and pairs in OUT.errors.jsonl are retried.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from labeler import fingerprint, jobfiles
from labeler.cascade.options import (
    add_cascade_arguments,
    cascade_rule_from_args,
    cascade_settings,
    cheap_engine,
)
from labeler.cascade.policy import EscalationRule
from labeler.cli_options import (
    EngineSpec,
    UsageError,
    add_engine_arguments,
    add_judge_arguments,
    add_ray_arguments,
    batch_judge_processes,
    ray_options_from_args,
    spec_from_args,
)
from labeler.engine import Engine
from labeler.ledger import Limits
from labeler.preflight import PreflightError
from labeler.runners.batch_lifecycle import BatchWaitOver
from labeler.runners.local import BatchResult, run_batch
from labeler.runners.ray.options import RayOptions
from labeler.schemas import JudgeError

if TYPE_CHECKING:  # the demo package loads only with --demo
    from labeler.demo.build import DemoSet

#: 0 every pair labeled; 1 some pairs failed (see OUT.errors.jsonl); 2 usage error or a file that
#: cannot be used, found before any work (or another run holds --out, or the endpoint is down or
#: refuses the key: labeler.preflight); 3 stopped early (budget spent, the judge rejected
#: FATAL_STREAK_LIMIT pairs in a row, or UNREACHABLE_STREAK_LIMIT pairs in a row could not connect);
#: 130 interrupted.
EXIT_OK, EXIT_FAILED_PAIRS, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m labeler.batch",
        description="Label aligned video pairs segment by segment (A better / B better / tie) and write "
        "dense preference JSONL. Resumable: rerun the same command to continue.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m labeler.batch --demo demo_out/\n"
        "  python -m labeler.batch pairs.jsonl --out labels.jsonl --judge metrics\n"
        "  OPENAI_API_KEY=... python -m labeler.batch pairs.jsonl --out labels.jsonl --judge openai --model gpt-4o-mini\n"
        "  python -m labeler.batch pairs.jsonl --out labels.jsonl --judge openai \\\n"
        "      --base-url http://gpu-box:8000/v1 --model Qwen/Qwen2.5-VL-7B-Instruct --concurrency 32\n",
    )
    p.add_argument("manifest", nargs="?", type=Path, help="pair manifest JSONL (see README: 'Pair manifest')")
    p.add_argument(
        "--out", type=Path, help="dense preference JSONL to write (appended; failures go to OUT.errors.jsonl)"
    )
    p.add_argument(
        "--demo",
        type=Path,
        metavar="DIR",
        help="build the demo set into DIR if missing, label it, and score it against its ground truth",
    )
    p.add_argument(
        "--demo-set",
        choices=("clear", "generated"),
        default=None,
        help="with --demo: 'clear' (default) pairs two copies of a clip with one injected defect; "
        "'generated' renders each side with its own shift, grain and encoding and local, "
        "generation-like artifacts (harder; see docs/metrics_judge.md). Use a fresh DIR per set",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="pairs processed at once (default: concurrency / 2, at least 4)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the requests, images and estimated tokens/cost, then stop without sending anything",
    )
    p.add_argument(
        "--openai-batch",
        action="store_true",
        help="--judge openai: send the uncached requests through the OpenAI Batch API (half price, "
        "hours of latency), then write the records",
    )
    p.add_argument(
        "--batch-poll-seconds",
        type=float,
        default=30.0,
        help="--openai-batch: seconds between status polls (default: %(default)s)",
    )
    p.add_argument(
        "--batch-max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="--openai-batch: input tokens per batch file and at most in flight at once (OpenAI's "
        "enqueued-token limit for your tier); later files are submitted as earlier ones finish",
    )
    p.add_argument(
        "--batch-online-rest",
        action="store_true",
        help="--openai-batch: send the requests no batch answered (failed, expired, cancelled lines, "
        "after the resubmission rounds) online at full price; without it they are left for a rerun "
        "and the run writes only the pairs the batches answered",
    )
    p.add_argument(
        "--batch-max-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="--openai-batch: stop waiting after SECONDS with batches unfinished (exit 3); they go on "
        "at the provider and a rerun of the same command collects them (default: wait until done)",
    )
    p.add_argument(
        "--keep-batch-files",
        action="store_true",
        help="--openai-batch: keep the uploaded input files and the output/error files on the "
        "provider (default: delete them once collected)",
    )
    p.add_argument(
        "--batch-export",
        type=Path,
        metavar="DIR",
        help="--judge openai: write the uncached requests as Batch API JSONL into DIR and stop "
        "(for `vllm run-batch`, docs/endpoints.md)",
    )
    p.add_argument(
        "--batch-import",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="--judge openai: cache the answers of Batch output files (`vllm run-batch -o`), then label",
    )
    p.add_argument(
        "--relabel",
        action="store_true",
        help="when --out holds labels made with other settings (judge, model, --tie-margin, frames per "
        "segment, the cascade and its --escalate-*...; recorded in OUT.settings.json), move it (and a "
        "cascade's OUT.cheap.jsonl) aside as OUT.before-<time>.jsonl and label again; without it such a "
        "rerun is refused. With the same settings a rerun resumes either way",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_judge_arguments(p)
    add_engine_arguments(p)
    add_ray_arguments(p)
    add_cascade_arguments(p)
    return p


def _share(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.0f}%)" if total else "0"


@dataclass(frozen=True)
class BatchApiOptions:
    """``--batch-online-rest`` and ``--keep-batch-files``."""

    online_rest: bool = False
    keep_files: bool = False
    max_wait: float | None = None


def format_summary(result: BatchResult, engine: Engine, out: Path) -> str:
    s = engine.stats.as_dict()
    total = sum(result.labels.values())
    rate = result.segments / result.seconds if result.seconds else 0.0
    flip = "n/a" if s["flip_rate"] is None else f"{100 * s['flip_rate']:.1f}%"
    lines = [
        f"pairs      {result.ok} labeled, {result.failed} failed, {result.skipped} already done "
        f"(manifest: {result.manifest_pairs})"
        + (f"; {result.relabelled} labelled again: prompt or videos changed" if result.relabelled else ""),
        f"segments   {result.segments}  A {_share(result.labels['A'], total)}  B {_share(result.labels['B'], total)}"
        f"  tie {_share(result.labels['tie'], total)}",
        f"time       {result.seconds:.1f} s ({rate:.1f} segment pairs/s)",
        f"judge      {engine.judge.name}"
        + (f" {engine.judge.model}" if engine.judge.model else "")
        + f"; requests {s['requests']}, cache hits {s['cache_hits']}, retries {s['retries']}, order flips {flip}",
        f"tokens     in {s['input_tokens']} ({s['cached_input_tokens']} cached), out {s['output_tokens']}, "
        f"estimated cost ${s['cost_usd']:.4f}",
        f"labels  -> {out}",
    ]
    if fallbacks := engine.judge.endpoint_fallbacks():
        lines.insert(
            -1, f"fallbacks  the endpoint refused {', '.join(fallbacks)}: sent without (docs/endpoints.md)"
        )
    if result.failed:
        lines.append(f"errors  -> {result.errors_file}")
        lines += [f"  {pid}: {msg[:200]}" for pid, msg in result.failures[:5]]
        if result.failed > 5:
            lines.append(f"  ... and {result.failed - 5} more")
    if result.stopped:
        lines.append(f"STOPPED    {result.stopped} - rerun the same command to continue")
    return "\n".join(lines)


def _report_demo(out: Path, ground_truth: Path, report_dir: Path) -> None:
    """Score the demo's labels against its injected ground truth and print the headline."""
    from labeler.agreement.compute import compute_agreement, headline, write_report
    from labeler.schemas import read_records

    agreement = compute_agreement(read_records(out), [read_records(ground_truth)])
    paths = write_report(agreement, report_dir)
    print("\nagreement with the demo's injected ground truth:")
    print(headline(agreement))
    print(f"report  -> {paths.get('report', report_dir)}")


async def _label(
    manifest: Path,
    out: Path,
    engine: Engine,
    workers: int,
    quiet: bool,
    *,
    openai_batch_poll: float | None = None,
    batch_max_tokens: int | None = None,
    batch_import: list[Path] | None = None,
    batch_options: BatchApiOptions = BatchApiOptions(),
) -> BatchResult:
    """One event loop for the whole job (the engine's semaphores and HTTP clients belong to it)."""
    try:
        if batch_import:
            from labeler.runners.batch_import import import_batch_outputs, planned_keys

            expected = await planned_keys(manifest, out, engine)
            imported = await asyncio.to_thread(import_batch_outputs, batch_import, engine, expected)
            print(imported.summary(len(expected)))
        if openai_batch_poll is not None:
            from labeler.runners.batch_api import prefill_with_batch_api

            report = await prefill_with_batch_api(
                manifest,
                out,
                engine,
                poll_seconds=openai_batch_poll,
                max_tokens=batch_max_tokens,
                progress=print,
                keep_files=batch_options.keep_files,
                max_wait=batch_options.max_wait,
            )
            if (report.left or report.capped) and not batch_options.online_rest:
                # Nothing goes online unasked: the run labels from the cache only.
                engine.ledger.budget = Limits(
                    max_requests=engine.stats.requests, max_cost=engine.config.max_cost
                )
                print(
                    f"openai batch: {len(report.left) + report.capped} requests have no answer; they are "
                    "not sent online (full price) without --batch-online-rest. Rerun with --openai-batch "
                    "to submit them again."
                )
        return await run_batch(manifest, out, engine, workers=workers, progress=not quiet)
    finally:
        await engine.aclose()


async def _label_cascade(
    manifest: Path, out: Path, args: argparse.Namespace, engine: Engine, rule: EscalationRule, workers: int
) -> BatchResult:
    """The cascade's two passes (labeler.cascade.runner); prints its summary lines."""
    from labeler.cascade.runner import format_cascade, run_cascade

    processes = batch_judge_processes(manifest, demo=args.demo is not None, ray=False)
    cheap = cheap_engine(engine, args.cascade_from, processes=processes)
    try:
        result = await run_cascade(
            manifest, out, cheap, engine, rule, workers=workers, progress=not args.quiet
        )
    finally:
        await cheap.aclose()
        await engine.aclose()
    print(format_cascade(result))
    return result.final


def _export(manifest: Path, out: Path, engine: Engine, directory: Path) -> int:
    from labeler.runners.batch_api import export_batch_files

    async def export() -> list[Path]:
        try:
            return await export_batch_files(manifest, out, engine, directory)
        finally:
            await engine.aclose()

    paths = asyncio.run(export())
    print(f"batch export: {len(paths)} file(s) in {directory}; e.g. vllm run-batch -i FILE -o FILE.out.jsonl "
          f"--model {engine.judge.model}, then rerun with --batch-import")  # fmt: skip
    return EXIT_OK


def _check_manifest(manifest: Path) -> None:
    if manifest.is_dir():
        raise UsageError(f"manifest {manifest} is a directory, not a JSONL file")
    if not manifest.is_file():
        raise UsageError(f"manifest not found: {manifest}")


def _check_args(args: argparse.Namespace) -> None:
    """Every check that needs no work: raises UsageError (or ValueError) with a one-line message."""
    if args.demo is None and (args.manifest is None or (args.out is None and not args.dry_run)):
        raise UsageError("give MANIFEST and --out (--out is optional with --dry-run), or --demo DIR")
    if args.demo_set is not None and args.demo is None:
        raise UsageError("--demo-set needs --demo DIR")
    if args.manifest is not None:
        _check_manifest(args.manifest)
    if (args.openai_batch or args.batch_export or args.batch_import) and args.judge != "openai":
        raise UsageError("--openai-batch, --batch-export and --batch-import need --judge openai")
    if args.batch_import:
        from labeler.runners.batch_import import check_import_paths

        check_import_paths(args.batch_import)
    if (args.batch_online_rest or args.keep_batch_files or args.batch_max_wait is not None) and (
        not args.openai_batch
    ):
        raise UsageError("--batch-online-rest, --batch-max-wait and --keep-batch-files need --openai-batch")
    if args.batch_max_wait is not None and not (args.batch_max_wait >= 0 and args.batch_max_wait < 1e9):
        raise UsageError(f"--batch-max-wait must be a number of seconds >= 0, got {args.batch_max_wait}")
    if args.batch_max_tokens is not None and (args.batch_max_tokens < 1 or not args.openai_batch):
        raise UsageError("--batch-max-tokens needs --openai-batch and a positive number of tokens")
    if args.out is not None and not args.dry_run:
        jobfiles.check_output_path(args.out, args.manifest)


def _run(
    args: argparse.Namespace,
    engine: Engine,
    spec: EngineSpec,
    manifest: Path,
    out: Path,
    ray_options: RayOptions | None,
    cascade: EscalationRule | None = None,
) -> BatchResult | int:
    """The labeling itself, holding the output's lock; an int is an exit code."""
    from labeler.runners.batch_api import BatchApiUnavailable

    workers = args.workers or max(4, engine.config.concurrency // 2)
    poll = args.batch_poll_seconds if args.openai_batch else None
    settings = fingerprint.job_settings(
        engine, None if cascade is None else cascade_settings(args.cascade_from, cascade)
    )
    try:
        with jobfiles.lock_output(out):
            for aside in fingerprint.settle(out, settings, relabel=args.relabel):
                print(f"relabel    kept aside -> {aside}", file=sys.stderr)
            if cascade is not None and ray_options is not None:
                from labeler.cascade.ray import run_cascade_on_ray
                from labeler.cascade.runner import format_cascade

                actors = replace(spec, judge=ray_options.judge_for_actors(spec.judge))
                outcome = run_cascade_on_ray(
                    manifest, out, actors, engine, ray_options, cascade, args.cascade_from, quiet=args.quiet
                )
                print(format_cascade(outcome))
                return outcome.final
            if cascade is not None:
                return asyncio.run(_label_cascade(manifest, out, args, engine, cascade, workers))
            if ray_options is not None:
                from labeler.runners.ray.ray_runner import describe_workers, label_on_ray

                actors = replace(spec, judge=ray_options.judge_for_actors(spec.judge))
                run = label_on_ray(manifest, out, actors, engine, ray_options, args.quiet)
                if run.workers:
                    print(describe_workers(run), file=sys.stderr)
                return run.result
            return asyncio.run(
                _label(
                    manifest,
                    out,
                    engine,
                    workers,
                    args.quiet,
                    openai_batch_poll=poll,
                    batch_max_tokens=args.batch_max_tokens,
                    batch_import=args.batch_import,
                    batch_options=BatchApiOptions(
                        args.batch_online_rest, args.keep_batch_files, args.batch_max_wait
                    ),
                )
            )
    except KeyboardInterrupt:
        print(
            "\ninterrupted: every finished pair is saved; rerun the same command to resume", file=sys.stderr
        )
        return 130
    except BatchWaitOver as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except (ValueError, jobfiles.OutputInUseError, BatchApiUnavailable) as exc:  # not ours, in use...
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _sigterm_as_interrupt(_signum: int, _frame: object) -> None:
    # SIGTERM's default ends the process without any clean-up: the judge's worker processes, its
    # shared memory and the output's last line were left to chance. As SIGINT, it stops the run the
    # way Ctrl-C does (asyncio cancels the work, every finally runs, exit 130).
    os.kill(os.getpid(), signal.SIGINT)


def _spec(args: argparse.Namespace) -> EngineSpec:
    """The engine spec of the flags, with the batch CLI's own default for --judge-processes."""
    spec = spec_from_args(args)
    if spec.judge.judge == "metrics" and spec.judge.judge_processes is None:
        # Worker processes pay for themselves on runs of many pairs; a demo or a handful of pairs
        # is done before they would have started. On Ray, each actor is a process already.
        processes = batch_judge_processes(args.manifest, demo=args.demo is not None, ray=args.ray is not None)
        spec = replace(spec, judge=replace(spec.judge, judge_processes=processes))
    return spec


def _inputs(args: argparse.Namespace) -> tuple[Path, Path, DemoSet | None]:
    """MANIFEST and --out, or the demo set's (built into --demo DIR if missing) and the demo."""
    if args.demo is None:
        return args.manifest, args.out, None
    from labeler.demo.build import build_demo
    from labeler.demo.generated import build_generated

    demo = build_generated(args.demo) if args.demo_set == "generated" else build_demo(args.demo)
    print(f"demo set   {demo.pairs} pairs, {demo.segments} segments -> {demo.manifest}", file=sys.stderr)
    return demo.manifest, args.out or Path(args.demo) / "labels.jsonl", demo


def _preflight(engine: Engine) -> bool:
    """The judge's check before any work (a zero budget sends nothing: the cache alone is used);
    False, said on stderr, when it fails."""
    if engine.config.max_requests == 0:
        return True
    try:
        engine.judge.preflight()
    except PreflightError as exc:
        asyncio.run(engine.aclose())
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_args(args)
        cascade = cascade_rule_from_args(args)
        spec = _spec(args)
        engine = spec.build()
    except (UsageError, ValueError, JudgeError) as exc:  # bad options or files, unknown prompt, no model...
        parser.error(str(exc))
    workers = args.workers or max(4, engine.config.concurrency // 2)
    try:
        ray_options = ray_options_from_args(args, workers)
    except ValueError as exc:
        parser.error(str(exc))
    manifest, out, demo = _inputs(args)
    if args.dry_run:
        from labeler.dryrun import dry_run

        print(dry_run(manifest, engine))
        return EXIT_OK
    if args.batch_export is not None:
        return _export(manifest, out, engine, args.batch_export)
    if not _preflight(engine):
        return EXIT_USAGE
    result = _run(args, engine, spec, manifest, out, ray_options, cascade)
    if isinstance(result, int):
        return result
    print(format_summary(result, engine, out))
    if demo is not None:
        _report_demo(out, demo.ground_truth, Path(args.demo) / "agreement")
    if result.stopped:
        return EXIT_STOPPED
    return EXIT_FAILED_PAIRS if result.failed else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

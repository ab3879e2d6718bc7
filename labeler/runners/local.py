"""Run the engine over a manifest: resumable, one bad pair never costs the others.

Pairs already in the output are skipped; each finished pair is appended and flushed at once (in
completion order, ``pair_id`` joins); a pair that fails becomes a line of ``OUT.errors.jsonl`` and
is retried by the next run; a spent budget stops the run cleanly with everything so far kept.
``JobFiles`` is that bookkeeping on its own, shared by this one-process runner and the Ray runner
(``labeler.runners.ray``), so both write OUT the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from labeler import jobfiles
from labeler.engine import BudgetExceeded, Engine
from labeler.fileio import repair_jsonl_tail
from labeler.schemas import (
    DensePreferenceRecord,
    FatalJudgeError,
    JudgeError,
    ManifestEntry,
    ManifestLineError,
    iter_manifest,
)

#: After this many pairs in a row fail with a FatalJudgeError (bad key, unknown model...), stop.
#: Only judge faults count: bad input (a broken video, frames too small) fails its pair alone and
#: neither counts nor resets the streak, so a run never stops on a stretch of bad pairs.
FATAL_STREAK_LIMIT = 5

#: What a failure says about the judge: "fatal" (it rejected us: counts toward the streak),
#: "judge" (it answered, badly: it is reachable, the streak resets), "input" (not the judge's doing).
FailureKind = Literal["fatal", "judge", "input"]


def failure_kind(exc: BaseException) -> FailureKind:
    if isinstance(exc, FatalJudgeError):
        return "fatal"
    return "judge" if isinstance(exc, JudgeError) else "input"


@dataclass
class BatchResult:
    manifest_pairs: int = 0
    skipped: int = 0  # already in the output before this run
    ok: int = 0
    failed: int = 0
    segments: int = 0
    labels: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    stopped: str | None = None  # why the run stopped early, if it did
    errors_file: Path | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)  # (pair_id, "Type: message")


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, unit="pair", desc="labeling", disable=not enabled, dynamic_ncols=True
    )


class JobFiles:
    """OUT, OUT.errors.jsonl, the progress bar and the counters of one run; one outcome at a time."""

    def __init__(self, out: str | Path, *, progress: bool = True):
        self.out = Path(out)
        self.started = time.perf_counter()
        self.done = jobfiles.prepare_output(self.out)
        self.errors_path = jobfiles.errors_path_for(self.out)
        repair_jsonl_tail(self.errors_path)
        self.previous = jobfiles.read_error_log(self.errors_path)
        self.records = jobfiles.RecordWriter(self.out)
        self.errors = jobfiles.RecordWriter(self.errors_path)
        self.result = BatchResult(errors_file=self.errors_path)
        self.manifest_errors: set[jobfiles.ErrorKey] = set()
        self.progress = progress
        self.bar = None
        self.fatal_streak = 0

    def todo(self, manifest: str | Path) -> list[ManifestEntry]:
        """The manifest's pairs not yet in OUT (bad lines are recorded as failures); starts the bar."""
        todo: list[ManifestEntry] = []
        for item in iter_manifest(manifest):
            self.result.manifest_pairs += 1
            if isinstance(item, ManifestLineError):
                self.fail(item.pair_id, (item.type, item.message), item.line)
            elif item.pair_id in self.done:
                self.result.skipped += 1
            else:
                todo.append(item)
        self.bar = _progress(self.result.manifest_pairs, self.result.skipped, self.progress)
        return todo

    def fail(self, pair_id: str, exc: BaseException | tuple[str, str], line: int | None = None) -> None:
        prior = self.previous.get((pair_id, line))
        rec = jobfiles.error_record(pair_id, exc, (prior.attempts if prior else 0) + 1, line)
        self.errors.write(rec)
        if line is not None:
            self.manifest_errors.add((pair_id, line))
        self.result.failed += 1
        self.result.failures.append((pair_id, f"{rec.error.type}: {rec.error.message}"))

    def pair_failed(self, pair_id: str, exc: BaseException | tuple[str, str], *, kind: FailureKind) -> bool:
        """Record a pair that failed; True once ``FATAL_STREAK_LIMIT`` fatal failures in a row stop the run."""
        self.fail(pair_id, exc)
        if kind == "fatal":
            self.fatal_streak += 1
        elif kind == "judge":  # the judge answered (badly): it is reachable
            self.fatal_streak = 0
        if self.fatal_streak >= FATAL_STREAK_LIMIT:
            message = exc[1] if isinstance(exc, tuple) else exc
            self.result.stopped = f"the judge rejected {self.fatal_streak} pairs in a row, last: {message}"
            return True
        return False

    def pair_done(self, record: DensePreferenceRecord) -> None:
        self.fatal_streak = 0
        self.records.write(record)
        self.done.add(record.pair_id)
        self.result.ok += 1
        self.result.segments += len(record.segments)
        self.result.labels.update(record.labels)

    def tick(self, cache_hits: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(ok=self.result.ok, failed=self.result.failed, hits=cache_hits, refresh=False)

    def close(self) -> BatchResult:
        if self.bar is not None:
            self.bar.close()
        self.records.close()
        self.errors.close()
        jobfiles.compact_errors(self.errors_path, self.done, self.manifest_errors)
        self.result.seconds = time.perf_counter() - self.started
        return self.result


#: How one pair becomes its record: ``Engine.label_pair`` unless a caller labels otherwise (the
#: cascade, labeler.cascade, merges a cheap judge's record with the main judge's segments).
PairLabeler = Callable[[ManifestEntry], Awaitable[DensePreferenceRecord]]


async def run_batch(
    manifest: str | Path,
    out: str | Path,
    engine: Engine,
    *,
    workers: int = 4,
    progress: bool = True,
    label: PairLabeler | None = None,
) -> BatchResult:
    """Label every pair of ``manifest`` not yet in ``out``; returns what happened. ``label`` replaces
    ``engine.label_pair`` (``engine`` still owns the budget and the counters)."""
    label_pair = label or engine.label_pair
    job = JobFiles(out, progress=progress)
    queue = iter(job.todo(manifest))
    stop = asyncio.Event()

    async def worker() -> None:
        for entry in queue:
            if stop.is_set():
                return
            try:
                record = await label_pair(entry)
            except BudgetExceeded as exc:
                job.result.stopped = str(exc)
                stop.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of this pair is recorded for it and the run goes on
                if job.pair_failed(entry.pair_id, exc, kind=failure_kind(exc)):
                    stop.set()
            else:
                job.pair_done(record)
            job.tick(engine.stats.cache_hits)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, workers))))
    finally:
        job.close()
    return job.result

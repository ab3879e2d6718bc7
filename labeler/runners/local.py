"""Run the engine over a manifest: resumable, one bad pair never costs the others.

Pairs already in the output are skipped; each finished pair is appended and flushed at once (in
completion order, ``pair_id`` joins); a pair that fails becomes a line of ``OUT.errors.jsonl`` and
is retried by the next run; a spent budget stops the run cleanly with everything so far kept.
``JobFiles`` (``labeler.jobfiles``) is that bookkeeping on its own, shared by this one-process
runner and the Ray runner (``labeler.runners.ray``), so both write OUT the same way; it is
re-exported here with ``BatchResult`` and ``failure_kind``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from labeler.engine import BudgetExceeded, Engine
from labeler.jobfiles import (
    FATAL_STREAK_LIMIT,
    UNREACHABLE_STREAK_LIMIT,
    BatchResult,
    ContentOf,
    FailureKind,
    JobFiles,
    failure_kind,
)
from labeler.schemas import DensePreferenceRecord, ManifestEntry

#: How one pair becomes its record: ``Engine.label_pair`` unless a caller labels otherwise (the
#: cascade, labeler.cascade, merges a cheap judge's record with the main judge's segments).
PairLabeler = Callable[[ManifestEntry], Awaitable[DensePreferenceRecord]]

__all__ = [
    "FATAL_STREAK_LIMIT",
    "UNREACHABLE_STREAK_LIMIT",
    "BatchResult",
    "ContentOf",
    "FailureKind",
    "JobFiles",
    "PairLabeler",
    "failure_kind",
    "run_batch",
]


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
    todo = job.todo(manifest, engine.content_hashes)
    queue = iter(todo)
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
        # More workers than pairs would only idle (and --concurrency 1e8 would make 5e7 of them).
        await asyncio.gather(*(worker() for _ in range(max(1, min(workers, len(todo))))))
    finally:
        job.close()
    return job.result

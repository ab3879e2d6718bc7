"""Run the engine over a manifest: resumable, one bad pair never costs the others.

Pairs already in the output are skipped; each finished pair is appended and flushed at once (in
completion order, ``pair_id`` joins); a pair that fails becomes a line of ``OUT.errors.jsonl`` and
is retried by the next run; a spent budget stops the run cleanly with everything so far kept.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from labeler import jobfiles
from labeler.engine import BudgetExceeded, Engine
from labeler.fileio import repair_jsonl_tail
from labeler.schemas import FatalJudgeError, JudgeError, ManifestEntry, ManifestLineError, iter_manifest

#: After this many pairs in a row fail with a FatalJudgeError (bad key, unknown model...), stop.
#: Only judge faults count: bad input (a broken video, frames too small) fails its pair alone and
#: neither counts nor resets the streak, so a run never stops on a stretch of bad pairs.
FATAL_STREAK_LIMIT = 5


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


async def run_batch(
    manifest: str | Path, out: str | Path, engine: Engine, *, workers: int = 4, progress: bool = True
) -> BatchResult:
    """Label every pair of ``manifest`` not yet in ``out``; returns what happened."""
    out = Path(out)
    started = time.perf_counter()
    done = jobfiles.prepare_output(out)
    errors_path = jobfiles.errors_path_for(out)
    repair_jsonl_tail(errors_path)
    previous = jobfiles.read_error_log(errors_path)
    records, errors = jobfiles.RecordWriter(out), jobfiles.RecordWriter(errors_path)
    result = BatchResult(errors_file=errors_path)
    manifest_errors: set[jobfiles.ErrorKey] = set()

    def fail(pair_id: str, exc: BaseException | tuple[str, str], line: int | None = None) -> None:
        prior = previous.get((pair_id, line))
        rec = jobfiles.error_record(pair_id, exc, (prior.attempts if prior else 0) + 1, line)
        errors.write(rec)
        if line is not None:
            manifest_errors.add((pair_id, line))
        result.failed += 1
        result.failures.append((pair_id, f"{rec.error.type}: {rec.error.message}"))

    todo: list[ManifestEntry] = []
    for item in iter_manifest(manifest):
        result.manifest_pairs += 1
        if isinstance(item, ManifestLineError):
            fail(item.pair_id, (item.type, item.message), item.line)
        elif item.pair_id in done:
            result.skipped += 1
        else:
            todo.append(item)

    bar = _progress(result.manifest_pairs, result.skipped, progress)
    queue = iter(todo)
    fatal_streak = 0
    stop = asyncio.Event()

    async def worker() -> None:
        nonlocal fatal_streak
        for entry in queue:
            if stop.is_set():
                return
            try:
                record = await engine.label_pair(entry)
            except BudgetExceeded as exc:
                result.stopped = str(exc)
                stop.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of this pair is recorded for it and the run goes on
                fail(entry.pair_id, exc)
                if isinstance(exc, FatalJudgeError):
                    fatal_streak += 1
                elif isinstance(exc, JudgeError):  # the judge answered (badly): it is reachable
                    fatal_streak = 0
                if fatal_streak >= FATAL_STREAK_LIMIT:
                    result.stopped = f"the judge rejected {fatal_streak} pairs in a row, last: {exc}"
                    stop.set()
            else:
                fatal_streak = 0
                records.write(record)
                done.add(entry.pair_id)
                result.ok += 1
                result.segments += len(record.segments)
                result.labels.update(record.labels)
            bar.update(1)
            bar.set_postfix(ok=result.ok, failed=result.failed, hits=engine.stats.cache_hits, refresh=False)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, workers))))
    finally:
        bar.close()
        records.close()
        errors.close()
        jobfiles.compact_errors(errors_path, done, manifest_errors)
        result.seconds = time.perf_counter() - started
    return result

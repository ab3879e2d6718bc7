"""``--batch-import``: Batch output files (``vllm run-batch -o``) into the judgment cache, checked.

An import file is input from outside the run, so every line is checked before it is cached:

- each line is read with a bounded size (:data:`MAX_LINE_BYTES`): a huge line is one error, not
  gigabytes of memory; a line that is not JSON, not an object, or lacks its fields is an error
  naming the file and line; the other lines go on;
- its ``custom_id`` must be a string and one of the cache keys the current plan asks for (the
  manifest's pairs not yet in the output, with the current judge settings): a foreign id (another
  manifest, other settings that change the key), or one already answered earlier in this import,
  is rejected, and the report says how many lines matched the plan;
- the answer must come from the judge's model (``response.body.model``), and its ``usage`` must
  be real counts (labeler.judges.usage);
- nothing is billed: the answers were computed on the user's own GPU (``vllm run-batch``).

Missing files, folders and anything but a regular file are refused before any work
(:func:`check_import_paths`, exit 2).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from labeler import jobfiles
from labeler.engine import Engine
from labeler.errors import JudgeError, UsageError
from labeler.media.video import VideoError
from labeler.schemas import ManifestEntry, iter_manifest

__all__ = ["MAX_LINE_BYTES", "ImportReport", "check_import_paths", "import_batch_outputs", "planned_keys"]

log = logging.getLogger(__name__)

#: A Batch output line holds one chat.completion: a few kB of text and logprobs. 16 MiB leaves room
#: for any real answer and bounds what one hostile line can cost.
MAX_LINE_BYTES = 16 * 2**20
#: Per-line errors printed in full; the rest are counted.
SHOWN_ERRORS = 10


@dataclass
class ImportReport:
    lines: int = 0  # non-blank lines read
    matched: int = 0  # lines whose custom_id the current plan asks for
    answered: int = 0  # answers cached
    rejected: Counter[str] = field(default_factory=Counter)  # reason -> lines
    errors: list[str] = field(default_factory=list)  # the first SHOWN_ERRORS, "file:line: reason"

    def reject(self, where: str, reason: str, detail: str = "") -> None:
        self.rejected[reason] += 1
        if len(self.errors) < SHOWN_ERRORS:
            self.errors.append(f"{where}: {reason}{': ' + detail if detail else ''}")

    @property
    def unusable(self) -> int:
        return sum(self.rejected.values())

    def summary(self, planned: int) -> str:
        lines = [
            f"batch import: {self.lines} lines, {self.matched} match the current plan "
            f"({planned} requests planned), {self.answered} answers cached, not billed"
        ]
        if self.rejected:
            lines.append("  rejected: " + ", ".join(f"{n} {why}" for why, n in self.rejected.most_common()))
            lines += [f"  {e}" for e in self.errors]
        return "\n".join(lines)


def check_import_paths(paths: Iterable[Path]) -> None:
    """UsageError (exit 2) for a path that is missing or not a regular file."""
    for path in paths:
        if not path.exists():
            raise UsageError(f"--batch-import: {path} does not exist")
        if path.is_dir():
            raise UsageError(
                f"--batch-import: {path} is a directory; give the output files (e.g. jobs/out-*.jsonl)"
            )
        if not path.is_file():
            raise UsageError(f"--batch-import: {path} is not a regular file")


def _bounded_lines(path: Path, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line; None for a line over ``max_bytes`` (skipped, not held)."""
    with path.open("rb") as fh:
        number = 0
        while True:
            chunk = fh.readline(max_bytes + 1)
            if not chunk:
                return
            number += 1
            if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
                while chunk and not chunk.endswith(b"\n"):  # drop the rest of the line, in pieces
                    chunk = fh.readline(max_bytes)
                yield number, None
                continue
            yield number, chunk


async def planned_keys(manifest: str | Path, out: str | Path, engine: Engine) -> set[str]:
    """Cache keys of every (segment, order) request of the manifest's pairs not yet in ``out``,
    with the current judge settings (no frame is decoded: the keys come from the plan)."""
    import asyncio

    done = jobfiles.prepare_output(out)
    keys: set[str] = set()
    for entry in iter_manifest(manifest):
        if not isinstance(entry, ManifestEntry) or entry.pair_id in done:
            continue
        try:
            plan = await asyncio.to_thread(engine.plan_pair, entry)
        except (VideoError, ValueError) as exc:
            log.warning("%s: not planned for the import (%s)", entry.pair_id, exc)
            continue
        for seg in plan.segments:
            keys.update(seg.keys.values())
    return keys


def _line_for_plan(raw: bytes, expected: set[str]) -> tuple[dict, str] | tuple[str, str]:
    """(the line, its custom_id) when the line is JSON whose custom_id is in the current plan;
    else (why it is rejected, the detail)."""
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return "not JSON", str(exc)[:120]
    key = line.get("custom_id") if isinstance(line, dict) else None
    if not isinstance(key, str):
        return "no custom_id string", repr(key)[:80]
    if key not in expected:
        return "custom_id not in the current plan", key[:80]
    return line, key


def import_batch_outputs(
    paths: Iterable[Path], engine: Engine, expected: set[str], *, max_line_bytes: int = MAX_LINE_BYTES
) -> ImportReport:
    """Cache the checked answers of Batch output files (see the module doc); nothing is billed."""
    report = ImportReport()
    answered: set[str] = set()  # a failed line does not block a later answer for its key
    model = engine.judge.model
    for path in paths:
        for number, raw in _bounded_lines(path, max_line_bytes):
            where = f"{path}:{number}"
            if raw is None:
                report.lines += 1
                report.reject(where, "line too long", f"over {max_line_bytes:,} bytes")
                continue
            if not raw.strip():
                continue
            report.lines += 1
            parsed = _line_for_plan(raw, expected)
            if not isinstance(parsed[0], dict):
                report.reject(where, parsed[0], parsed[1])
                continue
            line, key = parsed
            report.matched += 1
            if key in answered:
                report.reject(where, "duplicate custom_id", f"{key[:80]} (already answered above)")
                continue
            response = line.get("response")
            body = response.get("body") if isinstance(response, dict) else None
            if (
                not isinstance(response, dict)
                or response.get("status_code") != 200
                or not isinstance(body, dict)
            ):
                error = line.get("error") if isinstance(line, dict) else None
                report.reject(where, "failed request", str(error)[:120])
                continue
            if model and body.get("model") != model:
                report.reject(where, "answered by another model", f"{body.get('model')!r}, not {model!r}")
                continue
            try:
                judgment = engine.judge.parse_body(body)
            except (JudgeError, ValueError, TypeError, KeyError) as exc:
                report.reject(where, "unusable answer", str(exc)[:120])
                continue
            engine.cache.set(key, judgment)  # self-hosted: not billed
            answered.add(key)
            report.answered += 1
    return report

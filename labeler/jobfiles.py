"""Output and error files of a labeling job, written so a killed job resumes exactly.

Records are appended one line at a time and flushed, so a ``kill -9`` can at worst leave the last
line cut short; ``prepare_output`` cuts that tail off before a rerun appends, and returns the pair
ids already done so they are skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from labeler.schemas import ErrorInfo, ErrorRecord


def errors_path_for(out: str | Path) -> Path:
    """``OUT.jsonl`` -> ``OUT.errors.jsonl`` (DESIGN §2.3)."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".errors.jsonl")


def _repair_tail(path: Path) -> None:
    """Drop a last line that a killed writer left incomplete (no newline and not valid JSON)."""
    with path.open("rb+") as fh:
        data = fh.read()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
        except ValueError:
            fh.truncate(cut)
        else:  # complete record that only lacks its newline
            fh.write(b"\n")


def prepare_output(path: str | Path) -> set[str]:
    """Create the output's folder, repair a cut-off last line, and return the pair ids done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return set()
    _repair_tail(path)
    done: set[str] = set()
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                done.add(json.loads(line)["pair_id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{lineno} is not a dense preference record ({exc}); move the file away or fix that line"
                ) from exc
    return done


def read_errors(path: str | Path) -> dict[str, ErrorRecord]:
    """The last error record of each pair in an errors file (bad lines are skipped: it is a log)."""
    path = Path(path)
    out: dict[str, ErrorRecord] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = ErrorRecord.model_validate_json(line)
        except ValueError:
            continue
        out[rec.pair_id] = rec
    return out


def compact_errors(path: str | Path, done: set[str]) -> int:
    """Rewrite the errors file with one line per pair that still fails; returns how many."""
    path = Path(path)
    if not path.exists():
        return 0
    remaining = [r for pid, r in read_errors(path).items() if pid not in done]
    if not remaining:
        path.unlink()
        return 0
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(r.model_dump_json() + "\n" for r in remaining), encoding="utf-8")
    os.replace(tmp, path)
    return len(remaining)


def error_record(
    pair_id: str, exc: BaseException | tuple[str, str], attempts: int, line: int | None = None
) -> ErrorRecord:
    etype, message = exc if isinstance(exc, tuple) else (type(exc).__name__, str(exc) or repr(exc))
    return ErrorRecord(
        pair_id=pair_id, error=ErrorInfo(type=etype, message=message), attempts=attempts, line=line
    )


class JsonlAppender:
    """Append pydantic models as JSON lines, flushing each so a killed process loses at most one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: IO[str] | None = None

    def write(self, record: BaseModel) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(record.model_dump_json(exclude_none=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

"""Output and error files of a labeling job, written so a killed job resumes exactly.

Records are appended one line at a time and flushed (:class:`labeler.fileio.JsonlWriter`), so a
``kill -9`` can at worst leave the last line cut short; ``prepare_output`` cuts that tail off before
a rerun appends, checks that every other line is a dense preference record (an ``--out`` that is a
manifest or someone else's JSONL is refused, never appended to), and returns the pair ids already
done so they are skipped. ``lock_output`` keeps a second job off the same output. :class:`JobFiles`
is all of it for one run (OUT, OUT.errors.jsonl, the progress bar, the counters), shared by the
local and the Ray runner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from labeler.errors import OutputInUseError
from labeler.fileio import JsonlWriter, atomic_write_lines, iter_jsonl, repair_jsonl_tail
from labeler.record_paths import portable
from labeler.schemas import (
    DensePreferenceRecord,
    EndpointUnreachable,
    ErrorInfo,
    ErrorRecord,
    FatalJudgeError,
    JudgeError,
    ManifestEntry,
    ManifestLineError,
    iter_manifest,
)


def _check_existing_output(out: Path, flag: str) -> None:
    """ValueError unless ``out`` is missing or one regular file with one name."""
    if out.is_dir():
        raise ValueError(f"{flag} is a directory; give a .jsonl file path")
    try:
        st = out.stat()
    except OSError:
        return  # not there yet (or a dangling link: the write check says so)
    if not stat.S_ISREG(st.st_mode):
        # /dev/null would take OUT.lock beside it, /dev/zero reads forever, a FIFO blocks the open
        raise ValueError(f"{flag} is not a regular file (a device, FIFO or socket); give a .jsonl file path")
    if st.st_nlink > 1:
        # The lock is OUT.lock, by name: a second name of the same file would take another lock
        raise ValueError(
            f"{flag} has {st.st_nlink} names (hard links): a run on another name would write it at the "
            "same time; copy it (cp) to give it a name of its own"
        )


def check_output_path(out: Path, manifest: Path | None) -> None:
    """Raise ValueError (one line) unless a job can write ``out`` and its errors and lock files:
    checked before any work, so a bad --out never costs a judged pair."""
    flag = f"--out {out}"
    _check_existing_output(out, flag)
    folder = out.parent
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(f"{flag}: {ancestor} is a file, not a folder")
            break
    if manifest is not None and any(_same_file(p, manifest) for p in (out, errors_path_for(out))):
        raise ValueError(f"{flag} is the manifest itself; the labels need a file of their own")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if out.exists():
            with out.open("ab"):
                pass
        with tempfile.TemporaryFile(dir=folder, prefix=".densepref-write-check."):
            pass  # a real write: os.access() says yes to root on a read-only file system
    except OSError as exc:
        raise ValueError(f"{flag}: cannot write there ({exc.strerror})") from None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def errors_path_for(out: str | Path) -> Path:
    """``OUT.jsonl`` -> ``OUT.errors.jsonl`` (docs/contracts.md)."""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(stem + ".errors.jsonl")


def lock_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


@contextlib.contextmanager
def lock_output(out: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``OUT.lock`` for the whole job, or raise OutputInUseError at once.

    ``flock`` belongs to the open file, so the kernel drops it when the process dies, even by
    ``kill -9``: a stale lock file never blocks a rerun. The file is left in place, since removing
    it would let a third job lock a fresh inode while a second still waits on the old one.
    """
    path = lock_path_for(out)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUseError(
                f"{out} is being written by another labeler.batch run (it holds {path}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user
        yield path
    finally:
        os.close(fd)  # releases the lock


_RECORD_FIELDS = frozenset(DensePreferenceRecord.model_fields)


@dataclass(frozen=True)
class DonePair:
    """What a rerun compares of a pair already in OUT: the prompt and the files' content hashes."""

    prompt: str | None = None
    video_sha256: dict[str, str] | None = None


def _done_of(path: Path, lineno: int, text: str, *, full: bool) -> tuple[str, DonePair]:
    """The pair_id of an output line, refusing a line that is not a dense preference record.

    The first line is validated in full; the others by shape (an object with the record's keys,
    segments and labeler), which is what tells a record from a manifest line or any other JSONL at a
    tenth of the cost: a resume reads every line of what may be a large file."""
    problem: str | None
    try:
        if full:
            rec = DensePreferenceRecord.model_validate_json(text)
            return rec.pair_id, DonePair(rec.prompt, rec.video_sha256)
        obj = json.loads(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        problem = f"{'.'.join(str(x) for x in first['loc']) or '<record>'}: {first['msg']}"
    except ValueError as exc:
        problem = f"invalid JSON: {exc}"
    else:
        problem = _shape_problem(obj)
        if problem is None:
            prompt, hashes = obj.get("prompt"), obj.get("video_sha256")
            return str(obj["pair_id"]), DonePair(
                prompt if isinstance(prompt, str) else None,
                {str(k): str(v) for k, v in hashes.items()} if isinstance(hashes, dict) else None,
            )
    raise ValueError(
        f"{path}:{lineno} is not a dense preference record ({problem}); --out must be an output file of "
        "labeler.batch: move the file away or choose another --out"
    )


def _shape_problem(obj: object) -> str | None:
    if not isinstance(obj, dict):
        return "not a JSON object"
    missing = {"pair_id", "segments", "labeler", "fps", "num_frames", "video_label"} - obj.keys()
    unknown = obj.keys() - _RECORD_FIELDS
    if missing or unknown:
        return f"missing {sorted(missing)}" if missing else f"unknown fields {sorted(unknown)}"
    if not (isinstance(obj["pair_id"], str) and isinstance(obj["segments"], list) and obj["segments"]):
        return "pair_id must be a string and segments a non-empty list"
    return None


def prepare_output(path: str | Path) -> dict[str, DonePair]:
    """Create the output's folder, repair a cut-off last line, and return the pairs done.

    A pair_id written twice (a relabelled pair, when the run that relabelled it was killed before
    it could drop the older line) keeps its last record: the older lines are removed here.
    Raises ValueError naming the first line that is not a dense preference record.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return {}
    repair_jsonl_tail(path)
    done: dict[str, DonePair] = {}
    repeated = False
    try:
        for k, (n, text) in enumerate(iter_jsonl(path)):
            pair_id, info = _done_of(path, n, text, full=k == 0)
            repeated |= pair_id in done
            done[pair_id] = info
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc.reason}): not an output of labeler.batch") from None
    if repeated:
        drop_records(path, set())
    return done


def drop_records(path: str | Path, pair_ids: set[str]) -> None:
    """Rewrite OUT without the records of ``pair_ids`` and without all but the last record of any
    other pair_id (atomically: a kill leaves the old file or the new one). Call it before the run's
    writer has opened OUT (it opens on its first line)."""
    path = Path(path)
    last: dict[str, str] = {}
    for _, text in iter_jsonl(path):
        pair_id = str(json.loads(text)["pair_id"])
        last.pop(pair_id, None)  # re-inserted at its last position
        last[pair_id] = text
    atomic_write_lines(path, [text for pair_id, text in last.items() if pair_id not in pair_ids])


ErrorKey = tuple[str, int | None]


def read_error_log(path: Path) -> dict[ErrorKey, ErrorRecord]:
    """The last record of each (pair_id, manifest line) in an errors file. A failed pair has no
    line; a bad manifest line has one, so a repeated pair_id keeps its own record beside its pair's."""
    out: dict[ErrorKey, ErrorRecord] = {}
    if not path.exists():
        return out
    for raw in path.read_bytes().split(b"\n"):  # "\n" only, as everywhere (labeler.fileio)
        with contextlib.suppress(ValueError):  # it is a log: a bad line is skipped
            rec = ErrorRecord.model_validate_json(raw)
            out[(rec.pair_id, rec.line)] = rec
    return out


def read_errors(path: str | Path) -> dict[str, ErrorRecord]:
    """The last error record of each pair_id in an errors file (bad lines are skipped: it is a log)."""
    return {pair_id: rec for (pair_id, _), rec in read_error_log(Path(path)).items()}


def compact_errors(
    path: str | Path, done: Container[str], manifest_errors: set[ErrorKey] | None = None
) -> int:
    """Rewrite the errors file with one line per failure that remains; returns how many.

    A failed pair leaves once it is done. A bad manifest line (it carries its line number) stays
    while the manifest still has it: only the keys in ``manifest_errors``, re-found by this run, are
    kept, even when another line with the same pair_id succeeded (a duplicate is still an error).
    """
    path = Path(path)
    if not path.exists():
        return 0
    fresh = manifest_errors or set()
    remaining = [
        rec
        for key, rec in read_error_log(path).items()
        if (rec.line is None and rec.pair_id not in done) or key in fresh
    ]
    if not remaining:
        path.unlink()
        return 0
    atomic_write_lines(path, [r.model_dump_json() for r in remaining])
    return len(remaining)


def error_record(
    pair_id: str, exc: BaseException | tuple[str, str], attempts: int, line: int | None = None
) -> ErrorRecord:
    etype, message = exc if isinstance(exc, tuple) else (type(exc).__name__, str(exc) or repr(exc))
    return ErrorRecord(
        pair_id=pair_id, error=ErrorInfo(type=etype, message=message), attempts=attempts, line=line
    )


class RecordWriter(JsonlWriter):
    """Append pydantic models as JSON lines (one flushed line each: see labeler.fileio)."""

    def write(self, record: BaseModel) -> None:
        self.write_line(record.model_dump_json(exclude_none=False))


# --------------------------------------------------------------------------- one run's files


#: After this many pairs in a row fail with a FatalJudgeError (bad key, unknown model...), stop.
#: Only judge faults count: bad input (a broken video, frames too small) fails its pair alone and
#: neither counts nor resets the streak, so a run never stops on a stretch of bad pairs.
FATAL_STREAK_LIMIT = 5

#: After this many pairs in a row fail because the endpoint could not be reached (after their
#: retries), stop: the endpoint is down, and every further pair would only spend its retries.
UNREACHABLE_STREAK_LIMIT = 3

#: What a failure says about the judge: "fatal" (it rejected us: counts toward the streak),
#: "unreachable" (no connection, past the retries), "judge" (it answered, badly: it is reachable,
#: both streaks reset), "input" (not the judge's doing: neither counts nor resets).
FailureKind = Literal["fatal", "unreachable", "judge", "input"]

#: The content hashes of an entry's files as its record keeps them ("a", "b", and "ref" when asked).
ContentOf = Callable[[ManifestEntry, bool], dict[str, str]]


def failure_kind(exc: BaseException) -> FailureKind:
    if isinstance(exc, FatalJudgeError):
        return "fatal"
    if isinstance(exc, EndpointUnreachable):
        return "unreachable"
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
    relabelled: int = 0  # pairs in OUT labelled again: their prompt or files changed
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
        self.done = prepare_output(self.out)
        self.errors_path = errors_path_for(self.out)
        repair_jsonl_tail(self.errors_path)
        self.previous = read_error_log(self.errors_path)
        self.records = RecordWriter(self.out)
        self.errors = RecordWriter(self.errors_path)
        self.result = BatchResult(errors_file=self.errors_path)
        self.manifest_errors: set[ErrorKey] = set()
        self.progress = progress
        self.bar = None
        self.fatal_streak = 0
        self.unreachable_streak = 0
        self.given: dict[str, dict[str, str]] = {}  # pair_id -> video paths as the manifest wrote them

    def todo(self, manifest: str | Path, content: ContentOf | None = None) -> list[ManifestEntry]:
        """The manifest's pairs not yet in OUT (bad lines are recorded as failures); starts the bar.

        With ``content`` (the engine's content hashes of an entry's files), a pair in OUT whose
        prompt or files changed since it was labelled is labelled again: its old record leaves OUT
        now, so a failure of the new attempt never leaves stale labels behind."""
        todo: list[ManifestEntry] = []
        stale: set[str] = set()
        for item in iter_manifest(manifest):
            self.result.manifest_pairs += 1
            if isinstance(item, ManifestLineError):
                self.fail(item.pair_id, (item.type, item.message), item.line)
            elif item.pair_id in self.done and not self._changed(item, content):
                self.result.skipped += 1
            else:
                if item.pair_id in self.done:
                    stale.add(item.pair_id)
                    del self.done[item.pair_id]
                self.given[item.pair_id] = item.given_paths
                todo.append(item)
        if stale:
            drop_records(self.out, stale)
            self.result.relabelled = len(stale)
        self.bar = _progress(self.result.manifest_pairs, self.result.skipped, self.progress)
        return todo

    def _changed(self, entry: ManifestEntry, content: ContentOf | None) -> bool:
        before = self.done[entry.pair_id]
        if before.prompt is not None and before.prompt != entry.prompt:
            return True
        if content is None or before.video_sha256 is None:
            return False
        try:
            now = content(entry, "ref" in before.video_sha256)
        except Exception:  # a file gone or unreadable: keep its labels, the run goes on
            return False
        return now != before.video_sha256

    def fail(self, pair_id: str, exc: BaseException | tuple[str, str], line: int | None = None) -> None:
        prior = self.previous.get((pair_id, line))
        rec = error_record(pair_id, exc, (prior.attempts if prior else 0) + 1, line)
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
        elif kind == "unreachable":
            self.unreachable_streak += 1
        elif kind == "judge":  # the judge answered (badly): it is reachable
            self.fatal_streak = self.unreachable_streak = 0
        message = exc[1] if isinstance(exc, tuple) else exc
        if self.fatal_streak >= FATAL_STREAK_LIMIT:
            self.result.stopped = f"the judge rejected {self.fatal_streak} pairs in a row, last: {message}"
            return True
        if self.unreachable_streak >= UNREACHABLE_STREAK_LIMIT:
            self.result.stopped = (
                f"endpoint unreachable: {self.unreachable_streak} pairs in a row failed to connect after "
                f"their retries, last: {message}"
            )
            return True
        return False

    def pair_done(self, record: DensePreferenceRecord) -> None:
        self.fatal_streak = self.unreachable_streak = 0
        # Relative manifest paths stay relative, to OUT's folder (labeler.record_paths).
        record = portable(record, self.given.pop(record.pair_id, {}), self.out.parent)
        self.records.write(record)
        self.done[record.pair_id] = DonePair(record.prompt, record.video_sha256)
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
        compact_errors(self.errors_path, self.done, self.manifest_errors)
        self.result.seconds = time.perf_counter() - self.started
        return self.result

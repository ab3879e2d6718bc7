"""The data side of human annotation: a manifest's pairs as the annotation page sees them, the log of
answers, and the export to dense preference records (``labeler.judge = "human"``).

Segments come from the judges' own segmentation (``labeler.media.video.probe`` + ``segment_spans`` with the
entry's ``segment_seconds`` or the engine default), so an exported record joins a judge's record on
(pair_id, segment index) with identical frame ranges, ready for ``python -m labeler.agreement``.

Answers are appended to one JSONL log per manifest, one line per answer; the last answer per
(annotator, pair, segment) wins. Re-answering is an append, a restart loses nothing, and a killed
writer spoils at most its own last line (skipped on reading, and terminated before the next append).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from labeler import __version__
from labeler.engine import EngineConfig
from labeler.errors import AnnotationError
from labeler.fileio import atomic_write_lines
from labeler.media.identity import IdentityMemo
from labeler.media.video import VideoError, VideoInfo, check_aligned, probe, segment_spans
from labeler.record_paths import ROLES, portable
from labeler.schemas import (
    LABELS,
    DensePreferenceRecord,
    LabelerInfo,
    ManifestEntry,
    ManifestLineError,
    iter_manifest,
    one_hot_segment,
)

try:  # serialises appends across processes too (uvicorn --workers); absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ANNOTATOR_PATTERN",
    "DEFAULT_SEGMENT_SECONDS",
    "AnnotationError",
    "AnnotationStore",
    "Answer",
    "ExportResult",
    "ManifestPlan",
    "PairProblem",
    "PlannedPair",
    "PlannedSegment",
    "check_annotator",
    "export_annotations",
    "human_record",
    "manifest_key",
    "plan_manifest",
]

log = logging.getLogger(__name__)

#: Annotator names become part of file names, so: a letter, digit or underscore first, then up to 63
#: more of those or ``. @ -`` (no spaces, no slashes). Unicode letters are fine.
ANNOTATOR_PATTERN = r"^\w[\w.@-]{0,63}$"
_ANNOTATOR_RE = re.compile(ANNOTATOR_PATTERN)
DEFAULT_SEGMENT_SECONDS = EngineConfig.segment_seconds


def check_annotator(name: str) -> str:
    """The annotator name, stripped, or AnnotationError(field="annotator")."""
    name = (name or "").strip()
    if not name:
        raise AnnotationError("annotator", "annotator: a name is required")
    if not _ANNOTATOR_RE.match(name):
        raise AnnotationError(
            "annotator",
            f"annotator: {name!r} is not a valid name (letters, digits, '_', '.', '@', '-'; "
            "at most 64 characters; no spaces)",
        )
    return name


def manifest_key(name: str) -> str:
    """File-name key of a manifest given relative to the media root, one per manifest (the mapping
    is injective: two manifests never share an answer log or an export): ``manifest.jsonl`` ->
    ``manifest``, ``sets/a/pairs.jsonl`` -> ``sets%2Fa%2Fpairs``, ``sets__a__pairs.jsonl`` ->
    ``sets__a__pairs``. Percent-encoding escapes ``%`` itself, so no two names meet; a name not
    ending in ``.jsonl`` keeps its suffix and gets ``%00`` (which no encoded name contains)."""
    posix = PurePosixPath(name).as_posix()  # "./a//m.jsonl" and "a/m.jsonl" are one file, one key
    if posix.endswith(".jsonl"):
        key = quote(posix.removesuffix(".jsonl"), safe="")
    else:
        key = quote(posix, safe="") + "%00"
    return key if len(key) <= KEY_MAX_CHARS else shortened_key(key)


#: Longest key kept as is: with ``.answers.jsonl``, or an annotator name and ``.human.jsonl``, a
#: file name stays under the 255 bytes of common file systems (30 CJK characters encode to 270).
KEY_MAX_CHARS = 120


def shortened_key(key: str) -> str:
    """A long key as its first characters, ``%h`` and the sha256 of the whole: ``quote`` never
    writes ``%h`` (a percent sign is always followed by two hex digits), so a shortened key meets
    no other key, and the hash keeps two long names apart."""
    return key[:24] + "%h" + hashlib.sha256(key.encode()).hexdigest()[:40]


# --------------------------------------------------------------------------- manifest plan


@dataclass(frozen=True)
class PlannedSegment:
    index: int
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class PlannedPair:
    """A manifest entry with its paths as written (``entry``) and resolved (``video_a``/``video_b``),
    and its segments."""

    entry: ManifestEntry
    video_a: Path
    video_b: Path
    fps: float
    num_frames: int
    segment_seconds: float
    segments: tuple[PlannedSegment, ...]

    @property
    def pair_id(self) -> str:
        return self.entry.pair_id


@dataclass(frozen=True)
class PairProblem:
    """A manifest line or pair that cannot be annotated (bad line, unreadable or misaligned video)."""

    pair_id: str
    type: str
    message: str


@dataclass(frozen=True)
class ManifestPlan:
    name: str
    path: Path
    pairs: tuple[PlannedPair, ...]
    problems: tuple[PairProblem, ...]
    _index: dict[str, PlannedPair] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({p.pair_id: p for p in self.pairs})

    def pair(self, pair_id: str) -> PlannedPair | None:
        return self._index.get(pair_id)


#: ``probe`` remembered by the file's identity (a rewrite with its size and mtime restored is
#: probed again); the page asks for the same manifest often.
_probe: IdentityMemo[VideoInfo] = IdentityMemo(probe)


def _raw_entries(path: Path) -> dict[str, ManifestEntry]:
    """Entries with their paths exactly as written (iter_manifest resolves them), by pair_id."""
    raw: dict[str, ManifestEntry] = {}
    for line in path.read_bytes().split(b"\n"):  # "\n" only: a prompt may hold U+2028
        # Bad lines (not UTF-8, bad JSON or fields) are reported by iter_manifest, one by one.
        with contextlib.suppress(ValueError):
            entry = ManifestEntry.model_validate_json(line.decode("utf-8"))
            raw.setdefault(entry.pair_id, entry)
    return raw


def _outside(root: Path, video: str) -> bool:
    real_root, real = Path(os.path.realpath(root)), Path(os.path.realpath(video))
    return real != real_root and real_root not in real.parents


def plan_manifest(
    path: Path,
    name: str,
    default_segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
    *,
    media_root: Path | None = None,
) -> ManifestPlan:
    """Probe and segment every pair of the manifest at ``path``; pairs that cannot be used become
    problems (the page lists them) instead of failing the whole manifest. With ``media_root``, a
    pair whose videos lie outside it (symlinks resolved) is a problem too, and is never opened."""
    raw = _raw_entries(path)
    pairs: list[PlannedPair] = []
    problems: list[PairProblem] = []
    for item in iter_manifest(path):
        if isinstance(item, ManifestLineError):
            problems.append(PairProblem(item.pair_id, item.type, item.message))
            continue
        if media_root is not None:
            written = raw.get(item.pair_id, item)
            bad = [
                f"{role}: {getattr(written, role)!r}"
                for role in ("video_a", "video_b")
                if _outside(media_root, getattr(item, role))
            ]
            if bad:
                message = f"{'; '.join(bad)} lie(s) outside the media root"
                problems.append(PairProblem(item.pair_id, "PathOutsideMediaRoot", message))
                continue
        try:
            info_a, info_b = _probe(item.video_a), _probe(item.video_b)
            check_aligned(info_a, info_b, role="video_b")
        except VideoError as exc:
            problems.append(PairProblem(item.pair_id, type(exc).__name__, str(exc)))
            continue
        seconds = item.segment_seconds or default_segment_seconds
        segments = tuple(
            PlannedSegment(span.index, span.start, span.end, span.start_s, span.end_s)
            for span in segment_spans(info_a, seconds)
        )
        pairs.append(
            PlannedPair(
                entry=raw.get(item.pair_id, item),
                video_a=Path(item.video_a),
                video_b=Path(item.video_b),
                fps=info_a.fps,
                num_frames=info_a.num_frames,
                segment_seconds=seconds,
                segments=segments,
            )
        )
    return ManifestPlan(name, path, tuple(pairs), tuple(problems))


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Answer:
    """One answer of one annotator about one segment, in the pair's true A/B terms."""

    pair_id: str
    segment: int
    label: str
    annotator: str
    note: str | None = None
    blind: bool = False  # the sides were shown swapped-at-random (audit only; label is already mapped back)
    saved_at: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Answer:
        answer = cls(
            pair_id=str(obj["pair_id"]),
            segment=int(obj["segment"]),
            label=str(obj["label"]),
            annotator=str(obj["annotator"]),
            note=obj.get("note"),
            blind=bool(obj.get("blind", False)),
            saved_at=float(obj.get("saved_at", 0.0)),
        )
        if answer.label not in LABELS:
            raise ValueError(f"label {answer.label!r}")
        return answer


@dataclass
class _LogIndex:
    """What one answer log holds, read up to ``offset``: the latest answer per (annotator, pair,
    segment). A save reads only the lines appended since (by this or another process)."""

    inode: int
    offset: int = 0
    latest: dict[str, dict[tuple[str, int], Answer]] = field(default_factory=dict)


class AnnotationStore:
    """Append-only answer logs, one ``<manifest key>.answers.jsonl`` per manifest in ``directory``.

    Each log is indexed in memory: a save appends one line and reads back only what was appended
    since the last read, so its cost does not grow with the log (a log replaced or truncated
    behind the store's back is re-read whole). Lines are split on ``\n`` only, so a note holding
    U+2028, U+2029 or U+0085 reads back as written.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._indexes: dict[str, _LogIndex] = {}

    def log_path(self, key: str) -> Path:
        return self.directory / f"{key}.answers.jsonl"

    def export_path(self, key: str, annotator: str) -> Path:
        name = f"{key}.{annotator}.human.jsonl"
        if len(name.encode()) > 250:  # a long key beside a long non-ASCII annotator name: both hashed
            name = f"{shortened_key(key + '/' + annotator)}.human.jsonl"
        return self.directory / name

    @contextlib.contextmanager
    def _locked(self, fh: Any) -> Iterator[None]:
        with self._lock:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def append(self, key: str, answer: Answer) -> None:
        """Append one answer durably (flushed and fsynced before returning)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps(asdict(answer), ensure_ascii=False) + "\n"
        with open(self.log_path(key), "a+b") as fh, self._locked(fh):
            end = fh.seek(0, os.SEEK_END)
            if end:  # a writer killed mid-line must not swallow this answer into its broken line
                fh.seek(end - 1)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())

    def answers(self, key: str, annotator: str) -> dict[tuple[str, int], Answer]:
        """The latest answer of ``annotator`` per (pair_id, segment)."""
        path = self.log_path(key)
        if not path.exists():
            return {}
        with open(path, "rb") as fh, self._lock:
            index = self._indexes.get(key)
            st = os.fstat(fh.fileno())
            if index is None or index.inode != st.st_ino or st.st_size < index.offset:
                index = self._indexes[key] = _LogIndex(st.st_ino)
            fh.seek(index.offset)
            tail = fh.read()
            complete = tail.rfind(b"\n") + 1  # a line still being written is read next time
            first_line = index.offset
            for raw in tail[:complete].split(b"\n")[:-1]:
                self._index_line(index, path, first_line, raw)
                first_line += len(raw) + 1
            index.offset += complete
            return dict(index.latest.get(annotator, {}))

    @staticmethod
    def _index_line(index: _LogIndex, path: Path, offset: int, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            answer = Answer.from_json(json.loads(raw.decode("utf-8")))
        except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
            log.warning("%s: byte %d: skipping unreadable answer line (%s)", path, offset, exc)
            return
        index.latest.setdefault(answer.annotator, {})[(answer.pair_id, answer.segment)] = answer


# --------------------------------------------------------------------------- export


def human_record(pair: PlannedPair, answers: Mapping[int, Answer], annotator: str) -> DensePreferenceRecord:
    """The dense preference record of one fully answered pair: one-hot probabilities, the notes in
    ``Segment.note``, paths as written in the manifest. Raises KeyError for a missing segment."""
    segments = []
    for seg in pair.segments:
        answer = answers[seg.index]
        segments.append(
            one_hot_segment(
                answer.label,  # type: ignore[arg-type]
                index=seg.index,
                start_frame=seg.start_frame,
                end_frame=seg.end_frame,
                start_s=seg.start_s,
                end_s=seg.end_s,
                note=answer.note or None,
            )
        )
    labeler = LabelerInfo(
        judge="human",
        annotator=annotator,
        densepref_version=__version__,
        segment_seconds=pair.segment_seconds,  # type: ignore[call-arg]  # LabelerInfo keeps extras
    )
    return DensePreferenceRecord.for_entry(
        pair.entry, segments, fps=pair.fps, num_frames=pair.num_frames, labeler=labeler
    )


@dataclass(frozen=True)
class ExportResult:
    path: Path
    written: list[str]  # pair ids, in manifest order
    incomplete: list[dict[str, Any]]  # {"pair_id", "answered", "segments"} of pairs left out


def export_annotations(plan: ManifestPlan, store: AnnotationStore, annotator: str) -> ExportResult:
    """Write one record per fully answered pair of ``annotator`` to ``store.export_path``, replacing
    an older export atomically; pairs with unanswered segments are reported, not written."""
    key = manifest_key(plan.name)
    latest = store.answers(key, annotator)
    by_pair: dict[str, dict[int, Answer]] = {}
    for (pair_id, index), answer in latest.items():
        by_pair.setdefault(pair_id, {})[index] = answer
    lines, written, incomplete = [], [], []
    out = store.export_path(key, annotator)
    for pair in plan.pairs:
        answered = {i: a for i, a in by_pair.get(pair.pair_id, {}).items() if i < len(pair.segments)}
        if len(answered) < len(pair.segments):
            incomplete.append(
                {"pair_id": pair.pair_id, "answered": len(answered), "segments": len(pair.segments)}
            )
            continue
        record = human_record(pair, answered, annotator)
        # Relative manifest paths become relative to the export's own folder, so the trainer and
        # the agreement tools read the export as it is (labeler.record_paths).
        given = {role: value for role in ROLES if (value := getattr(pair.entry, role)) is not None}
        resolved = {"video_a": str(pair.video_a), "video_b": str(pair.video_b)}
        if pair.entry.reference is not None:
            resolved["reference"] = str(
                (plan.path.parent / Path(pair.entry.reference).expanduser()).resolve()
            )
        record = portable(record.model_copy(update=resolved), given, out.parent)
        lines.append(record.model_dump_json(exclude_none=True))
        written.append(pair.pair_id)
    atomic_write_lines(out, lines)  # a unique temporary per writer: concurrent exports never collide
    return ExportResult(out, written, incomplete)

"""The data contracts of densepref (docs/design.md §2): every module may import this one.

Pair manifest entries go in, dense preference records (or error records) come out, and
judges speak ``SegmentRequest`` -> ``Judgment``. Validation errors say which field is wrong
and why, so a bad line in a manifest or a label file fails alone and clearly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from labeler.errors import (
    EndpointUnreachable,
    FatalJudgeError,
    FramesTooSmallError,
    InputError,
    JudgeError,
    JudgeParseError,
    TransientJudgeError,
)
from labeler.fileio import split_lines

__all__ = [
    "LABELS",
    "LABEL_VALUE",
    "CheapVerdict",
    "DensePreferenceRecord",
    "EndpointUnreachable",
    "ErrorInfo",
    "ErrorRecord",
    "FatalJudgeError",
    "FramesTooSmallError",
    "InputError",
    "JudgeError",
    "JudgeEstimate",
    "JudgeParseError",
    "Judgment",
    "Label",
    "LabelerInfo",
    "ManifestEntry",
    "ManifestLineError",
    "Order",
    "Segment",
    "SegmentRequest",
    "TransientJudgeError",
    "Usage",
    "Vote",
    "iter_manifest",
    "iter_records",
    "one_hot_segment",
    "read_manifest",
    "read_records",
    "video_level",
]

Label = Literal["A", "B", "tie"]
#: Presentation order of a vote: A shown first ("ab") or B shown first ("ba").
Order = Literal["ab", "ba"]
LABELS: tuple[str, ...] = ("A", "B", "tie")
#: Numeric value of a label: A better = +1, B better = -1, tie = 0 (docs/design.md §2.3).
LABEL_VALUE: dict[str, int] = {"A": 1, "B": -1, "tie": 0}
PROB_TOLERANCE = 1e-3


def _check_probabilities(p_a: float, p_b: float, p_tie: float, where: str) -> None:
    for name, value in (("p_a", p_a), ("p_b", p_b), ("p_tie", p_tie)):
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ValueError(f"{where}: {name}={value} is outside [0, 1]")
    total = p_a + p_b + p_tie
    if abs(total - 1.0) > PROB_TOLERANCE:
        raise ValueError(f"{where}: p_a + p_b + p_tie = {total:.6f}, must sum to 1")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- manifest (§2.1)


class ManifestEntry(_Strict):
    """One aligned pair to label. Relative paths resolve against the manifest's directory."""

    pair_id: str = Field(min_length=1, description="Unique within the manifest.")
    prompt: str = Field(description="The text prompt both videos were generated from.")
    video_a: str = Field(min_length=1)
    video_b: str = Field(min_length=1)
    reference: str | None = Field(None, description="Ground-truth video the pair was generated from.")
    segment_seconds: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Overrides the job's segment length."
    )
    # default= by keyword: type checkers then know it is optional, and no caller has to name it.
    align_to_latent: StrictInt | None = Field(
        default=None,
        ge=1,
        description="Overrides the job's --align-to-latent (boundaries on frames 1 + k*r).",
    )
    meta: dict[str, Any] = Field(default_factory=dict)
    _given: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("video_a", "video_b", "reference")
    @classmethod
    def _no_nul(cls, path: str | None) -> str | None:
        if path is not None and "\x00" in path:
            raise ValueError("a path cannot hold a NUL character")
        return path

    def resolved(self, base_dir: str | Path) -> ManifestEntry:
        """A copy whose relative video paths are made absolute against ``base_dir``."""
        base = Path(base_dir)

        def fix(role: str, p: str | None) -> str | None:
            if p is None:
                return None
            path = Path(p).expanduser()
            try:
                return str(path if path.is_absolute() else (base / path).resolve())
            except (OSError, RuntimeError) as exc:  # a symlink loop is a RuntimeError before 3.13
                raise ValueError(f"{role} {p!r} cannot be resolved: {exc}") from None

        roles = ("video_a", "video_b", "reference")
        paths = {role: fix(role, getattr(self, role)) for role in roles}
        copy = self.model_copy(update=paths)
        # The class's own private attribute, on its own copy (model_copy cannot set private fields).
        copy._given = {role: value for role in roles if (value := getattr(self, role)) is not None}  # noqa: SLF001
        return copy

    @property
    def given_paths(self) -> dict[str, str]:
        """The video paths as the manifest wrote them (role -> path), once :meth:`resolved`; records
        name them relative to their own file when these are relative (labeler.record_paths)."""
        return dict(self._given)


@dataclass(frozen=True)
class ManifestLineError:
    """A manifest line that could not become a ManifestEntry; it fails alone."""

    line: int
    pair_id: str
    type: str
    message: str


def _format_validation_error(exc: ValidationError) -> str:
    where = (".".join(str(x) for x in err["loc"]) or "<record>" for err in exc.errors())
    return "; ".join(f"{loc}: {err['msg']}" for loc, err in zip(where, exc.errors(), strict=True))


def _lone_surrogate(value: Any, where: str = "") -> str | None:
    """Where ``value`` (parsed JSON) holds a lone surrogate (``"\\ud800"`` is valid JSON but no
    Unicode text: it cannot be written as UTF-8, so no record or error line could hold it)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"{where or '<value>'}: lone surrogate {value[exc.start]!a} at character {exc.start + 1}"
        return None
    if isinstance(value, dict):
        items: Iterable[tuple[str, Any]] = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        name = f"{where}.{ascii(key)[1:-1]}" if where else ascii(key)[1:-1]
        found = _lone_surrogate(key, name + " (key)") or _lone_surrogate(item, name)
        if found:
            return found
    return None


def _manifest_item(lineno: int, text: str, seen: set[str], base: Path) -> ManifestEntry | ManifestLineError:
    placeholder = f"<line {lineno}>"
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad JSON, an integer over 4300 digits, deep nesting
        return ManifestLineError(
            lineno, placeholder, "ManifestJSONError", f"line {lineno}: invalid JSON: {str(exc)[:300]}"
        )
    pair_id = obj.get("pair_id") if isinstance(obj, dict) else None
    pair_id = (
        pair_id if isinstance(pair_id, str) and pair_id and not _lone_surrogate(pair_id) else placeholder
    )
    surrogate = _lone_surrogate(obj)
    if surrogate is not None:
        return ManifestLineError(lineno, pair_id, "ManifestEncodingError", f"line {lineno}: {surrogate}")
    try:
        entry = ManifestEntry.model_validate(obj)
    except ValidationError as exc:
        message = f"line {lineno}: {_format_validation_error(exc)}"
        return ManifestLineError(lineno, pair_id, "ManifestValidationError", message)
    if entry.pair_id in seen:
        message = f"line {lineno}: pair_id {entry.pair_id!r} repeats"
        return ManifestLineError(lineno, entry.pair_id, "DuplicatePairId", message)
    seen.add(entry.pair_id)
    try:
        return entry.resolved(base)
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop (RuntimeError before 3.13)
        return ManifestLineError(lineno, entry.pair_id, "ManifestPathError", f"line {lineno}: {exc}")


def iter_manifest(path: str | Path) -> Iterator[ManifestEntry | ManifestLineError]:
    """Yield resolved entries, or a ManifestLineError for each bad line (not UTF-8, bad JSON, bad
    fields, duplicate pair_id). Lines are split on ``\\n`` only and decoded one by one, so a bad
    byte fails its line alone; a UTF-8 BOM is dropped; blank and ``#`` lines are skipped."""
    path, seen = Path(path), set[str]()
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                text = (
                    raw.removeprefix(b"\xef\xbb\xbf" if lineno == 1 else b"").decode("utf-8").strip(" \t\r\n")
                )
            except UnicodeDecodeError as exc:
                where = f"byte {exc.object[exc.start]:#04x} at column {exc.start + 1}"
                yield ManifestLineError(
                    lineno, f"<line {lineno}>", "ManifestEncodingError", f"line {lineno}: not UTF-8 ({where})"
                )
                continue
            if text and not text.startswith("#"):
                yield _manifest_item(lineno, text, seen, path.parent)


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """All entries of a manifest; raises ValueError listing every bad line."""
    items = list(iter_manifest(path))
    errors = [item.message for item in items if isinstance(item, ManifestLineError)]
    if errors:
        raise ValueError(f"{path}: " + " | ".join(errors))
    return [item for item in items if isinstance(item, ManifestEntry)]


# --------------------------------------------------------------------------- records (§2.3)


class Vote(BaseModel):
    """One judge answer for one presentation order, already mapped back to the pair's A/B."""

    model_config = ConfigDict(extra="allow")

    order: Order
    label: Label
    p_a: float | None = None
    p_b: float | None = None
    p_tie: float | None = None
    cached: bool | None = None


class CheapVerdict(BaseModel):
    """What a cascade's cheap judge said about a segment (labeler.cascade), kept beside the final
    label so the cascade can be audited and refitted (``labeler.agreement --fit-cascade``)."""

    model_config = ConfigDict(extra="forbid")

    judge: str
    label: Label
    p_a: float
    p_b: float
    p_tie: float

    @model_validator(mode="after")
    def _check(self) -> CheapVerdict:
        _check_probabilities(self.p_a, self.p_b, self.p_tie, "cheap verdict")
        return self


class Segment(BaseModel):
    """A half-open frame range [start_frame, end_frame) with its label and probabilities."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    start_frame: int = Field(ge=0)
    end_frame: int = Field(gt=0)
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    label: Label
    p_a: float
    p_b: float
    p_tie: float
    votes: list[Vote] = Field(default_factory=list)
    consistent: bool | None = None
    rationale: str = ""
    note: str | None = Field(None, description="Free-text note of a human annotator.")
    decided_by: str | None = Field(
        default=None,
        description="Cascade runs: the judge whose verdict this is (the cheap one or the main one).",
    )
    cheap: CheapVerdict | None = Field(default=None, description="Cascade runs: the cheap judge's verdict.")

    @model_validator(mode="after")
    def _check(self) -> Segment:
        if self.end_frame <= self.start_frame:
            raise ValueError(
                f"segment {self.index}: end_frame {self.end_frame} must be after start_frame {self.start_frame}"
            )
        if self.end_s < self.start_s:
            raise ValueError(f"segment {self.index}: end_s {self.end_s} is before start_s {self.start_s}")
        _check_probabilities(self.p_a, self.p_b, self.p_tie, f"segment {self.index}")
        return self


def one_hot_segment(label: Label, **fields: Any) -> Segment:
    """A segment labeled with certainty (human labels, injected ground truth): one-hot p_*."""
    return Segment(
        label=label, p_a=float(label == "A"), p_b=float(label == "B"), p_tie=float(label == "tie"), **fields
    )


class LabelerInfo(BaseModel):
    """Who produced the labels and with which settings; extra settings (layout, max_side...) are kept."""

    model_config = ConfigDict(extra="allow")

    judge: str
    model: str | None = None
    prompt_id: str | None = None
    frames_per_segment: int | None = None
    swap: bool | None = None
    densepref_version: str | None = None
    answer_order: str | None = Field(
        default=None,
        description="'label-first' or 'rationale-first': the judge's answer field order (docs/endpoints.md).",
    )
    annotator: str | None = Field(default=None, description="Human annotator name when judge == 'human'.")


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_tokens: int = 0
    output_tokens: int = 0
    cache_hits: int = 0
    requests: int = 0


class DensePreferenceRecord(BaseModel):
    """One labeled pair: the output of every judge and of human annotation alike."""

    model_config = ConfigDict(extra="forbid")

    pair_id: str = Field(min_length=1)
    prompt: str
    video_a: str
    video_b: str
    reference: str | None = None
    fps: float = Field(gt=0)
    num_frames: int = Field(gt=0)
    segments: list[Segment] = Field(min_length=1)
    video_label: Label
    video_score: float = Field(ge=-1.0, le=1.0)
    labeler: LabelerInfo
    usage: Usage = Field(default_factory=Usage)
    meta: dict[str, Any] = Field(default_factory=dict)
    video_sha256: dict[str, str] | None = Field(
        None,
        description="sha256 of the files labelled ('a', 'b', and 'ref' when the judge read the "
        "reference): a rerun relabels the pair when they changed. None for inline frames and human labels.",
    )

    @model_validator(mode="before")
    @classmethod
    def _lift_annotator(cls, data: Any) -> Any:
        # Human label files may carry `annotator` at the top level; it belongs to `labeler`.
        if isinstance(data, dict) and "annotator" in data:
            data = dict(data)
            annotator = data.pop("annotator")
            labeler = dict(data.get("labeler") or {"judge": "human"})
            labeler.setdefault("annotator", annotator)
            data["labeler"] = labeler
        return data

    @field_validator("segments")
    @classmethod
    def _ordered(cls, segments: list[Segment]) -> list[Segment]:
        for i, seg in enumerate(segments):
            if seg.index != i:
                raise ValueError(f"segments out of order: position {i} holds index {seg.index}")
            if i and seg.start_frame < segments[i - 1].end_frame:
                prev = segments[i - 1]
                raise ValueError(
                    f"segments {prev.index} [{prev.start_frame}, {prev.end_frame}) and "
                    f"{seg.index} [{seg.start_frame}, {seg.end_frame}) overlap"
                )
        return segments

    @model_validator(mode="after")
    def _within_video(self) -> DensePreferenceRecord:
        last = self.segments[-1]
        if last.end_frame > self.num_frames:
            raise ValueError(
                f"segment {last.index} ends at frame {last.end_frame} > num_frames {self.num_frames}"
            )
        return self

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.segments]

    @classmethod
    def for_entry(
        cls,
        entry: ManifestEntry,
        segments: list[Segment],
        *,
        fps: float,
        num_frames: int,
        labeler: LabelerInfo,
        usage: Usage | None = None,
        video_sha256: dict[str, str] | None = None,
    ) -> DensePreferenceRecord:
        """The record of a manifest entry's labeled segments; video label and score follow §2.3."""
        video_label, video_score = video_level(segments)
        return cls(
            pair_id=entry.pair_id,
            prompt=entry.prompt,
            video_a=entry.video_a,
            video_b=entry.video_b,
            reference=entry.reference,
            fps=fps,
            num_frames=num_frames,
            segments=segments,
            video_label=video_label,
            video_score=video_score,
            labeler=labeler,
            usage=usage or Usage(),
            meta=entry.meta,
            video_sha256=video_sha256,
        )


def video_level(segments: Iterable[Segment]) -> tuple[Label, float]:
    """The video label and score of a pair (docs/design.md §2.3, the DenseDPO paper's rule).

    Label: majority vote over the non-tie segment labels, equal counts -> tie.
    Score: mean of p_a - p_b over all segments, in [-1, 1].
    """
    segments = list(segments)
    if not segments:
        raise ValueError("video_level needs at least one segment")
    n_a = sum(s.label == "A" for s in segments)
    n_b = sum(s.label == "B" for s in segments)
    label: Label = "A" if n_a > n_b else "B" if n_b > n_a else "tie"
    score = sum(s.p_a - s.p_b for s in segments) / len(segments)
    return label, max(-1.0, min(1.0, round(score, 6)))


class ErrorInfo(_Strict):
    type: str
    message: str


class ErrorRecord(_Strict):
    """A pair that failed, written to ``<output>.errors.jsonl``; a rerun retries it."""

    pair_id: str
    error: ErrorInfo
    attempts: int = Field(1, ge=0)
    line: int | None = Field(None, description="Manifest line, for entries that failed to parse.")


def iter_records(
    path: str | Path, *, tolerate_truncated_tail: bool = True
) -> Iterator[DensePreferenceRecord]:
    """Read a dense preference JSONL, split on ``\\n`` only (a prompt may hold U+2028 and friends).
    A last line cut short by a killed writer is ignored (``tolerate_truncated_tail``); any other bad
    line raises ValueError naming the line."""
    path = Path(path)
    lines = split_lines(path.read_text(encoding="utf-8-sig"))
    for lineno, raw in enumerate(lines, start=1):
        text = raw.strip(" \t\r")
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if tolerate_truncated_tail and lineno == len(lines):
                return
            raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
        try:
            yield DensePreferenceRecord.model_validate(obj)
        except ValidationError as exc:
            raise ValueError(f"{path}:{lineno}: {_format_validation_error(exc)}") from exc


def read_records(path: str | Path, *, tolerate_truncated_tail: bool = True) -> list[DensePreferenceRecord]:
    return list(iter_records(path, tolerate_truncated_tail=tolerate_truncated_tail))


# --------------------------------------------------------------------------- judge interface (§2.4)


@dataclass(frozen=True, eq=False)
class SegmentRequest:
    """What a judge sees for one aligned segment, in presentation order.

    ``frames_first`` is shown as "Video A / first", ``frames_second`` as "Video B / second". The
    engine decides the order (it swaps them for the "ba" vote) and maps the answer back; a judge
    only ever answers about what it was shown.
    """

    prompt: str
    frames_first: np.ndarray  # [K, H, W, 3] uint8 RGB
    frames_second: np.ndarray  # same shape as frames_first
    start_s: float
    end_s: float
    index: int = 0
    num_segments: int = 1
    frame_times: tuple[float, ...] = ()  # seconds of each sampled frame, for the prompt
    frame_indices: tuple[int, ...] = ()  # each sampled frame's number in its video (video input timing)
    reference: np.ndarray | None = None  # ground-truth frames at the same indices, if any
    fps: float | None = None
    #: Names the segment whatever the order it is shown in: two requests with the same key show the
    #: same two frame arrays (and reference), in the same order when ``order`` is equal and swapped
    #: otherwise. The engine sets it (the segment's "ab" cache key); None promises nothing.
    segment_key: str | None = None
    order: Order = "ab"  # "ba": frames_first are the pair's B (only meaningful with segment_key)

    def __post_init__(self) -> None:
        a, b = self.frames_first, self.frames_second
        if a.ndim != 4 or a.shape[-1] != 3 or a.dtype != np.uint8:
            raise ValueError(f"frames_first must be [K, H, W, 3] uint8, got {a.shape} {a.dtype}")
        if b.dtype != np.uint8:
            raise ValueError(f"frames_second must be uint8 like frames_first, got {b.dtype}")
        if a.shape != b.shape:
            raise ValueError(f"frames_first {a.shape} and frames_second {b.shape} differ in shape")
        if self.reference is not None and self.reference.shape[0] != a.shape[0]:
            raise ValueError(f"reference has {self.reference.shape[0]} frames, the pair {a.shape[0]}")


class Judgment(BaseModel):
    """A judge's answer about one SegmentRequest, in presentation order (A = first shown)."""

    model_config = ConfigDict(extra="forbid")

    label: Label
    p_a: float
    p_b: float
    p_tie: float
    rationale: str = ""
    raw: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    #: Of ``input_tokens``, those served from the provider's prompt cache (billed at its cached rate).
    cached_input_tokens: int = 0
    model: str | None = None
    prob_source: Literal["logprobs", "logits", "score", "vote"] = "vote"

    @model_validator(mode="after")
    def _check(self) -> Judgment:
        _check_probabilities(self.p_a, self.p_b, self.p_tie, "judgment")
        return self

    def swapped(self) -> Judgment:
        """The same answer with first and second exchanged (maps a "ba" vote back to A/B)."""
        label = {"A": "B", "B": "A", "tie": "tie"}[self.label]
        return self.model_copy(update={"label": label, "p_a": self.p_b, "p_b": self.p_a})


@dataclass
class JudgeEstimate:
    """What one request would cost before it is sent (``--dry-run``, budgets, benchmarks)."""

    images: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

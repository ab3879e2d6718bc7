"""The review queue of the annotation page: which pairs an annotator sees, in which order, and what
of a judge's labels they may see.

- ``labels=L`` (a judge's dense preference JSONL under the media root) with
  ``order=least-confident``: pairs ordered by their least-confident segment under that judge
  (labeler.cascade.pair_confidence), the least confident first; pairs the file does not label
  (or labels with other segments) come last, in manifest order.
- ``preannotations=1``: each pair carries the judge's segment labels. Off by default, and then not
  even sent, so they cannot anchor the annotator.
- ``team=a,b,c&overlap=F``: each pair goes to one annotator of the team, and a share F of the pairs
  also to a second one (chosen by a hash of the pair id: stable across reloads and manifest
  edits), so the human-human ceiling (labeler.agreement with two --human files) can be measured.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Literal

from labeler.cascade.policy import pair_confidence
from labeler.schemas import DensePreferenceRecord, iter_records
from labeler.service.annotate.store import AnnotationError, PlannedPair, check_annotator
from labeler.service.errors import ServiceError
from labeler.service.media_stream import media_url
from labeler.service.paths import private_paths, resolve_media_path

Order = Literal["manifest", "least-confident"]

#: What the annotators are asked (shown on the page): the same question the judges answer.
RUBRIC = (
    "For each segment, compare A and B over that time span only and answer which is better: "
    "fewer visual artifacts (warping, melting or extra limbs, flicker, smearing, frozen or "
    "jumping regions), more natural and consistent motion, and closer to the prompt (and to the "
    "reference video when one is shown). Answer Tie when neither is clearly better, or when both "
    "are equally flawed; do not guess. Judge each segment on its own, not by the rest of the video."
)
MAX_TEAM = 64


def read_judge_labels(root: Path, labels: str) -> dict[str, DensePreferenceRecord]:
    """A judge's label file under the media root, by pair id (the first record of a pair wins);
    400 naming the file (never the server path) when it cannot be read."""
    path = resolve_media_path(root, labels, field="labels")
    out: dict[str, DensePreferenceRecord] = {}
    try:
        for record in iter_records(path):
            out.setdefault(record.pair_id, record)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = private_paths(root, {path: labels})(str(exc))
        raise ServiceError(400, "InvalidLabels", f"labels: {labels!r} cannot be read: {reason}") from None
    return out


def _matches(record: DensePreferenceRecord | None, pair: PlannedPair) -> bool:
    """The judge's record labels exactly this pair's segments (same frame ranges)."""
    if record is None or len(record.segments) != len(pair.segments):
        return False
    return all(
        (s.start_frame, s.end_frame) == (p.start_frame, p.end_frame)
        for s, p in zip(record.segments, pair.segments, strict=True)
    )


def confidence(record: DensePreferenceRecord | None, pair: PlannedPair) -> float | None:
    return pair_confidence(record) if record is not None and _matches(record, pair) else None


def order_pairs(
    pairs: list[PlannedPair], labels: dict[str, DensePreferenceRecord], order: Order
) -> list[PlannedPair]:
    if order == "manifest":
        return pairs
    ranked = []
    for position, pair in enumerate(pairs):
        conf = confidence(labels.get(pair.pair_id), pair)
        ranked.append((math.inf if conf is None else conf, position, pair))
    return [pair for *_, pair in sorted(ranked, key=lambda x: (x[0], x[1]))]


def preannotation(record: DensePreferenceRecord | None, pair: PlannedPair) -> dict[str, Any] | None:
    """The judge's labels of a pair, in true A/B terms (the page maps blind sides)."""
    if record is None or not _matches(record, pair):
        return None
    return {
        "judge": record.labeler.judge,
        "model": record.labeler.model,
        "segments": {
            str(s.index): {"label": s.label, "p_a": s.p_a, "p_b": s.p_b, "p_tie": s.p_tie}
            for s in record.segments
        },
    }


def parse_team(team: str, annotator: str, overlap: float) -> list[str]:
    """The team's names (validated like annotators), with ``annotator`` among them."""
    if not (math.isfinite(overlap) and 0.0 <= overlap <= 1.0):
        raise ServiceError(422, "InvalidQuery", f"overlap: must be between 0 and 1, got {overlap}")
    names = [n.strip() for n in team.split(",") if n.strip()]
    try:
        names = [check_annotator(n) for n in names]
    except AnnotationError as exc:
        raise ServiceError(422, "InvalidQuery", f"team: {exc.message}") from None
    if len(set(names)) != len(names) or not 1 <= len(names) <= MAX_TEAM:
        raise ServiceError(
            422, "InvalidQuery", f"team: 1 to {MAX_TEAM} distinct annotator names, comma-separated"
        )
    if annotator not in names:
        raise ServiceError(422, "InvalidQuery", f"team: {annotator!r} is not in the team {names}")
    return names


def assignees(pair_id: str, team: list[str], overlap: float) -> tuple[str, ...]:
    """Who annotates ``pair_id``: one member, and a second for the ``overlap`` share of pairs."""
    h = int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:16], "big")
    first = h % len(team)
    draw = ((h >> 40) % 1_000_000) / 1_000_000
    if len(team) < 2 or draw >= overlap:
        return (team[first],)
    second = (first + 1 + (h >> 80) % (len(team) - 1)) % len(team)
    return team[first], team[second]


def reference_url(pair: PlannedPair, manifest_dir: Path, root: Path, token: str | None) -> str | None:
    """A signed URL of the pair's reference video, when the manifest names one inside the media
    root (one outside it is never served: the page just shows no reference)."""
    written = pair.entry.reference
    if not written:
        return None
    path = Path(written).expanduser()
    real = Path(os.path.realpath(path if path.is_absolute() else manifest_dir / path))
    try:
        rel = real.relative_to(os.path.realpath(root)).as_posix()
    except ValueError:
        return None
    return media_url(rel, token) if real.is_file() else None

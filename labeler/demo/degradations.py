"""Known, visible video degradations: the injected "artifacts" of the demo set and of tests.

Each degradation is a pure function ``frames -> frames`` over a [T, H, W, 3] uint8 RGB clip with a
``strength`` in (0, 1] (1 = clearly visible but still realistic) and a seed for anything random, so
the same call always gives the same frames. The demo injects ``DEMO_KINDS`` into segments of one
side of a pair, the way guided generation leaves a local artifact in one copy and not the other;
``HELD_OUT_KINDS`` are never used by the demo, so tests can check that a judge generalises to
artifacts it was not tuned on.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEGRADATIONS",
    "DEMO_KINDS",
    "HELD_OUT_KINDS",
    "Degradation",
    "degrade",
]

DegradeFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Degradation:
    name: str
    fn: DegradeFn
    description: str
    temporal: bool  # acts across frames (needs a clip, not a single image)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- demo kinds


def _blur(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian defocus, sigma 1.0 .. 2.5 px: the soft, detail-less look of an under-resolved frame."""
    from scipy.ndimage import gaussian_filter

    sigma = 1.0 + 1.5 * strength
    return _to_uint8(gaussian_filter(frames.astype(np.float32), sigma=(0, sigma, sigma, 0)))


def _noise(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Fresh Gaussian grain every frame, std 5 .. 14 grey levels (per channel)."""
    sigma = 5.0 + 9.0 * strength
    return _to_uint8(frames.astype(np.float32) + rng.normal(0.0, sigma, frames.shape).astype(np.float32))


def _blockiness(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Heavy JPEG compression (quality 30 .. 8): 8x8 blocks, lost texture, ringing."""
    from PIL import Image

    quality = round(30 - 22 * strength)
    out = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


def _flicker(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness jitter: every frame gets its own gain (std 4 .. 12 %), alternating sign so the
    jitter is frame to frame, not a slow drift."""
    std = 0.04 + 0.08 * strength
    signs = np.where(np.arange(len(frames)) % 2 == 0, 1.0, -1.0)
    gains = 1.0 + signs * np.abs(rng.normal(0.0, std, len(frames))) + 0.25 * std * signs
    return _to_uint8(frames.astype(np.float32) * gains[:, None, None, None].astype(np.float32))


def _freeze(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The clip stalls: one frame is held for 40 .. 80 % of the frames, then motion jumps on."""
    n = len(frames)
    hold = max(2, round(n * (0.4 + 0.4 * strength)))
    start = int(rng.integers(0, max(1, n - hold + 1)))
    out = frames.copy()
    out[start : start + hold] = frames[start]
    return out


# --------------------------------------------------------------------------- held-out kinds


def _salt_pepper(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Dead/hot pixels: 0.5 .. 3 % of pixels forced to black or white, fresh every frame."""
    fraction = 0.005 + 0.025 * strength
    out = frames.copy()
    hit = rng.random(frames.shape[:3]) < fraction
    white = rng.random(frames.shape[:3]) < 0.5
    out[hit & white] = 255
    out[hit & ~white] = 0
    return out


def _ghosting(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Temporal blending: each frame mixed with the one 3 frames earlier (weight 0.3 .. 0.5),
    leaving a double image of anything that moves."""
    weight = 0.3 + 0.2 * strength
    x = frames.astype(np.float32)
    past = np.concatenate([np.repeat(x[:1], 3, axis=0), x[:-3]])[: len(x)]
    return _to_uint8((1 - weight) * x + weight * past)


def _posterize(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Banding: each channel quantised to 32 .. 6 levels."""
    levels = round(32 - 26 * strength)
    step = 255.0 / (levels - 1)
    return _to_uint8(np.rint(frames.astype(np.float32) / step) * step)


def _patch_smear(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A local smear: one region (25 .. 45 % of each side) is heavily blurred, the rest untouched."""
    from scipy.ndimage import uniform_filter

    _, h, w, _ = frames.shape
    frac = 0.25 + 0.2 * strength
    ph, pw = max(4, int(h * frac)), max(4, int(w * frac))
    y0 = int(rng.integers(0, h - ph + 1))
    x0 = int(rng.integers(0, w - pw + 1))
    out = frames.copy()
    patch = frames[:, y0 : y0 + ph, x0 : x0 + pw].astype(np.float32)
    size = 5 + round(6 * strength)
    out[:, y0 : y0 + ph, x0 : x0 + pw] = _to_uint8(uniform_filter(patch, size=(1, size, size, 1)))
    return out


def _chroma_shift(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Colour misregistration: the chroma planes (Cb, Cr) slide 2 .. 6 px against luma, leaving
    colour fringes along edges."""
    from PIL import Image

    d = 2 + round(4 * strength)
    out = []
    for frame in frames:
        ycc = np.asarray(Image.fromarray(frame).convert("YCbCr")).copy()
        ycc[:, :, 1] = np.roll(ycc[:, :, 1], (d // 2, d), axis=(0, 1))
        ycc[:, :, 2] = np.roll(ycc[:, :, 2], (-(d // 2), -d), axis=(0, 1))
        out.append(np.asarray(Image.fromarray(ycc, mode="YCbCr").convert("RGB")))
    return np.stack(out)


def _haze(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Washed-out contrast: the picture blends 25 .. 50 % toward a light grey veil."""
    a = 0.25 + 0.25 * strength
    return _to_uint8((1 - a) * frames.astype(np.float32) + a * 200.0)


def _shake(frames: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Camera shake: every frame jumps by its own random offset of up to 2 .. 6 px."""
    from scipy.ndimage import shift

    r = 2 + round(4 * strength)
    out = np.empty_like(frames)
    for t, frame in enumerate(frames):
        dy, dx = rng.integers(-r, r + 1, size=2)
        out[t] = shift(frame, (int(dy), int(dx), 0), order=0, mode="nearest")
    return out


DEGRADATIONS: dict[str, Degradation] = {
    d.name: d
    for d in (
        Degradation("blur", _blur, "Gaussian defocus blur", temporal=False),
        Degradation("noise", _noise, "temporal Gaussian grain", temporal=False),
        Degradation("blockiness", _blockiness, "heavy JPEG compression blocks", temporal=False),
        Degradation("flicker", _flicker, "frame-to-frame brightness jitter", temporal=True),
        Degradation("freeze", _freeze, "held frames, then a jump", temporal=True),
        Degradation("salt_pepper", _salt_pepper, "impulse (dead/hot pixel) noise", temporal=False),
        Degradation("ghosting", _ghosting, "temporal blending with an earlier frame", temporal=True),
        Degradation("posterize", _posterize, "colour banding from coarse quantisation", temporal=False),
        Degradation("patch_smear", _patch_smear, "one region heavily smeared", temporal=False),
        Degradation("chroma_shift", _chroma_shift, "colour planes misregistered", temporal=False),
        Degradation("haze", _haze, "washed-out, low-contrast picture", temporal=False),
        Degradation("shake", _shake, "random per-frame camera shake", temporal=True),
    )
}
#: What the demo set injects.
DEMO_KINDS: tuple[str, ...] = ("blur", "noise", "blockiness", "flicker", "freeze")
#: Never injected by the demo: tests use them to check that a judge generalises.
HELD_OUT_KINDS: tuple[str, ...] = (
    "salt_pepper",
    "ghosting",
    "posterize",
    "patch_smear",
    "chroma_shift",
    "haze",
    "shake",
)


def degrade(frames: np.ndarray, kind: str, strength: float = 1.0, seed: int = 0) -> np.ndarray:
    """Apply degradation ``kind`` at ``strength`` in (0, 1] to [T, H, W, 3] uint8 frames.

    Deterministic: the same frames, kind, strength and seed give the same output. The input is
    never modified.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; choose one of {', '.join(DEGRADATIONS)}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"degradation {kind!r}: strength must be in (0, 1], got {strength}")
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"degradation {kind!r}: frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}"
        )
    spec = DEGRADATIONS[kind]
    if spec.temporal and len(frames) < 2:
        raise ValueError(
            f"degradation {kind!r} acts over time and needs at least 2 frames, got {len(frames)}"
        )
    out = spec.fn(frames, float(strength), np.random.default_rng(seed))
    assert out.shape == frames.shape and out.dtype == np.uint8, kind  # internal invariant
    return out

"""Degradations: pure, deterministic, visible, and each does what its name says."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.demo.degradations import DEGRADATIONS, DEMO_KINDS, HELD_OUT_KINDS, degrade
from tests.conftest import textured_frames

CLIP = textured_frames(12, 64, 96, seed=3)


def _luma(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_demo_and_held_out_kinds_are_registered_and_disjoint():
    assert set(DEMO_KINDS) | set(HELD_OUT_KINDS) == set(DEGRADATIONS)
    assert not set(DEMO_KINDS) & set(HELD_OUT_KINDS)
    assert all(DEGRADATIONS[name].name == name and DEGRADATIONS[name].description for name in DEGRADATIONS)


@pytest.mark.parametrize("kind", sorted(DEGRADATIONS))
def test_pure_deterministic_and_visible(kind):
    before = CLIP.copy()
    out = degrade(CLIP, kind, 1.0, seed=5)
    assert np.array_equal(CLIP, before)  # the input is never modified
    assert out.shape == CLIP.shape and out.dtype == np.uint8
    assert np.array_equal(out, degrade(CLIP, kind, 1.0, seed=5))
    assert _mad(out, CLIP) > 1.0  # visibly different: over one grey level on average


@pytest.mark.parametrize(
    "kind", ["blur", "noise", "blockiness", "posterize", "haze", "salt_pepper", "ghosting"]
)
def test_strength_scales_the_damage(kind):
    weak, strong = degrade(CLIP, kind, 0.2, seed=1), degrade(CLIP, kind, 1.0, seed=1)
    assert _mad(strong, CLIP) > _mad(weak, CLIP)


def test_random_kinds_depend_on_the_seed():
    for kind in ("noise", "salt_pepper", "flicker", "freeze", "shake", "patch_smear"):
        a, b = degrade(CLIP, kind, 1.0, seed=1), degrade(CLIP, kind, 1.0, seed=2)
        assert not np.array_equal(a, b), kind


def test_blur_removes_fine_detail():
    out = degrade(CLIP, "blur", 0.8)
    grad = lambda x: np.abs(np.diff(_luma(x), axis=2)).mean()  # noqa: E731
    assert grad(out) < 0.7 * grad(CLIP)


def test_noise_is_fresh_every_frame():
    flat = np.full((4, 32, 32, 3), 128, np.uint8)
    out = degrade(flat, "noise", 1.0).astype(np.float64) - 128
    assert 10 < out.std() < 16  # std 14 grey levels at full strength
    assert abs(np.corrcoef(out[0].ravel(), out[1].ravel())[0, 1]) < 0.05


def test_blockiness_leaves_an_8_pixel_grid():
    out = _luma(degrade(CLIP, "blockiness", 1.0))
    steps = np.abs(np.diff(out, axis=2)).mean(axis=(0, 1))
    phases = steps[: len(steps) // 8 * 8].reshape(-1, 8).mean(axis=0)
    assert phases.argmax() == 7 and phases.max() > 1.5 * np.median(phases)


def test_flicker_jitters_brightness_from_frame_to_frame():
    out = degrade(CLIP, "flicker", 1.0)
    ratio = _luma(out).mean(axis=(1, 2)) / _luma(CLIP).mean(axis=(1, 2))
    assert np.abs(np.diff(ratio)).mean() > 0.1  # about +-6 % or more, alternating


def test_freeze_holds_one_frame_then_jumps_on():
    out = degrade(CLIP, "freeze", 1.0, seed=4)
    held = [t for t in range(1, len(out)) if np.array_equal(out[t], out[t - 1])]
    assert len(held) >= 0.7 * len(CLIP) - 1
    assert np.array_equal(out[-1], CLIP[-1]) or np.array_equal(out[0], CLIP[0])  # the rest is untouched


def test_salt_pepper_sets_some_pixels_black_or_white():
    out = degrade(np.full((3, 40, 40, 3), 128, np.uint8), "salt_pepper", 1.0)
    hit = (out == 0).all(axis=-1) | (out == 255).all(axis=-1)
    assert 0.015 < hit.mean() < 0.05


def test_ghosting_blends_each_frame_with_an_earlier_one():
    out = degrade(CLIP, "ghosting", 1.0).astype(np.float64)
    expected = 0.5 * CLIP[5].astype(np.float64) + 0.5 * CLIP[2].astype(np.float64)
    assert np.abs(out[5] - expected).max() <= 1.0


def test_posterize_leaves_few_levels():
    out = degrade(CLIP, "posterize", 1.0)
    assert len(np.unique(out)) <= 6 < len(np.unique(CLIP))


def test_patch_smear_is_local():
    out = degrade(CLIP, "patch_smear", 1.0, seed=2)
    changed = (out != CLIP).any(axis=(0, 3))
    assert 0.05 < changed.mean() < 0.3


def test_chroma_shift_keeps_luma_and_moves_colour():
    out = degrade(CLIP, "chroma_shift", 1.0)
    assert _mad(_luma(out), _luma(CLIP)) < 0.25 * _mad(out, CLIP)


def test_haze_lowers_contrast():
    assert _luma(degrade(CLIP, "haze", 1.0)).std() < 0.6 * _luma(CLIP).std()


def test_shake_moves_whole_frames():
    out = degrade(CLIP, "shake", 1.0, seed=3)
    moved = [t for t in range(len(out)) if not np.array_equal(out[t], CLIP[t])]
    assert len(moved) >= len(CLIP) // 2


@pytest.mark.parametrize(
    "args, words",
    [
        (("sparkle", 1.0), "unknown degradation 'sparkle'"),
        (("blur", 0.0), "strength must be in"),
        (("blur", 1.5), "strength must be in"),
    ],
)
def test_bad_arguments_are_named(args, words):
    with pytest.raises(ValueError, match=words):
        degrade(CLIP, *args)


def test_bad_frames_are_named():
    with pytest.raises(ValueError, match="uint8"):
        degrade(CLIP.astype(np.float32), "blur")
    with pytest.raises(ValueError, match="at least 2 frames"):
        degrade(CLIP[:1], "freeze")

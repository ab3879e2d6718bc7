"""Segment → latent-frame labels (trainer.latents): hand-worked layouts and an exhaustive cross-check."""

from __future__ import annotations

import itertools

import pytest

from labeler.media.video import plan_segments
from trainer.latents import latent_frame_labels, latent_frame_ranges, num_latent_frames

A, B, TIE = 1, -1, 0


def one_second_segments(num_frames: int, fps: float, labels: list[int]) -> list[tuple[int, int, int]]:
    bounds = plan_segments(num_frames, fps, 1.0)
    assert len(bounds) == len(labels)
    return [(s, e, lab) for (s, e), lab in zip(bounds, labels, strict=True)]


def test_wan_latent_layout():
    # Wan: 1 + (F - 1) / 4 latent frames; 81 frames -> 21, 121 -> 31; r = 8: 121 -> 16.
    assert num_latent_frames(81, 4) == 21
    assert num_latent_frames(121, 4) == 31
    assert num_latent_frames(121, 8) == 16
    assert num_latent_frames(1, 4) == 1
    assert latent_frame_ranges(4, 4) == [(0, 1), (1, 5), (5, 9), (9, 13)]
    assert latent_frame_ranges(3, 8) == [(0, 1), (1, 9), (9, 17)]


def test_16fps_r4_hand_worked():
    # 49 frames at 16 fps: segments [0,16) A, [16,32) tie, [32,49) B (the 1-frame tail merges).
    segments = one_second_segments(49, 16.0, [A, TIE, B])
    out = latent_frame_labels(segments, num_latent_frames(49, 4), 4, 49)
    # latent k>=1 covers [1+4(k-1), 1+4k): k=4 is [13,17) (straddles A|tie), k=8 is [29,33) (tie|B)
    assert out.labels == [A, A, A, A, 0, TIE, TIE, TIE, 0, B, B, B, B]
    assert out.segment_ids == [0, 0, 0, 0, -1, 1, 1, 1, -1, 2, 2, 2, 2]


def test_24fps_r8_hand_worked():
    # 121 frames at 24 fps: [0,24) A, [24,48) B, [48,72) tie, [72,96) A, [96,121) A.
    segments = one_second_segments(121, 24.0, [A, B, TIE, A, A])
    out = latent_frame_labels(segments, num_latent_frames(121, 8), 8, 121)
    # straddlers: k=3 [17,25) A|B, k=6 [41,49) B|tie, k=9 [65,73) tie|A, k=12 [89,97) A|A (same label)
    assert out.labels == [A, A, A, 0, B, B, 0, TIE, TIE, 0, A, A, A, A, A, A]
    assert out.segment_ids == [0, 0, 0, -1, 1, 1, -1, 2, 2, -1, 3, 3, -1, 4, 4, 4]


def test_24fps_r4_hand_worked():
    # 49 frames at 24 fps: [0,24) B, [24,49) A; k=6 is [21,25): straddles.
    segments = one_second_segments(49, 24.0, [B, A])
    out = latent_frame_labels(segments, num_latent_frames(49, 4), 4, 49)
    assert out.labels == [B] * 6 + [0] + [A] * 6
    assert out.segment_ids == [0] * 6 + [-1] + [1] * 6


def test_16fps_r8_hand_worked():
    # 33 frames at 16 fps: [0,16) A, [16,33) B; r = 8: k=2 is [9,17): straddles.
    segments = one_second_segments(33, 16.0, [A, B])
    out = latent_frame_labels(segments, num_latent_frames(33, 8), 8, 33)
    assert out.labels == [A, A, 0, B, B]
    assert out.segment_ids == [0, 0, -1, 1, 1]


def test_ranges_are_clipped_to_the_video_and_frames_past_the_end_are_masked():
    assert latent_frame_ranges(4, 4, num_pixel_frames=7) == [(0, 1), (1, 5), (5, 7), (7, 7)]
    out = latent_frame_labels([(0, 7, A)], 4, 4, 7)
    assert out.labels == [A, A, A, 0]
    assert out.segment_ids == [0, 0, 0, -1]


def test_frames_not_covered_by_any_segment_are_masked():
    out = latent_frame_labels([(0, 6, A)], 3, 4, 9)  # segment stops at 6: [5,9) is half outside
    assert out.labels == [A, A, 0]


def test_bad_segments_raise():
    with pytest.raises(ValueError, match="label"):
        latent_frame_labels([(0, 5, 2)], 2, 4, 5)
    with pytest.raises(ValueError, match="range"):
        latent_frame_labels([(5, 5, A)], 2, 4, 5)
    with pytest.raises(ValueError):
        num_latent_frames(0, 4)


def _brute_force(segments, num_latents, r, num_frames):
    """Pixel by pixel: which segment and label each pixel frame has, then each latent frame's set."""
    owner = {i: (k, lab) for k, (s, e, lab) in enumerate(segments) for i in range(s, e)}
    labels, ids = [], []
    for k in range(num_latents):
        pixels = [0] if k == 0 else list(range(1 + (k - 1) * r, 1 + k * r))
        pixels = [p for p in pixels if p < num_frames]
        owners = [owner.get(p) for p in pixels]
        if not pixels or None in owners or len({lab for _, lab in owners}) != 1:
            labels.append(0)
            ids.append(-1)
        else:
            labels.append(owners[0][1])
            ids.append(owners[0][0] if len({seg for seg, _ in owners}) == 1 else -1)
    return labels, ids


@pytest.mark.parametrize(("fps", "r"), [(16.0, 4), (24.0, 4), (16.0, 8), (24.0, 8)])
def test_exhaustive_against_pixel_by_pixel_reference(fps, r):
    checked = 0
    for num_frames in range(1, 130, 3):
        bounds = plan_segments(num_frames, fps, 1.0)
        patterns = itertools.product((A, B, TIE), repeat=len(bounds)) if len(bounds) <= 4 else [
            tuple((A, B, TIE)[(i * 7 + j) % 3] for j in range(len(bounds))) for i in range(9)
        ]  # fmt: skip
        for labels in patterns:
            segments = [(s, e, lab) for (s, e), lab in zip(bounds, labels, strict=True)]
            n_lat = num_latent_frames(num_frames, r)
            out = latent_frame_labels(segments, n_lat, r, num_frames)
            assert (out.labels, out.segment_ids) == _brute_force(segments, n_lat, r, num_frames), (
                num_frames,
                labels,
            )
            checked += 1
    assert checked > 300

"""benchmarks/family_b.py (the independent artifact family) and benchmarks/cross_family.py's scoring:
artifacts are deterministic, visible and where they should be; the score follows the judge's own
label rule and probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.cross_family import fit_mode, score
from benchmarks.family_b import FAMILY_B_KINDS, render_artifact
from tests.conftest import textured_frames

LOCAL = [k for k in FAMILY_B_KINDS if k != "stutter"]


@pytest.mark.parametrize("kind", list(FAMILY_B_KINDS))
def test_artifacts_are_deterministic_and_visible(kind):
    frames = textured_frames(12, h=96, w=128, seed=4)
    once = render_artifact(frames, kind, 0.8, seed=3)
    assert np.array_equal(once, render_artifact(frames, kind, 0.8, seed=3))
    assert once.shape == frames.shape and once.dtype == np.uint8
    changed = np.abs(once.astype(int) - frames.astype(int)).mean(axis=(0, 3)) > 1.0
    assert changed.mean() > 0.02  # a visible share of the picture changes
    if kind in LOCAL:  # ... and a local artifact leaves most of it alone
        assert changed.mean() < 0.5


def test_stutter_holds_frames():
    frames = textured_frames(8, h=32, w=48, seed=1)
    held = render_artifact(frames, "stutter", 0.3, seed=0)
    assert np.array_equal(held[1], held[0]) and np.array_equal(held[2], frames[2])


def test_score_uses_the_judges_rule_and_probabilities():
    from labeler.judges.metrics.judge import _probabilities

    model = {"coefficients": {"s": 1.0}, "margin": 1.0, "temperature": 2.0}
    feats = [{"s": 3.0}, {"s": -0.5}, {"s": 0.2}, {"s": -2.0}]
    labels = ["A", "A", "tie", "tie"]
    out = score(model, feats, labels, kinds=["warp", "soft", "tie", "tie"])
    # A: S=3 > m -> A (right); A: S=-0.5 -> tie, forced choice B (wrong); ties: 0.2 -> tie, -2 -> B.
    assert out["accuracy_no_ties"] == 0.5 and out["tie_recall"] == 0.5 and out["decided_coverage"] == 0.5
    p = _probabilities(3.0, 1.0, 2.0)
    assert p[0] > 0.8 and out["n_no_ties"] == 2 and out["ece"] is not None
    assert out["per_kind"] == {"warp": 1.0, "soft": 0.0}


def test_fit_mode_separates_a_learnable_family():
    rng = np.random.default_rng(0)
    labels = list(rng.choice(["A", "B", "tie"], size=300))
    sign = {"A": 1.0, "B": -1.0, "tie": 0.0}
    feats = [{"detail": 3 * sign[y] + rng.normal(0, 0.5)} for y in labels]
    model = fit_mode(feats, labels, with_ref=False)
    assert model["coefficients"]["detail"] > 0
    assert score(model, feats, labels)["accuracy_no_ties"] > 0.95

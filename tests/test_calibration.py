"""Expected calibration error (labeler.agreement.metrics.expected_calibration_error), checked
against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.agreement.metrics import expected_calibration_error


def test_perfectly_confident_and_right_is_zero():
    probs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert expected_calibration_error(probs, np.array([0, 1, 2])) == 0.0


def test_hand_computed_bins():
    # Two items at confidence 0.9 (one right), two at 0.55 (both right):
    # bin 0.9: |0.5 - 0.9| * 2/4 = 0.2; bin 0.5: |1.0 - 0.55| * 2/4 = 0.225.
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.25, 0.55, 0.2], [0.2, 0.25, 0.55]])
    truth = np.array([0, 1, 1, 2])
    assert expected_calibration_error(probs, truth) == pytest.approx(0.425)


def test_confidence_one_lands_in_the_top_bin_and_empty_input_is_none():
    probs = np.array([[1.0, 0.0, 0.0]])
    assert expected_calibration_error(probs, np.array([1])) == pytest.approx(1.0)
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)) is None

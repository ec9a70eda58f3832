"""Calibration fitted on validation scores: Platt and isotonic make over-confident scores honest
(ECE, Brier), keep the ranking, and the ECE itself is computed as documented."""

from __future__ import annotations

import numpy as np
import pytest

from osteoflag.training.calibrate import (
    Calibration,
    brier,
    expected_calibration_error,
    fit,
    quality,
)


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities q; scores pushed towards 0 and 1 (logit tripled)."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < q).astype(int)
    z = 3.0 * np.log(q / (1 - q))
    return y, 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("method", [Calibration.PLATT, Calibration.ISOTONIC])
def test_calibration_fitted_on_validation_repairs_fresh_scores(method: Calibration) -> None:
    y_val, s_val = _overconfident(3000, seed=0)
    y_new, s_new = _overconfident(3000, seed=1)
    mapping = fit(method, y_val, s_val, "validation")
    assert mapping is not None and mapping.method == method.value
    before, after = quality(y_new, s_new), quality(y_new, mapping.apply(s_new))
    assert before["ece"] > 0.1 and after["ece"] < 0.05
    assert after["brier"] < before["brier"]
    if method is Calibration.PLATT:  # strictly increasing: the ranking is untouched
        assert np.array_equal(np.argsort(s_new), np.argsort(mapping.apply(s_new)))


def test_none_keeps_the_score() -> None:
    assert fit(Calibration.NONE, np.array([0, 1]), np.array([0.2, 0.7]), "v") is None


def test_ece_and_brier_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 0.55])
    # bins: [0,0.1) holds 2 with mean 0.05, observed 0 -> 0.05; 0.95 alone -> 0.05; 0.55 -> 0.45
    assert expected_calibration_error(y, p) == pytest.approx((2 * 0.05 + 0.05 + 0.45) / 4)
    assert brier(y, p) == pytest.approx((0.0025 * 2 + 0.0025 + 0.2025) / 4)

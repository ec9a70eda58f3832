"""The logistic probe: scikit-learn's fit in numpy and scipy, averaged with the booster."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from osteoflag.inference.linear import read_linear
from osteoflag.training import probe
from osteoflag.training.classifier import BoosterConfig, train_classifier
from tests.helpers.trees import split_columns

CONFIG = BoosterConfig(min_data_in_leaf=5, max_rounds=60, early_stopping=10)


def _data(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """30 columns on different scales; the label depends on columns 2 and 25."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 30)) * np.linspace(0.1, 10.0, 30) + 3.0
    z = x[:, 2] / x[:, 2].std() + x[:, 25] / x[:, 25].std()
    return x, ((z + rng.normal(size=n)) > 0).astype(int)


def test_the_probe_is_scikit_learns_logistic_regression_on_standardised_features() -> None:
    x, y = _data()
    term, strength = probe.fit_view(x[:400], y[:400], x[400:], y[400:])
    assert strength in probe.STRENGTHS
    mean, scale = x[:400].mean(axis=0), x[:400].std(axis=0)
    reference = LogisticRegression(C=strength, tol=1e-10, max_iter=10_000)
    reference.fit((x[:400] - mean) / scale, y[:400])
    expected = reference.decision_function((x - mean) / scale)
    np.testing.assert_allclose(term.raw(x), expected, atol=1e-4)
    np.testing.assert_allclose(term.contributions(x).sum(axis=1) + term.intercept, term.raw(x))


def test_views_get_one_probe_each_and_their_log_odds_are_averaged() -> None:
    x, y = _data()
    both = probe.fit_views(x[:400], y[:400], x[400:], y[400:], (0, 20))
    first, _ = probe.fit_view(x[:400, :20], y[:400], x[400:, :20], y[400:])
    second, _ = probe.fit_view(x[:400, 20:], y[:400], x[400:, 20:], y[400:])
    np.testing.assert_allclose(both.raw(x), (first.raw(x[:, :20]) + second.raw(x[:, 20:])) / 2)


def test_the_classifier_averages_booster_and_probe_log_odds_and_saves_both(
    tmp_path: Path,
) -> None:
    x, y = _data()
    config = replace(CONFIG, view_starts=(0, 20), linear=True)
    fitted = train_classifier(x[:400], y[:400], x[400:], y[400:], config)
    trees = replace(config, linear=False)
    booster = train_classifier(x[:400], y[:400], x[400:], y[400:], trees).booster
    term = probe.fit_views(x[:400], y[:400], x[400:], y[400:], (0, 20))
    raw = booster.predict(x, num_iteration=booster.best_iteration, raw_score=True)
    np.testing.assert_allclose(fitted.predict(x), expit((raw + term.raw(x)) / 2), atol=1e-9)
    assert all(max(c) < 20 or min(c) >= 20 for c in split_columns(fitted.booster) if c)

    section = fitted.save(tmp_path)
    assert section == {"file": "classifier.txt", "kind": "lightgbm", "linear": "linear.json"}
    assert fitted.linear is not None
    reloaded = read_linear(tmp_path / "linear.json", 30)
    np.testing.assert_allclose(reloaded.raw(x), fitted.linear.raw(x))
    assert json.loads((tmp_path / "linear.json").read_text())["kind"] == "logistic"


def test_without_linear_the_classifier_is_the_booster_alone(tmp_path: Path) -> None:
    x, y = _data()
    fitted = train_classifier(x[:400], y[:400], x[400:], y[400:], CONFIG)
    assert fitted.linear is None
    assert fitted.save(tmp_path) == {"file": "classifier.txt", "kind": "lightgbm"}
    assert not (tmp_path / "linear.json").exists()

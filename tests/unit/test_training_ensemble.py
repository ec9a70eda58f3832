"""Boosters fitted on separate views merge into one LightGBM model that scores their mean."""

from __future__ import annotations

from dataclasses import replace

import lightgbm as lgb
import numpy as np
import pytest

from osteoflag.errors import TrainingError
from osteoflag.training import ensemble
from osteoflag.training.classifier import BoosterConfig, train_classifier
from tests.helpers.trees import split_columns

CONFIG = BoosterConfig(min_data_in_leaf=5, max_rounds=60, early_stopping=10)


def _data(n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """30 columns; the label depends on column 2 (first view) and column 25 (second view)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 30))
    return x, ((x[:, 2] + x[:, 25] + rng.normal(size=n)) > 0).astype(int)


def test_the_merged_model_scores_the_members_mean_and_keeps_their_contributions() -> None:
    x, y = _data()
    fit, val = slice(0, 400), slice(400, None)
    a = train_classifier(x[fit, :20], y[fit], x[val, :20], y[val], CONFIG).booster
    b = train_classifier(x[fit, 20:], y[fit], x[val, 20:], y[val], CONFIG).booster
    merged = ensemble.merge_average([a, b], [0, 20], 30)
    assert ensemble.check_merge(merged, [a, b], [0, 20], x) <= ensemble.MERGE_MAX_ERROR
    # served probability: the sigmoid of the mean raw score, through a save and load
    raw = (
        a.predict(x[:, :20], num_iteration=a.best_iteration, raw_score=True)
        + b.predict(x[:, 20:], num_iteration=b.best_iteration, raw_score=True)
    ) / 2
    reloaded = lgb.Booster(model_str=merged.model_to_string())
    np.testing.assert_allclose(reloaded.predict(x), 1 / (1 + np.exp(-raw)), atol=1e-9)
    # per-feature contributions (what localisation weights maps by) are the members' halves
    both = merged.predict(x[:5], pred_contrib=True)
    own_a = a.predict(x[:5, :20], pred_contrib=True, num_iteration=a.best_iteration)
    own_b = b.predict(x[:5, 20:], pred_contrib=True, num_iteration=b.best_iteration)
    np.testing.assert_allclose(both[:, :20], own_a[:, :20] / 2, atol=1e-12)
    np.testing.assert_allclose(both[:, 20:30], own_b[:, :10] / 2, atol=1e-12)
    np.testing.assert_allclose(both[:, 30], (own_a[:, 20] + own_b[:, 10]) / 2, atol=1e-12)


def test_training_by_views_never_mixes_views_in_one_tree() -> None:
    x, y = _data()
    config = replace(CONFIG, view_starts=(0, 20))
    booster = train_classifier(x[:400], y[:400], x[400:], y[400:], config).booster
    columns = [c for c in split_columns(booster) if c]
    assert all(max(c) < 20 or min(c) >= 20 for c in columns)
    assert any(max(c) < 20 for c in columns) and any(min(c) >= 20 for c in columns)
    assert booster.num_feature() == 30
    plain = train_classifier(x[:400], y[:400], x[400:], y[400:], CONFIG).booster
    assert any(max(c) >= 20 and min(c) < 20 for c in split_columns(plain) if c)


def test_a_merge_that_does_not_fit_its_columns_is_refused() -> None:
    x, y = _data()
    a = train_classifier(x[:400, :20], y[:400], x[400:, :20], y[400:], CONFIG).booster
    b = train_classifier(x[:400, 20:], y[:400], x[400:, 20:], y[400:], CONFIG).booster
    with pytest.raises(TrainingError, match="its columns 0-25 are 25"):
        ensemble.merge_average([a, b], [0, 25], 30)
    with pytest.raises(TrainingError, match="view starts"):
        ensemble.merge_average([a, b], [20, 0], 30)
    merged = ensemble.merge_average([a, b], [0, 20], 30)
    with pytest.raises(TrainingError, match="members' mean raw score"):
        ensemble.check_merge(merged, [b, a], [0, 10], x)


def test_members_of_single_leaf_trees_merge_too() -> None:
    x, y = _data()
    stump = replace(CONFIG, min_data_in_leaf=10_000, max_rounds=5, early_stopping=5)
    a = train_classifier(x[:400, :20], y[:400], x[400:, :20], y[400:], stump).booster
    b = train_classifier(x[:400, 20:], y[:400], x[400:, 20:], y[400:], CONFIG).booster
    assert not any(split_columns(a))  # no tree of ``a`` splits
    merged = ensemble.merge_average([a, b], [0, 20], 30)
    assert ensemble.check_merge(merged, [a, b], [0, 20], x) <= ensemble.MERGE_MAX_ERROR

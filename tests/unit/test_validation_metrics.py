"""The numpy metrics behind evaluate/validate/adapt, checked against scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from osteoflag.validation import metrics


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_scikit_learn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.uniform(0, 1, 300) * 0.5 + y * 0.3, 1)  # coarse: many ties
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_of_one_class_is_nan() -> None:
    assert np.isnan(metrics.auc([1, 1, 1], [0.1, 0.5, 0.9]))


def test_binary_metrics_confusion_and_sensitivity() -> None:
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1])
    m = metrics.clinical_metrics(y, p, 0.5)
    assert m["confusion"] == [[1, 1], [1, 2]]
    assert m["sensitivity"] == m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(0.5)


def test_threshold_table_is_the_highest_threshold_reaching_each_target() -> None:
    y = np.array([1] * 10 + [0] * 10)
    p = np.r_[np.linspace(0.95, 0.5, 10), np.linspace(0.6, 0.0, 10)]
    rows = {row["target_sensitivity"]: row for row in metrics.threshold_table(y, p)}
    assert rows[0.8]["threshold"] == pytest.approx(p[7])  # 8 of 10 positives at or above
    assert rows[0.8]["sensitivity"] == pytest.approx(0.8)
    assert rows[0.9]["threshold"] == pytest.approx(p[8])
    assert rows[0.95]["threshold"] == pytest.approx(p[9])  # 0.95 needs all 10
    assert rows[0.95]["specificity"] == pytest.approx(float((p[10:] < p[9]).mean()))


def test_bootstrap_over_groups_is_wider_than_over_copies() -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(20), 10)  # 20 radiographs, 10 near-identical copies each
    y = np.repeat(rng.integers(0, 2, 20), 10)
    p = np.clip(np.repeat(rng.uniform(0, 1, 20), 10) + 0.2 * y, 0, 1)
    by_image = metrics.bootstrap_ci(y, p, 0.5)
    by_group = metrics.bootstrap_ci(y, p, 0.5, [str(g) for g in groups])
    width = {k: v[1] - v[0] for k, v in by_group.items()}
    assert all(width[k] > (by_image[k][1] - by_image[k][0]) for k in ("auc", "accuracy"))
    assert set(by_group) == {"auc", "accuracy", "sensitivity", "specificity"}


def test_reliability_bins_count_every_image() -> None:
    p = np.array([0.0, 0.05, 0.5, 0.99, 1.0])
    y = np.array([0, 0, 1, 1, 1])
    rows = metrics.reliability(y, p)
    assert sum(row["n"] for row in rows) == len(p)
    assert rows[-1]["n"] == 2 and rows[-1]["fracture_rate"] == 1.0
    assert rows[0]["mean_probability"] == pytest.approx(0.025)

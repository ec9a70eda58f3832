"""Grouped, stratified folds: groups never split, both labels in every fold, all rows once."""

from __future__ import annotations

import numpy as np
import pytest

from osteoflag.validation.folds import group_folds
from osteoflag.validation.metrics import youden_threshold


@pytest.mark.parametrize("seed", range(3))
def test_groups_stay_whole_and_every_fold_has_both_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, 60)  # a few big clusters of augmented copies, many singletons
    groups = [f"g{k}" for k, size in enumerate(sizes) for _ in range(size)]
    group_label = rng.integers(0, 2, 60)
    labels = np.array([group_label[int(g[1:])] for g in groups])
    folds = group_folds(labels, groups, 5, seed)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(len(labels)))
    names = np.asarray(groups)
    for fit, test in folds:
        assert not set(names[fit]) & set(names[test])
        assert set(labels[test].tolist()) == {0, 1}


def test_youden_threshold_separates_a_clean_split() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    assert youden_threshold(y, p) == pytest.approx(0.4)

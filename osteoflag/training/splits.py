"""Group-aware, label-stratified splits: no source radiograph on both sides, ever."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from osteoflag.training.backbones import TrainingError


def group_folds(
    labels: Sequence[int], groups: Sequence[str], n_splits: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(train_idx, test_idx)`` per fold of a shuffled StratifiedGroupKFold."""
    y = np.asarray(labels)
    g = np.asarray(groups)
    if len(set(g.tolist())) < n_splits:
        raise TrainingError(f"{len(set(g.tolist()))} groups cannot make {n_splits} folds")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train_idx, test_idx in folds.split(np.zeros(len(y)), y, g):
        assert_disjoint(g, train_idx, test_idx)
        yield train_idx, test_idx


def group_holdout(
    labels: Sequence[int], groups: Sequence[str], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One grouped split holding out about ``fraction`` of the data (for early stopping)."""
    n_splits = max(2, round(1.0 / fraction))
    return next(group_folds(labels, groups, n_splits, seed))


def assert_disjoint(groups: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Fail loudly if any group sits on both sides (a split bug would inflate every metric)."""
    shared = set(groups[a].tolist()) & set(groups[b].tolist())
    if shared:
        raise TrainingError(
            f"{len(shared)} groups on both sides of a split, e.g. {sorted(shared)[0]}"
        )

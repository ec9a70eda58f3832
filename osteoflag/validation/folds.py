"""Grouped, label-stratified folds in numpy (``adapt`` runs without scikit-learn).

Every group (patient, study, near-duplicate cluster) lands in exactly one fold, so no fold is
judged on copies of what it was fitted on. Groups are dealt largest first to the fold holding
the fewest images of the group's label, which puts at least one group of each label in every
fold whenever each label has at least as many groups as there are folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Indices = npt.NDArray[np.int_]


def group_folds(
    labels: npt.NDArray[np.int_], groups: Sequence[str], n_folds: int, seed: int = 0
) -> list[tuple[Indices, Indices]]:
    """``(fit, test)`` row indices of each fold."""
    names = np.asarray(groups)
    uniq, inverse = np.unique(names, return_inverse=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    sizes = np.bincount(inverse)
    order = order[np.argsort(-sizes[order], kind="stable")]
    per_label = np.zeros((n_folds, 2), dtype=int)
    fold_of_group = np.empty(len(uniq), dtype=int)
    for g in order:
        members = labels[inverse == g]
        label = 1 if members.mean() >= 0.5 else 0
        fold = min(range(n_folds), key=lambda f: (per_label[f, label], per_label[f].sum()))
        fold_of_group[g] = fold
        per_label[fold, 0] += int((members == 0).sum())
        per_label[fold, 1] += int((members == 1).sum())
    fold_of_row = fold_of_group[inverse]
    rows = np.arange(len(labels))
    return [(rows[fold_of_row != f], rows[fold_of_row == f]) for f in range(n_folds)]


def group_holdout(
    labels: npt.NDArray[np.int_], groups: Sequence[str], n_folds: int = 5, seed: int = 0
) -> tuple[Indices, Indices]:
    """One grouped ``(fit, held_out)`` split holding out about ``1 / n_folds`` of the groups."""
    return group_folds(labels, groups, n_folds, seed)[0]

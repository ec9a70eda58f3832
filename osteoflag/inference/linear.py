"""A linear term added to the LightGBM booster's log-odds: a logistic probe on the features.

A bundle whose ``classifier`` section names a ``linear`` file scores each image as
``sigmoid(booster raw score + intercept + (x - mean) . coef)``. Training fits the probe (an
L2-regularised logistic regression on standardised features, one per view of
``features.views``) and halves both parts, so the log-odds are the mean of the two models':
on the cross-source protocols the probe carried across sources better than the trees, the trees
ranked better within one (see the README). The per-feature contribution of the term,
``coef * (x - mean)``, is exact, so it adds to the booster's TreeSHAP contributions for the
evidence map. :mod:`osteoflag.training.probe` fits it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from osteoflag.errors import BundleError

KIND: Final = "logistic"

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LinearTerm:
    """``intercept + (x - mean) . coef``: log-odds added to the booster's raw score."""

    intercept: float
    mean: Floats
    coef: Floats

    def raw(self, x: npt.NDArray[np.floating]) -> Floats:
        """The term's log-odds for each row of features."""
        return np.asarray((x - self.mean) @ self.coef + self.intercept, dtype=np.float64)

    def contributions(self, x: npt.NDArray[np.floating]) -> Floats:
        """Each feature's share of :meth:`raw` (rows x features), intercept left out."""
        return np.asarray((x - self.mean) * self.coef, dtype=np.float64)

    def scaled(self, factor: float) -> LinearTerm:
        """The same term with its log-odds multiplied by ``factor``."""
        return LinearTerm(self.intercept * factor, self.mean, self.coef * factor)

    def write(self, path: Path) -> None:
        """Save as JSON (``kind``, ``intercept``, ``mean``, ``coef``)."""
        document = {
            "kind": KIND,
            "intercept": self.intercept,
            "mean": self.mean.tolist(),
            "coef": self.coef.tolist(),
        }
        path.write_text(json.dumps(document) + "\n", encoding="utf-8")


def read_linear(path: Path, count: int) -> LinearTerm:
    """Load and check a term for ``count`` features; a bad file is a :class:`BundleError`."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        kind, intercept = document["kind"], float(document["intercept"])
        mean = np.asarray(document["mean"], dtype=np.float64)
        coef = np.asarray(document["coef"], dtype=np.float64)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{path}: linear term cannot be read: {exc!r}") from exc
    if kind != KIND:
        raise BundleError(f"{path}: linear term kind {kind!r}, expected {KIND!r}")
    if mean.shape != (count,) or coef.shape != (count,):
        raise BundleError(
            f"{path}: linear term has {mean.size} means and {coef.size} coefficients, "
            f"the manifest declares {count} features"
        )
    if not (math.isfinite(intercept) and np.isfinite(mean).all() and np.isfinite(coef).all()):
        raise BundleError(f"{path}: linear term holds a value that is not finite")
    return LinearTerm(intercept, mean, coef)

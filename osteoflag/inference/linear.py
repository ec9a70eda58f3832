"""A linear term added to the LightGBM booster's log-odds: a logistic probe on the features.

A bundle whose ``classifier`` section names a ``linear`` file scores each image as
``sigmoid(booster raw score + intercept + (x - mean) . coef)``. Training fits the probe (an
L2-regularised logistic regression on standardised features, one per view of
``features.views``) and halves both parts, so the log-odds are the mean of the two models':
on the cross-source protocols the probe carried across sources better than the trees, the trees
ranked better within one (see the README). The per-feature contribution of the term,
``coef * (x - mean)``, is exact, so it adds to the booster's TreeSHAP contributions for the
evidence map. The fit is numpy and scipy (L-BFGS), so ``adapt`` refits it without scikit-learn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import expit

from osteoflag.errors import BundleError
from osteoflag.validation import metrics

KIND: Final = "logistic"
#: Inverse L2 strengths tried per view (scikit-learn's ``C``: the log loss summed over rows
#: plus ``|w|^2 / (2 C)``); the one with the best validation AUC is kept.
STRENGTHS: Final = (0.00003, 0.0001, 0.0003, 0.001, 0.003)

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

    def probabilities(self, booster_raw: Floats, x: npt.NDArray[np.floating]) -> Floats:
        """Fracture probabilities from the booster's raw scores of ``x`` plus this term."""
        return np.asarray(expit(booster_raw + self.raw(x)), dtype=np.float64)

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


def _logistic(x: Floats, y: Floats, w: Floats, strength: float) -> tuple[float, Floats]:
    """Intercept and coefficients minimising the log loss summed over rows weighted by ``w``
    plus ``|coef|^2 / (2 strength)`` (the intercept is not penalised)."""

    def loss(theta: Floats) -> tuple[float, Floats]:
        z = x @ theta[1:] + theta[0]
        value = w @ (np.logaddexp(0.0, z) - y * z) + theta[1:] @ theta[1:] / (2 * strength)
        residual = w * (expit(z) - y)
        gradient = np.concatenate([[residual.sum()], x.T @ residual + theta[1:] / strength])
        return float(value), gradient

    found = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B")
    return float(found.x[0]), np.asarray(found.x[1:], dtype=np.float64)


def fit_view(
    x_fit: npt.NDArray[np.floating],
    y_fit: npt.NDArray[np.int_],
    x_val: npt.NDArray[np.floating],
    y_val: npt.NDArray[np.int_],
    weight: Floats | None = None,
) -> tuple[LinearTerm, float]:
    """The probe on one view (rows weighted by ``weight`` if given), its strength chosen by
    validation AUC; also that strength."""
    mean = x_fit.mean(axis=0, dtype=np.float64)
    scale = x_fit.std(axis=0, dtype=np.float64)
    scale[scale == 0] = 1.0
    z_fit, z_val = (x_fit - mean) / scale, (x_val - mean) / scale
    y = y_fit.astype(np.float64)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    fits = [(strength, *_logistic(z_fit, y, w, strength)) for strength in STRENGTHS]
    aucs = [metrics.auc(y_val, z_val @ weights) for _, _, weights in fits]
    strength, intercept, weights = fits[int(np.argmax(aucs))]  # first of equals: the strongest
    return LinearTerm(intercept, mean, weights / scale), strength


def fit_views(
    x_fit: npt.NDArray[np.floating],
    y_fit: npt.NDArray[np.int_],
    x_val: npt.NDArray[np.floating],
    y_val: npt.NDArray[np.int_],
    starts: Sequence[int] = (0,),
    weight: Floats | None = None,
) -> LinearTerm:
    """One probe per view (columns from each start to the next), their log-odds averaged."""
    ends = [*starts[1:], x_fit.shape[1]]
    views = [
        fit_view(x_fit[:, a:b], y_fit, x_val[:, a:b], y_val, weight)[0]
        for a, b in zip(starts, ends, strict=True)
    ]
    n = len(views)
    return LinearTerm(
        sum(v.intercept for v in views) / n,
        np.concatenate([v.mean for v in views]),
        np.concatenate([v.coef for v in views]) / n,
    )

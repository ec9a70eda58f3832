"""Fitting the logistic probe that :mod:`osteoflag.inference.linear` serves.

An L2-regularised logistic regression on standardised features, one per view, its strength
chosen by validation AUC. It is numpy and SciPy (L-BFGS on scikit-learn's objective; a test
holds it to scikit-learn's result), so ``adapt`` refits it in the runtime install, which has no
scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import expit

from osteoflag.inference.linear import LinearTerm
from osteoflag.training.ensemble import view_columns
from osteoflag.validation import metrics

#: Inverse L2 strengths tried per view (scikit-learn's ``C``: the log loss summed over rows
#: plus ``|w|^2 / (2 C)``); the one with the best validation AUC is kept.
STRENGTHS: Final = (0.00003, 0.0001, 0.0003, 0.001, 0.003)

Floats = npt.NDArray[np.float64]


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


def moments(x: npt.NDArray[np.floating]) -> tuple[Floats, Floats]:
    """Each column's mean and standard deviation (1 for a constant column), to standardise by."""
    mean = x.mean(axis=0, dtype=np.float64)
    scale = x.std(axis=0, dtype=np.float64)
    scale[scale == 0] = 1.0
    return mean, scale


def fit_view(
    x_fit: npt.NDArray[np.floating],
    y_fit: npt.NDArray[np.int_],
    x_val: npt.NDArray[np.floating],
    y_val: npt.NDArray[np.int_],
    weight: Floats | None = None,
) -> tuple[LinearTerm, float]:
    """The probe on one view (rows weighted by ``weight`` if given), its strength chosen by
    validation AUC; also that strength."""
    mean, scale = moments(x_fit)
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
    views = [
        fit_view(x_fit[:, view], y_fit, x_val[:, view], y_val, weight)[0]
        for view in view_columns(starts, x_fit.shape[1])
    ]
    n = len(views)
    return LinearTerm(
        sum(v.intercept for v in views) / n,
        np.concatenate([v.mean for v in views]),
        np.concatenate([v.coef for v in views]) / n,
    )

"""Fitting the cell term that :mod:`osteoflag.inference.cellterm` serves.

Every cell of an image's map is labelled with the image's label, and one L2-regularised
logistic model on standardised ``log(1 + value)`` cell channels is fitted so that the mean of
each image's ``top`` highest cell logits predicts its label (multiple-instance learning with a
top-k pool); its strength is chosen by validation AUC. Like the probe it is numpy and SciPy
(L-BFGS, exact gradient through the top-k selection), so ``adapt`` refits it in the runtime
install.
"""

from __future__ import annotations

import logging
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import expit

from osteoflag.inference.cellterm import CellTerm, cell_inputs
from osteoflag.training.probe import moments
from osteoflag.validation import metrics

logger = logging.getLogger(__name__)

#: Highest cell logits averaged into the image's (top 4 and 16 measured within 0.01 of it).
TOP: Final = 8
#: Inverse L2 strengths tried (the log loss summed over images plus ``|w|^2 / (2 C)``).
STRENGTHS: Final = (0.01, 0.1)
#: L-BFGS iterations per strength.
MAX_ITERATIONS: Final = 300

Floats = npt.NDArray[np.float64]


def _top(z: npt.NDArray[np.float32], top: int) -> npt.NDArray[np.intp]:
    return np.argpartition(-z, top - 1, axis=1)[:, :top]


def _start(cells: npt.NDArray[np.float32], y: Floats, w: Floats) -> Floats:
    """Where L-BFGS starts: from zero every cell ties and the top-k gradient points nowhere in
    particular (it can stop at once), so along the difference of the labels' mean cells."""
    means = cells.mean(axis=1, dtype=np.float64)
    positive, negative = y == 1, y == 0
    direction = np.average(means[positive], axis=0, weights=w[positive]) - np.average(
        means[negative], axis=0, weights=w[negative]
    )
    return np.concatenate([[0.0], 0.1 * direction / max(float(np.linalg.norm(direction)), 1e-12)])


def _fit(
    cells: npt.NDArray[np.float32],
    y: Floats,
    w: Floats,
    strength: float,
    top: int,
    start: Floats,
) -> tuple[float, Floats]:
    """Intercept and coefficients on standardised ``cells`` (N, k, C) for one strength."""

    def loss(theta: Floats) -> tuple[float, Floats]:
        coef = theta[1:].astype(np.float32)
        z = cells @ coef
        picked = _top(z, top)
        s = np.take_along_axis(z, picked, 1).mean(axis=1, dtype=np.float64) + theta[0]
        value = w @ (np.logaddexp(0.0, s) - y * s) + theta[1:] @ theta[1:] / (2 * strength)
        residual = w * (expit(s) - y)
        inputs = np.take_along_axis(cells, picked[:, :, None], 1)  # (N, top, C)
        share = (residual / top).astype(np.float32)
        gradient = np.einsum("n,nkc->c", share, inputs).astype(np.float64)
        return float(value), np.concatenate([[residual.sum()], gradient + theta[1:] / strength])

    found = minimize(
        loss,
        start,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": MAX_ITERATIONS},
    )
    return float(found.x[0]), np.asarray(found.x[1:], dtype=np.float64)


def fit_cells(
    maps_fit: npt.NDArray[np.floating],
    y_fit: npt.NDArray[np.int_],
    maps_val: npt.NDArray[np.floating],
    y_val: npt.NDArray[np.int_],
    weight: Floats | None = None,
    top: int = TOP,
) -> CellTerm:
    """The cell term on ``maps_fit`` (N, C, h, w), rows weighted by ``weight`` if given, its
    strength chosen by AUC on ``maps_val``; it pools the ``top`` highest cells, or all of a
    map that has fewer."""
    cells = cell_inputs(maps_fit)
    if top < 1:
        raise ValueError(f"top {top} is not a count of cells")
    top = min(top, cells.shape[1])
    mean, scale = moments(cells.reshape(-1, cells.shape[2]))
    cells -= mean.astype(np.float32)
    cells /= scale.astype(np.float32)
    y = y_fit.astype(np.float64)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    start = _start(cells, y, w)
    terms = []
    for strength in STRENGTHS:
        intercept, coef = _fit(cells, y, w, strength, top, start)
        terms.append(CellTerm(intercept, mean, coef / scale, top))
    aucs = [metrics.auc(y_val, term.raw(maps_val)) for term in terms]
    logger.info(
        "cell term fitted",
        extra={
            "action": "fit_cells",
            "strengths": list(STRENGTHS),
            "validation_auc": [round(a, 4) for a in aucs],
        },
    )
    return terms[int(np.argmax(aucs))]  # first of equals: the strongest

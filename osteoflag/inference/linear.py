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
from typing import Any, Final

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


@dataclass(frozen=True)
class TermFile:
    """What a logistic term's JSON file at ``path`` holds (``role`` names it in errors): its
    ``kind``-checked document and its finite ``intercept``, ``mean`` and ``coef``."""

    path: Path
    role: str
    document: dict[str, Any]
    intercept: float
    mean: Floats
    coef: Floats

    @classmethod
    def read(cls, path: Path, kind: str, role: str) -> TermFile:
        """Read ``path`` as the ``role`` (e.g. "linear term") of kind ``kind``; a bad file is
        a :class:`BundleError` naming it."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            found, intercept = document["kind"], float(document["intercept"])
            mean = np.asarray(document["mean"], dtype=np.float64)
            coef = np.asarray(document["coef"], dtype=np.float64)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise BundleError(f"{path}: {role} cannot be read: {exc!r}") from exc
        if found != kind:
            raise BundleError(f"{path}: {role} kind {found!r}, expected {kind!r}")
        if not (math.isfinite(intercept) and np.isfinite(mean).all() and np.isfinite(coef).all()):
            raise BundleError(f"{path}: {role} holds a value that is not finite")
        return cls(path, role, document, intercept, mean, coef)

    def sized(self, count: int, what: str) -> None:
        """Refuse means or coefficients that are not ``count`` long (``what``: where that count
        comes from, for the message)."""
        if self.mean.shape != (count,) or self.coef.shape != (count,):
            raise BundleError(
                f"{self.path}: {self.role} has {self.mean.size} means and {self.coef.size} "
                f"coefficients, {what}"
            )


def read_linear(path: Path, count: int) -> LinearTerm:
    """Load and check a term for ``count`` features; a bad file is a :class:`BundleError`."""
    found = TermFile.read(path, KIND, "linear term")
    found.sized(count, f"the manifest declares {count} features")
    return LinearTerm(found.intercept, found.mean, found.coef)

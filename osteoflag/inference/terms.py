"""The terms a bundle adds to its booster's raw score, combined in one place.

A bundle's log-odds are LightGBM's raw score plus its linear term on the pooled features
(:mod:`osteoflag.inference.linear`) and its cell term on the backbone's map
(:mod:`osteoflag.inference.cellterm`), whichever it has. The daemon serves them and training
scores every fit with them, so both go through :class:`Terms`: what training measured is what
the daemon computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from osteoflag.inference.cellterm import CellTerm
from osteoflag.inference.linear import LinearTerm

Floats = npt.NDArray[np.float64]


class MissingMaps(ValueError):
    """The cell term was asked to score rows without their maps."""


@dataclass(frozen=True)
class Terms:
    """A bundle's linear and cell terms, either of them absent."""

    linear: LinearTerm | None = None
    cells: CellTerm | None = None

    @property
    def empty(self) -> bool:
        """Whether the booster's own score is the classifier's."""
        return self.linear is None and self.cells is None

    def log_odds(
        self,
        booster_raw: Floats,
        features: npt.NDArray[np.floating],
        maps: npt.NDArray[np.floating] | None,
    ) -> Floats:
        """The booster's raw scores of ``features`` plus every term; the cell term reads each
        row's map in ``maps`` (:class:`MissingMaps` when they are missing)."""
        raw = np.asarray(booster_raw, dtype=np.float64)
        if self.linear is not None:
            raw = raw + self.linear.raw(features)
        if self.cells is not None:
            if maps is None or len(maps) != len(features):
                raise MissingMaps("the cell term needs each row's map")
            raw = raw + self.cells.raw(maps)
        return raw

"""A cell probe added to the classifier's log-odds: a logistic model on each cell of the map.

The pooled features average every position of the backbone's last map, so a small fracture
is diluted by the rest of the film. A bundle whose ``classifier`` section names a ``cells``
file also scores every cell of the ``maps`` output: each cell's channels are taken as
``log(1 + value)``, standardised, and go through one logistic model shared by all cells; the
image's share of the log-odds is the mean of its ``top`` highest cell logits (a
multiple-instance score: a fracture needs only a few cells). Training fitted it with every
cell labelled with its image's label (:mod:`osteoflag.training.cellfit`). Measured across
sources in the README; the file is JSON, so serving needs only numpy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from osteoflag.errors import BundleError
from osteoflag.inference.linear import TermFile

KIND: Final = "cell-topk-logistic"
#: Rows whose cells are scored at once (a 384 px EfficientNet map is 144 cells x 1280
#: channels: 0.7 MB a row in float32).
CHUNK: Final = 64

Floats = npt.NDArray[np.float64]


def cell_inputs(maps: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """``log(1 + value)`` of each cell's channels: (N, C, h, w) maps -> (N, h * w, C)."""
    n, channels = maps.shape[:2]
    cells = np.log1p(np.maximum(np.asarray(maps, dtype=np.float32), 0.0))
    return np.ascontiguousarray(cells.reshape(n, channels, -1).transpose(0, 2, 1))


@dataclass(frozen=True)
class CellTerm:
    """``intercept + mean of the top cell values of (log1p(cell) - mean) . coef``."""

    intercept: float
    mean: Floats
    coef: Floats
    top: int

    def cell_logits(self, maps: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Each cell's logit without the intercept, (N, h * w), a few rows at a time."""
        coef = self.coef.astype(np.float32)
        shift = np.float32(self.mean @ self.coef)
        cells = int(np.prod(maps.shape[2:]))
        out = np.empty((len(maps), cells), dtype=np.float32)
        for start in range(0, len(maps), CHUNK):
            out[start : start + CHUNK] = cell_inputs(maps[start : start + CHUNK]) @ coef - shift
        return out

    def raw(self, maps: npt.NDArray[np.floating]) -> Floats:
        """The term's log-odds for each image's (C, h, w) map."""
        logits = self.cell_logits(maps)
        top = -np.partition(-logits, self.top - 1, axis=1)[:, : self.top]
        return np.asarray(top.mean(axis=1, dtype=np.float64) + self.intercept, dtype=np.float64)

    def shares(self, maps: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Each cell's share of :meth:`raw` (N, h, w), intercept left out: a top cell's logit
        over ``top``, zero elsewhere."""
        logits = self.cell_logits(maps)
        keep = np.argpartition(-logits, self.top - 1, axis=1)[:, : self.top]
        out = np.zeros_like(logits)
        np.put_along_axis(out, keep, np.take_along_axis(logits, keep, 1) / self.top, 1)
        return out.reshape(len(maps), *maps.shape[2:])

    def scaled(self, factor: float, shift: float = 0.0) -> CellTerm:
        """The same term with its log-odds multiplied by ``factor`` (> 0), then ``shift`` added."""
        if not factor > 0:
            raise ValueError(f"a cell term's factor must be positive, got {factor}")
        return CellTerm(self.intercept * factor + shift, self.mean, self.coef * factor, self.top)

    def write(self, path: Path) -> None:
        """Save as JSON (``kind``, ``top``, ``intercept``, ``mean``, ``coef``)."""
        document = {
            "kind": KIND,
            "top": self.top,
            "intercept": self.intercept,
            "mean": self.mean.tolist(),
            "coef": self.coef.tolist(),
        }
        path.write_text(json.dumps(document) + "\n", encoding="utf-8")


def read_cells(path: Path, channels: int, cells: int) -> CellTerm:
    """Load and check a term for a map of ``channels`` x ``cells``; a bad file is a
    :class:`BundleError` naming it."""
    found = TermFile.read(path, KIND, "cell term")
    found.sized(channels, f"the backbone's map has {channels} channels")
    top = found.document.get("top")
    if not isinstance(top, int) or not 1 <= top <= cells:
        raise BundleError(f"{path}: cell term 'top' {top!r} is not a count from 1 to {cells}")
    return CellTerm(found.intercept, found.mean, found.coef, top)

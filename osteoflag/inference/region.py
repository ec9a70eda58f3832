"""Where the model points on an image it flags, in the source image's own pixel grid.

A module of its own, like :mod:`osteoflag.inference.labels`, so that the objects we write
(SR SCOORD, presentation state, summary image) can carry a region without importing the
model code that computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Region:
    """The peak of the model's map and a box around its hot area.

    Pixel coordinates of the source image: x to the right, y down, origin at the top-left
    pixel; ``box`` is ``(x0, y0, x1, y1)`` with ``x0 <= x1`` and ``y0 <= y1``, and holds ``peak``.
    ``heat``, when present, is the model's evidence over the whole source image at its own
    (coarser) resolution, 0..1 with 1 at the peak: stretch it to the image to draw it.
    """

    peak: tuple[int, int]
    box: tuple[int, int, int, int]
    heat: npt.NDArray[np.float32] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        x, y = self.peak
        if min(x0, y0, x, y) < 0:
            raise ValueError(f"region has negative coordinates: peak {self.peak}, box {self.box}")
        if x0 > x1 or y0 > y1:
            raise ValueError(f"region box {self.box} is not (x0, y0, x1, y1) with x0<=x1, y0<=y1")
        if not (x0 <= x <= x1 and y0 <= y <= y1):
            raise ValueError(f"region peak {self.peak} lies outside its box {self.box}")

    def as_json(self) -> dict[str, list[int]]:
        """The ``region`` object of ``infer --json``."""
        return {"peak": list(self.peak), "box": list(self.box)}

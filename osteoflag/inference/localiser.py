"""A localiser trained on fracture boxes: a per-cell logistic model over the backbone's grid.

The classifier's own evidence points at film edges and markers more than at fractures
(``docs/localisation.md``), so a bundle may carry a second, small model trained for *where*:
the bundle's backbone is run on tiles of an enlarged image (:mod:`osteoflag.inference.cells`),
every cell's feature vector, with (when the localiser has a ``context``) the mean feature
vector of the cells around it and its position in the image, goes through a logistic model
fitted on cells labelled by hand-drawn fracture boxes, and the cell probabilities are the map
the region is taken from (peak, and the hot area around it as the box) like the evidence map.
A localiser may average several passes: its map of the mirrored image (flipped back), and
other tilings with their own cell models, resized to its grid; the peak of one pass lands
where its tile borders and noise favour, the average keeps where the passes agree
(``docs/localisation.md``). The file is JSON (``localiser.json``: standardisation, weights,
intercept, tiling, context, mirror, other tilings), so serving needs only numpy and SciPy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy.ndimage import uniform_filter, zoom

from osteoflag.errors import BundleError
from osteoflag.inference.cells import MapRunner, Tiling, cell_features
from osteoflag.inference.localise import FloatMap, region_from_map
from osteoflag.inference.pixels import DisplayImage, InputSpec
from osteoflag.inference.region import Region

LOCALISER_FILE: Final = "localiser.json"
KIND: Final = "cell-logistic"
#: Position features appended to each cell's channels: row and column (0..1 over the image)
#: and the distance to the image centre.
POSITION_FEATURES: Final = 3


def cell_inputs(grid: npt.NDArray[np.float32], context: int = 0) -> npt.NDArray[np.float32]:
    """The model inputs of a (C, rows, columns) feature grid, one row per cell: its C
    channels, with ``context`` their mean over the ``context`` x ``context`` cells around it
    (edges repeated) as C more, then its position."""
    features = [grid]
    if context:
        features.append(uniform_filter(grid, size=(1, context, context), mode="nearest"))
    _, rows, columns = grid.shape
    yy, xx = np.meshgrid(np.linspace(0, 1, rows), np.linspace(0, 1, columns), indexing="ij")
    features.append(np.stack([yy, xx, np.hypot(yy - 0.5, xx - 0.5)]).astype(np.float32))
    stacked = np.concatenate(features)
    return np.ascontiguousarray(stacked.reshape(len(stacked), -1).T)


def input_count(channels: int, context: int) -> int:
    """How many inputs :func:`cell_inputs` gives a cell of a map with ``channels``."""
    return channels * (2 if context else 1) + POSITION_FEATURES


@dataclass(frozen=True)
class CellModel:
    """Logistic regression on standardised cell inputs."""

    mean: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float64]
    intercept: float

    def __post_init__(self) -> None:
        sizes = {self.mean.shape, self.scale.shape, self.weights.shape}
        if len(sizes) != 1 or self.mean.ndim != 1:
            raise ValueError(f"mean, scale and weights differ in shape: {sorted(sizes)}")
        if not np.all(self.scale > 0):
            raise ValueError("every scale must be positive")

    def probabilities(self, inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Fracture probability of each row of cell inputs."""
        z = ((inputs - self.mean) / self.scale) @ self.weights + self.intercept
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def check_context(context: int) -> None:
    """Refuse a neighbourhood without a middle cell: ``context`` is 0 (none) or odd."""
    if context < 0 or (context and context % 2 == 0):
        raise ValueError(f"context {context}: must be 0 or an odd number of cells")


def mirrored(display: DisplayImage) -> DisplayImage:
    """``display`` flipped left to right."""
    return DisplayImage(
        np.ascontiguousarray(display.pixels[:, ::-1]), display.frames, display.notes
    )


def resized(heat: FloatMap, grid: tuple[int, int]) -> FloatMap:
    """A pass's (rows, columns) map brought to ``grid`` (bilinear, corners aligned)."""
    if heat.shape == grid:
        return heat
    factors = (grid[0] / heat.shape[0], grid[1] / heat.shape[1])
    return np.asarray(zoom(heat, factors, order=1, output=np.float32, grid_mode=False))


def averaged(passes: Iterable[tuple[FloatMap, bool]], grid: tuple[int, int]) -> FloatMap:
    """The localiser's map from its passes' maps, each with whether it read the mirrored
    image: flipped back where it did, resized onto ``grid``, averaged. Serving and the
    cross-validation both call it, so the figures are those of the served map."""
    heats = [
        resized(np.ascontiguousarray(heat[:, ::-1] if flipped else heat), grid)
        for heat, flipped in passes
    ]
    return np.asarray(np.mean(heats, axis=0), dtype=np.float32)


@dataclass(frozen=True)
class TiledModel:
    """A cell model and the tiling whose grid it reads."""

    tiling: Tiling
    model: CellModel

    def heat(
        self, display: DisplayImage, spec: InputSpec, run: MapRunner, context: int
    ) -> FloatMap:
        """The (rows, columns) map of cell fracture probabilities of one image."""
        grid = cell_features(display, spec, self.tiling, run)
        if input_count(grid.shape[0], context) != self.model.weights.shape[0]:
            raise BundleError(
                f"localiser expects {self.model.weights.shape[0]} inputs a cell, the backbone's "
                f"map of {grid.shape[0]} channels gives {input_count(grid.shape[0], context)}"
            )
        inputs = cell_inputs(grid, context)
        return self.model.probabilities(inputs).reshape(self.tiling.grid).astype(np.float32)


@dataclass(frozen=True)
class Localiser:
    """Cell models, each with the tiling whose grid it reads, and the neighbourhood they also
    see (``context`` cells a side, 0 for none); with ``mirror`` each also reads the mirrored
    image. Every pass's map is averaged on the first part's grid."""

    parts: tuple[TiledModel, ...]
    context: int = 0
    mirror: bool = False

    def __post_init__(self) -> None:
        check_context(self.context)
        if not self.parts:
            raise ValueError("a localiser needs at least one tiling and its model")

    @property
    def tiling(self) -> Tiling:
        """The tiling whose grid the passes are averaged on (the first part's)."""
        return self.parts[0].tiling

    @property
    def passes(self) -> int:
        """Tiled backbone runs per image: each tiling's tiles, twice with ``mirror``."""
        tiles = sum(part.tiling.tiles**2 for part in self.parts)
        return tiles * (2 if self.mirror else 1)

    def heat(self, display: DisplayImage, spec: InputSpec, run: MapRunner) -> FloatMap:
        """The (rows, columns) map of cell fracture probabilities of one image, averaged
        over its passes."""
        views = (
            ((display, False), (mirrored(display), True)) if self.mirror else ((display, False),)
        )
        return averaged(
            (
                (part.heat(image, spec, run, self.context), flipped)
                for part in self.parts
                for image, flipped in views
            ),
            self.tiling.grid,
        )

    def region(self, display: DisplayImage, spec: InputSpec, run: MapRunner) -> Region | None:
        """The region of one image, in its own pixels."""
        return region_from_map(self.heat(display, spec, run), self.tiling.spec(spec), display.size)

    def to_json(self) -> dict[str, Any]:
        """The document ``localiser.json`` holds."""
        first, *others = self.parts
        return {
            "kind": KIND,
            **_part_json(first),
            "context": self.context,
            "mirror": self.mirror,
            "others": [_part_json(part) for part in others],
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()) + "\n", encoding="utf-8")


def _part_json(part: TiledModel) -> dict[str, Any]:
    return {
        "tiles": part.tiling.tiles,
        "stride": part.tiling.stride,
        "mean": part.model.mean.tolist(),
        "scale": part.model.scale.tolist(),
        "weights": part.model.weights.tolist(),
        "intercept": part.model.intercept,
    }


def _part(document: dict[str, Any], spec: InputSpec, cells: tuple[int, int]) -> TiledModel:
    return TiledModel(
        Tiling(int(document["tiles"]), int(document["stride"]), spec.size, cells),
        CellModel(
            np.asarray(document["mean"], dtype=np.float64),
            np.asarray(document["scale"], dtype=np.float64),
            np.asarray(document["weights"], dtype=np.float64),
            float(document["intercept"]),
        ),
    )


def load_localiser(path: Path, spec: InputSpec, cells: tuple[int, int]) -> Localiser:
    """Read ``localiser.json`` for a backbone of input ``spec`` whose map has ``cells``."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document["kind"] != KIND:
            raise ValueError(f"kind {document['kind']!r} is not {KIND!r}")
        # context, mirror and others are absent in localisers from before they existed
        others = [_part(other, spec, cells) for other in document.get("others", [])]
        localiser = Localiser(
            (_part(document, spec, cells), *others),
            int(document.get("context", 0)),
            bool(document.get("mirror", False)),
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: localiser cannot be read: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: invalid localiser: {exc}") from exc
    return localiser

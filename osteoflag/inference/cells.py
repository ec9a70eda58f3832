"""A finer grid of backbone feature vectors: the bundle's backbone run on overlapping tiles.

The backbone's input is fixed (224x224 for the default bundle) and its last map is coarse
(7x7, one cell per 32 px). To place a fracture more finely, the image is resized to a larger
square and cut into ``tiles`` x ``tiles`` tiles of the backbone's input size, ``stride`` pixels
apart (a multiple of one cell, so every tile's cells fall on one global grid). Each tile's map
is put at its place and cells seen by several tiles are averaged, giving one feature vector per
cell of a (G, G) grid over the enlarged image, G = (tile + (tiles - 1) * stride) / cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from osteoflag.inference.pixels import DisplayImage, FloatArray, InputSpec, model_input

#: Runs the backbone on a (N, 3, H, W) batch and returns its maps (N, C, h, w).
MapRunner = Callable[[FloatArray], FloatArray]


def check_tiles(tiles: int) -> None:
    """Refuse a tiling without a tile."""
    if tiles < 1:
        raise ValueError(f"tiles {tiles}: must be 1 or more")


@dataclass(frozen=True)
class Tiling:
    """``tiles`` per side, ``stride`` input pixels apart, over the backbone's input ``tile``
    (height, width) whose last map has ``cells`` (rows, columns)."""

    tiles: int
    stride: int
    tile: tuple[int, int]
    cells: tuple[int, int]

    def __post_init__(self) -> None:
        check_tiles(self.tiles)
        if self.tiles > 1 and self.stride > min(self.tile):
            raise ValueError(f"stride {self.stride} leaves gaps between {self.tile} tiles")
        for side, cells in zip(self.tile, self.cells, strict=True):
            if cells < 1 or side % cells:
                raise ValueError(f"a {side} px tile does not divide into {cells} cells")
            if self.tiles > 1 and (self.stride < 1 or self.stride % (side // cells)):
                raise ValueError(f"stride {self.stride} is not a positive multiple of a cell")

    @property
    def cell_pixels(self) -> tuple[int, int]:
        """One cell's (height, width) in input pixels."""
        return self.tile[0] // self.cells[0], self.tile[1] // self.cells[1]

    @property
    def size(self) -> tuple[int, int]:
        """The (height, width) the image is resized to before tiling."""
        extra = (self.tiles - 1) * self.stride
        return self.tile[0] + extra, self.tile[1] + extra

    @property
    def grid(self) -> tuple[int, int]:
        """The global grid's (rows, columns)."""
        (height, width), (ch, cw) = self.size, self.cell_pixels
        return height // ch, width // cw

    def spec(self, base: InputSpec) -> InputSpec:
        """The bundle's input contract at the enlarged size (for resizing and mapping back)."""
        return replace(base, size=self.size)


def cell_features(
    display: DisplayImage, spec: InputSpec, tiling: Tiling, run: MapRunner
) -> npt.NDArray[np.float32]:
    """The (C, rows, columns) feature grid of one image."""
    image = model_input(display, tiling.spec(spec))
    (th, tw), (ch, cw) = tiling.tile, tiling.cell_pixels
    origins = [
        (i * tiling.stride, j * tiling.stride)
        for i in range(tiling.tiles)
        for j in range(tiling.tiles)
    ]
    batch = np.stack([image[:, y : y + th, x : x + tw] for y, x in origins])
    maps = run(np.ascontiguousarray(batch))
    if maps.shape[2:] != tiling.cells:
        raise ValueError(f"backbone map is {maps.shape[2:]}, the tiling expects {tiling.cells}")
    rows, columns = tiling.grid
    total = np.zeros((maps.shape[1], rows, columns), dtype=np.float32)
    count = np.zeros((rows, columns), dtype=np.float32)
    h, w = tiling.cells
    for (y, x), tile_map in zip(origins, maps, strict=True):
        r, c = y // ch, x // cw
        total[:, r : r + h, c : c + w] += tile_map
        count[r : r + h, c : c + w] += 1.0
    return total / count

"""Fit, cross-validate and ship the cell localiser (:mod:`osteoflag.inference.localiser`).

Cells of the tiled grid are labelled by the fracture boxes: a cell is positive when a box
covers at least :data:`COVERED` of it or holds a box's centre (so every box has a cell). The
logistic model is fitted on every positive cell and a fixed random share of the negatives
(they are ~98 % of the cells). Figures are grouped K-fold over radiographs: the augmented
copies of one film, under whichever source stems, are never on both sides. The pointing game
and its baselines are those of :mod:`osteoflag.training.localisation`.

``python -m osteoflag.training.localiser --bundle DIR --data DIR`` prints the cross-validated
tables (``--tiles``, ``--stride``, ``--no-position``, ``--c``, ``--context``, ``--other-tiles``,
``--mirror`` reproduce the variants in ``docs/localisation.md``); ``osteoflag add-localiser``
fits on every image and ships it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from osteoflag.errors import BundleError, TrainingError
from osteoflag.inference.cells import Tiling, cell_features
from osteoflag.inference.localiser import (
    POSITION_FEATURES,
    CellModel,
    Localiser,
    TiledModel,
    averaged,
    cell_inputs,
    input_count,
    mirrored,
)
from osteoflag.inference.maps import MAPS_OUTPUT
from osteoflag.inference.pixels import load_display, model_input
from osteoflag.inference.predictor import Predictor
from osteoflag.training.localisation import (
    Box,
    Case,
    baselines,
    region_score,
    summarise,
)

#: A cell is positive when a box covers at least this fraction of it (or holds a box centre).
COVERED: Final = 0.3
#: Share of the negative cells the model is fitted on (all positives are kept).
NEGATIVE_SHARE: Final = 0.3
#: Inverse L2 strength of the logistic model (chosen by grouped CV, docs/localisation.md).
INVERSE_L2: Final = 0.001
#: Cells a side of the neighbourhood whose mean each cell also sees (0: none; the default
#: bundle's localiser uses 5, docs/localisation.md).
CONTEXT: Final = 0
#: Cells per side the tiling aims at: 4 adjacent tiles of 7 cells at 224 px (the grid chosen
#: in docs/localisation.md); a backbone with a larger map gets fewer tiles, which also bounds
#: the memory of a fit (4 tiles at 384 px, 48x48 cells with context 5, hold 6.3 GB of cell
#: inputs for 531 images).
GRID_CELLS: Final = 28
FOLDS: Final = 5
#: Columns of cell inputs whose spread is computed at once (bounds that step's extra memory).
SPREAD_COLUMNS: Final = 128
SUBSETS: Final = ("all", "no_multiregion_duplicates", "flagged")


@dataclass(frozen=True)
class Grid:
    """One case's (C, rows, columns) feature grid, its source image's size, whether the
    bundle flags it (only flagged images get a region when served) and the seconds the tiled
    backbone took."""

    features: npt.NDArray[np.float32]
    size: tuple[int, int]
    flagged: bool
    seconds: float


def default_tiles(cells: tuple[int, int]) -> int:
    """Tiles per side that bring a map of ``cells`` closest to :data:`GRID_CELLS` per side."""
    return max(1, round(GRID_CELLS / max(cells)))


def tiling_for(predictor: Predictor, tiles: int | None = None, stride: int | None = None) -> Tiling:
    """The tiling of ``predictor``'s backbone: ``tiles`` per side (by default
    :func:`default_tiles`), adjacent unless ``stride``."""
    size, cells = predictor.bundle.input_spec.size, predictor.map_cells
    count = default_tiles(cells) if tiles is None else tiles
    return Tiling(count, size[0] if stride is None else stride, size, cells)


def cell_targets(
    boxes: Sequence[Box], size: tuple[int, int], grid: tuple[int, int]
) -> npt.NDArray[np.bool_]:
    """(rows, columns) booleans: the cells a box covers enough of, or whose cell holds its
    centre; ``size`` is the source image's (rows, columns), boxes in its pixels."""
    rows, columns = size
    grid_rows, grid_columns = grid
    ys = np.arange(grid_rows + 1) * rows / grid_rows
    xs = np.arange(grid_columns + 1) * columns / grid_columns
    covered = np.zeros(grid, dtype=np.float64)
    centres = np.zeros(grid, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        over_y = np.clip(np.minimum(ys[1:], y1) - np.maximum(ys[:-1], y0), 0, None) / ys[1]
        over_x = np.clip(np.minimum(xs[1:], x1) - np.maximum(xs[:-1], x0), 0, None) / xs[1]
        covered = np.maximum(covered, np.outer(over_y, over_x))
        r = min(max(int((y0 + y1) / 2 / rows * grid_rows), 0), grid_rows - 1)
        c = min(max(int((x0 + x1) / 2 / columns * grid_columns), 0), grid_columns - 1)
        centres[r, c] = True
    return np.asarray((covered >= COVERED) | centres, dtype=bool)


def feature_grids(
    predictor: Predictor,
    cases: Sequence[Case],
    tiling: Tiling,
    *,
    mirror: bool = False,
    flagged: Sequence[bool] | None = None,
) -> Iterator[Grid]:
    """The tiled backbone's grid of every case in turn (mirrored with ``mirror``), so that
    only one is held at a time. Which cases the bundle flags is classified here unless
    another pass of the same cases gave ``flagged``."""
    if not predictor.localises:
        raise BundleError(
            f"{predictor.bundle.backbone_path}: no '{MAPS_OUTPUT}' output; run add-maps first"
        )
    return _grids(predictor, cases, tiling, mirror, flagged)


def _grids(
    predictor: Predictor,
    cases: Sequence[Case],
    tiling: Tiling,
    mirror: bool,
    flagged: Sequence[bool] | None,
) -> Iterator[Grid]:
    spec = predictor.bundle.input_spec
    for index, case in enumerate(tqdm(cases, desc="tiled grids", unit="img", mininterval=10)):
        display = load_display(case.path)
        started = time.perf_counter()
        grid = cell_features(mirrored(display) if mirror else display, spec, tiling, predictor.maps)
        seconds = time.perf_counter() - started
        if flagged is None:
            [probability] = predictor.probabilities([model_input(display, spec)])
            flags = bool(probability >= predictor.bundle.threshold)
        else:
            flags = flagged[index]
        yield Grid(grid, display.size, flags, seconds)


@dataclass(frozen=True)
class CellDataset:
    """What the fits read, built once from the grids: every case's cell inputs
    (N, cells, inputs) and targets (N, cells), with the grids' metadata. The inputs are
    float16, which halves the memory of a fine grid with context (36x36 cells of 2 x 1,280
    channels: 3.5 GB for 531 images) and is far finer than the standardised inputs' spread."""

    inputs: npt.NDArray[np.float16]
    targets: npt.NDArray[np.bool_]
    grid: tuple[int, int]
    context: int
    sizes: list[tuple[int, int]]
    flagged: list[bool]
    seconds_per_image: float


def cell_dataset(
    grids: Iterable[Grid], cases: Sequence[Case], *, position: bool = True, context: int = CONTEXT
) -> CellDataset:
    """The cell inputs and targets of every case, one grid after the other into one array
    filled in place (the grids are float32 and twice the inputs' size)."""
    inputs: npt.NDArray[np.float16] | None = None
    targets: list[npt.NDArray[np.bool_]] = []
    sizes: list[tuple[int, int]] = []
    flagged: list[bool] = []
    seconds = 0.0
    rows = columns = 0
    for index, (grid, case) in enumerate(zip(grids, cases, strict=True)):
        channels, rows, columns = grid.features.shape
        if inputs is None:
            width = input_count(channels, context)
            inputs = np.empty((len(cases), rows * columns, width), dtype=np.float16)
        inputs[index] = cell_inputs(grid.features, context)
        targets.append(cell_targets(case.boxes, grid.size, (rows, columns)).reshape(-1))
        sizes.append(grid.size)
        flagged.append(grid.flagged)
        seconds += grid.seconds
    if inputs is None:
        raise ValueError("no boxed images to run the backbone on")
    if not position:  # the position columns are zeroed, so the fit gives them no weight
        inputs[:, :, -POSITION_FEATURES:] = 0.0
    return CellDataset(
        inputs,
        np.stack(targets),
        (rows, columns),
        context,
        sizes,
        flagged,
        seconds / len(cases),
    )


def fit_cells(
    dataset: CellDataset,
    images: npt.NDArray[np.intp] | None = None,
    *,
    inverse_l2: float = INVERSE_L2,
    seed: int = 0,
) -> CellModel:
    """Standardise, then L2 logistic regression on all positive cells of ``images`` (by
    default every case) and a share of their negatives. Only the kept cells are copied out
    of the dataset."""
    from sklearn.linear_model import LogisticRegression  # the train extra

    count, cells, width = dataset.inputs.shape
    picked = np.arange(count) if images is None else np.asarray(images)
    rows = (picked[:, None] * cells + np.arange(cells)).reshape(-1)
    targets = dataset.targets.reshape(-1)[rows]
    keep = targets | (np.random.default_rng(seed).random(len(targets)) < NEGATIVE_SHARE)
    x = dataset.inputs.reshape(-1, width)[rows[keep]].astype(np.float64)
    y = targets[keep]
    if y.all() or not y.any():
        raise ValueError("the cells need both positive and negative examples")
    # The spread a block of columns at a time: numpy's std holds a copy of its input, which for
    # a fine grid with context is gigabytes; the figures are the same to the bit.
    spreads = [x[:, j : j + SPREAD_COLUMNS].std(axis=0) for j in range(0, width, SPREAD_COLUMNS)]
    mean, scale = x.mean(axis=0), np.concatenate(spreads) + 1e-6
    x -= mean  # in place, for the same reason
    x /= scale
    model = LogisticRegression(C=inverse_l2, max_iter=500).fit(x, y)
    return CellModel(mean, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0]))


@dataclass(frozen=True)
class Pass:
    """Every case's out-of-fold map from one pass: each case scored by its tiling's cell
    model fitted on the other folds' radiographs; ``flipped`` when it read the mirrored image."""

    heats: npt.NDArray[np.float32]  # (N, rows, columns)
    flipped: bool


@dataclass(frozen=True)
class LocaliserFit:
    """The localiser fitted on every case, every pass's out-of-fold maps, and what the first
    pass learnt of the cases (their sizes, whether the bundle flags them)."""

    localiser: Localiser
    passes: list[Pass]
    folds: int
    sizes: list[tuple[int, int]]
    flagged: list[bool]
    seconds_per_image: float


def _out_of_fold(
    dataset: CellDataset,
    splits: Sequence[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]],
    models: Sequence[CellModel],
) -> npt.NDArray[np.float32]:
    heats = np.zeros((len(dataset.targets), *dataset.grid), dtype=np.float32)
    for (_, test), model in zip(splits, models, strict=True):
        for i in test:
            heats[i] = model.probabilities(dataset.inputs[i]).reshape(dataset.grid)
    return heats


def fit_localiser(
    predictor: Predictor,
    cases: Sequence[Case],
    tilings: Sequence[Tiling],
    *,
    mirror: bool = False,
    context: int = CONTEXT,
    position: bool = True,
    folds: int = FOLDS,
    inverse_l2: float = INVERSE_L2,
    seed: int = 0,
) -> LocaliserFit:
    """Fit one cell model per tiling on every case, and per grouped fold (by radiograph) for
    the out-of-fold maps, the mirrored images' (``mirror``) scored by their tiling's models.
    One pass's cell inputs are held at a time (3.5 GB for a 36x36 grid with context over 531
    images), so memory does not grow with the passes. The first tiling's grid is the one the
    passes are averaged on."""
    from sklearn.model_selection import GroupKFold  # the train extra

    groups = [case.radiograph for case in cases]
    if len(set(groups)) < folds:  # the grouped CV figures the manifest records need them
        boxes = cases[0].path.parent.parent if cases else "the boxes folder"
        raise TrainingError(
            f"{boxes}: {len(set(groups))} radiographs cannot make {folds} grouped folds; "
            f"the localiser needs boxes on at least {folds}"
        )
    splits = list(GroupKFold(folds).split(np.zeros(len(cases)), groups=groups))
    flagged: list[bool] | None = None  # classified by the first pass, the same for every pass
    sizes: list[tuple[int, int]] = []
    models: list[TiledModel] = []
    passes: list[Pass] = []
    seconds = 0.0
    for tiling in tilings:
        fold_models: list[CellModel] = []
        for flip in (False, True) if mirror else (False,):
            grids = feature_grids(predictor, cases, tiling, mirror=flip, flagged=flagged)
            dataset = cell_dataset(grids, cases, position=position, context=context)
            flagged, sizes = dataset.flagged, dataset.sizes
            if not flip:  # the mirrored images are only scored, never fitted on
                fold_models = [
                    fit_cells(dataset, train, inverse_l2=inverse_l2, seed=seed)
                    for train, _ in tqdm(splits, desc="localiser CV", unit="fold")
                ]
                models.append(TiledModel(tiling, fit_cells(dataset, inverse_l2=inverse_l2)))
            passes.append(Pass(_out_of_fold(dataset, splits, fold_models), flip))
            seconds += dataset.seconds_per_image
            del dataset
    if flagged is None:
        raise ValueError("no tiling to fit the localiser on")
    localiser = Localiser(tuple(models), context, mirror)
    return LocaliserFit(localiser, passes, folds, sizes, flagged, seconds)


def cross_validate(
    fitted: LocaliserFit, cases: Sequence[Case], predictor: Predictor, *, seed: int = 0
) -> dict[str, Any]:
    """Grouped K-fold pointing game: every image's map averaged over its passes as served,
    each pass from fits that never saw its film."""
    from osteoflag.inference.localise import region_from_map

    localiser = fitted.localiser
    spec = localiser.tiling.spec(predictor.bundle.input_spec)
    rng = np.random.default_rng(seed)
    scored: list[dict[str, Any]] = []
    model_seconds = []
    for i, (case, size) in enumerate(zip(cases, fitted.sizes, strict=True)):
        heat = averaged(((p.heats[i], p.flipped) for p in fitted.passes), localiser.tiling.grid)
        started = time.perf_counter()
        region = region_from_map(heat, spec, size)
        model_seconds.append(time.perf_counter() - started)
        if region is None:  # probabilities are positive: never, but the type says it may
            raise ValueError(f"{case.path}: localiser map has no positive cell")
        scores = {"localiser": vars(region_score(region, case, size))}
        scores.update({name: vars(s) for name, s in baselines(region, case, size, rng).items()})
        scored.append({"file": case.path.name, "scores": scores})
    subsets = {
        "all": list(range(len(cases))),
        "no_multiregion_duplicates": [i for i, c in enumerate(cases) if not c.near_duplicate],
        "flagged": [i for i, flagged in enumerate(fitted.flagged) if flagged],
    }
    out: dict[str, Any] = {
        name: summarise([scored[i] for i in picks], [cases[i] for i in picks], seed)
        for name, picks in subsets.items()
        if picks  # no flagged image: no such table
    }
    out["folds"] = fitted.folds
    out["grid"] = list(localiser.tiling.grid)
    out["context"] = localiser.context
    out["mirror"] = localiser.mirror
    out["other_tiles"] = [part.tiling.tiles for part in localiser.parts[1:]]
    out["ms_per_image"] = {
        "tiled_backbone": 1000 * fitted.seconds_per_image,
        "region": 1000 * float(np.mean(model_seconds)),
    }
    return out


def compact(summary: dict[str, Any]) -> dict[str, Any]:
    """The manifest's copy of the figures per method and subset: hit and its interval, the
    interval of its paired difference to the centre, and the box IoU."""
    out: dict[str, Any] = {
        "folds": summary["folds"],
        "grid": summary["grid"],
        "context": summary["context"],
        "mirror": summary["mirror"],
        "other_tiles": summary["other_tiles"],
    }
    for subset in (name for name in SUBSETS if name in summary):
        part = summary[subset]
        out[subset] = {"n": part["n"], "sources": part["sources"]} | {
            method: {
                "hit": round(f["hit"]["mean"], 4),
                "hit_ci95": [round(v, 4) for v in f["hit"]["ci95"]],
                "hit_minus_centre_ci95": [round(v, 4) for v in f["hit_minus_centre"]["ci95"]],
                "iou": round(f["iou"]["mean"], 4),
            }
            for method, f in part["methods"].items()
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Print the cross-validated tables (markdown, or ``--json``)."""
    import json
    from pathlib import Path

    from osteoflag.inference.bundle import load_bundle
    from osteoflag.training.localisation import markdown, read_cases

    parser = argparse.ArgumentParser(prog="python -m osteoflag.training.localiser")
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR")
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="fracture-boxes")
    parser.add_argument(
        "--tiles", type=int, help="tiles per side (default: a grid of about 28 cells per side)"
    )
    parser.add_argument("--stride", type=int, help="input pixels between tiles (default: adjacent)")
    parser.add_argument(
        "--other-tiles", type=int, action="append", default=[], metavar="N",
        help="also average the map of N tiles per side, with its own cell model (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--mirror", action="store_true", help="also average the mirrored image's map"
    )
    parser.add_argument("--no-position", action="store_true", help="cell features only")
    parser.add_argument("--c", type=float, default=INVERSE_L2, help="inverse L2 strength")
    parser.add_argument(
        "--context", type=int, default=CONTEXT, help="neighbourhood cells a side (odd; 0: none)"
    )
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    predictor = Predictor(load_bundle(args.bundle), threads=1, batch_size=16)
    cases = read_cases(args.data)
    tilings = [tiling_for(predictor, args.tiles, args.stride)]
    tilings += [tiling_for(predictor, tiles) for tiles in args.other_tiles]
    fitted = fit_localiser(
        predictor,
        cases,
        tilings,
        mirror=args.mirror,
        context=args.context,
        position=not args.no_position,
        folds=args.folds,
        inverse_l2=args.c,
    )
    summary = cross_validate(fitted, cases, predictor)
    text = (
        json.dumps(summary, indent=2)
        if args.json
        else markdown(summary, [n for n in SUBSETS if n in summary])
    )
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

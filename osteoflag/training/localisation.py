"""Does the region point at the fracture? The pointing game on radiographs with fracture boxes.

``python -m osteoflag.training.localisation --bundle DIR --data DIR`` reads a folder laid out
like ``fracture-boxes`` (``images/``, YOLO ``labels/``, ``images.csv`` with ``source_stem`` and
``near_duplicate_in_multiregion``), computes each image's evidence map whatever its label,
and scores, per method:

- **hit**: the map's peak lies inside a fracture box (the pointing game);
- **IoU**: the region's box against the best-matching fracture box;
- **inside**: the fraction of the region's box that lies inside some fracture box.

Baselines: the image centre, and a uniformly random point (its expected hit rate is the
fraction of the image the boxes cover); both get a box of the method's size around the point.
95 % intervals are percentile bootstraps over radiographs (copies of one film move together,
under whichever source stems), and the same for the paired difference to the centre. Figures go to
``docs/localisation.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from osteoflag.errors import BundleError, TrainingError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.localise import FloatMap, PooledLayout, evidence_map, region_from_map
from osteoflag.inference.pixels import load_display, model_input
from osteoflag.inference.predictor import Predictor
from osteoflag.inference.region import Region
from osteoflag.training.radiographs import radiograph_groups

Box = tuple[float, float, float, float]
BOOTSTRAP: Final = 2000
RANDOM_POINTS: Final = 200
#: Occlusion: a square of the input's mean (0 after normalisation) this size, on this grid.
OCCLUSION_PATCH: Final = 32
#: How far (relative to the image) a box's edge may pass the border: exporters round.
BOX_SLACK: Final = 1e-3


@dataclass(frozen=True)
class Case:
    """One boxed radiograph."""

    path: Path
    stem: str
    radiograph: str  # the film the stem is a copy of (:mod:`radiographs`); groups by this
    near_duplicate: bool
    boxes: tuple[Box, ...]  # (x0, y0, x1, y1), source pixels


@dataclass(frozen=True)
class Score:
    """One method's figures on one image."""

    hit: float
    iou: float
    inside: float


def read_cases(folder: Path) -> list[Case]:
    """The images of ``folder/images.csv`` with their YOLO boxes in pixels, each with its
    radiograph (stems that are one film merged)."""
    with (folder / "images.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    paths = [folder / "images" / row["file"] for row in rows]
    radiographs = radiograph_groups(paths, [row["source_stem"] for row in rows])
    cases = []
    for row, path, radiograph in zip(rows, paths, radiographs, strict=True):
        width, height = float(row["width"]), float(row["height"])
        label = folder / "labels" / (Path(row["file"]).stem + ".txt")
        cases.append(
            Case(
                path,
                row["source_stem"],
                radiograph,
                bool(row["near_duplicate_in_multiregion"]),
                read_boxes(label, width, height),
            )
        )
    return cases


def read_boxes(label: Path, width: float, height: float) -> tuple[Box, ...]:
    """The YOLO boxes of ``label`` (``class x_centre y_centre width height``, each relative
    to the image, in [0, 1]) in pixels of a ``width`` x ``height`` image; blank lines are
    skipped. A line that is not five numbers, or a box reaching outside the image, is refused
    naming the file and line: fitted on, it would teach the localiser cells the box misses."""
    try:
        text = label.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainingError(f"{label}: the image's boxes cannot be read: {exc}") from exc
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{label}:{number}"
        try:
            _, xc, yc, w, h = (float(v) for v in line.split())
        except ValueError as exc:
            raise TrainingError(
                f"{where}: not a YOLO box 'class x_centre y_centre width height': {line!r}"
            ) from exc
        box = (xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2)
        if not (w > 0 and h > 0 and all(-BOX_SLACK <= v <= 1 + BOX_SLACK for v in box)):
            raise TrainingError(f"{where}: box {line.strip()!r} is not inside the image [0, 1]")
        boxes.append((box[0] * width, box[1] * height, box[2] * width, box[3] * height))
    return tuple(boxes)


def _inside(x: float, y: float, boxes: Sequence[Box]) -> bool:
    return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in boxes)


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _overlap(a: Box, b: Box) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def coverage(boxes: Sequence[Box], size: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Mask (rows, columns) of the pixels inside any box."""
    mask = np.zeros(size, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[
            max(0, int(y0)) : max(0, int(np.ceil(y1))), max(0, int(x0)) : max(0, int(np.ceil(x1)))
        ] = True
    return mask


def score(
    point: tuple[float, float], box: Box, boxes: Sequence[Box], mask: npt.NDArray[np.bool_]
) -> Score:
    """Hit, best IoU and fraction inside the boxes for one point and box."""
    ious = [_overlap(box, gt) / (_area(box) + _area(gt) - _overlap(box, gt)) for gt in boxes]
    x0, y0, x1, y1 = (round(v) for v in box)
    area = max(1, (x1 - x0 + 1) * (y1 - y0 + 1))
    inside = float(mask[y0 : y1 + 1, x0 : x1 + 1].sum()) / area
    return Score(float(_inside(*point, boxes)), max(ious), inside)


def _around(point: tuple[float, float], width: float, height: float, size: tuple[int, int]) -> Box:
    """A ``width`` x ``height`` box centred on ``point``, shifted to lie within the image."""
    rows, columns = size
    x0 = min(max(point[0] - width / 2, 0.0), max(0.0, columns - 1 - width))
    y0 = min(max(point[1] - height / 2, 0.0), max(0.0, rows - 1 - height))
    return (x0, y0, x0 + width, y0 + height)


def baselines(
    region: Region, case: Case, size: tuple[int, int], rng: np.random.Generator
) -> dict[str, Score]:
    """Centre and random-point scores with a box the size of ``region``'s."""
    rows, columns = size
    mask = coverage(case.boxes, size)
    width = float(region.box[2] - region.box[0])
    height = float(region.box[3] - region.box[1])
    centre = ((columns - 1) / 2, (rows - 1) / 2)
    out = {"centre": score(centre, _around(centre, width, height, size), case.boxes, mask)}
    randoms = [
        score(p, _around(p, width, height, size), case.boxes, mask)
        for p in zip(
            rng.uniform(0, columns - 1, RANDOM_POINTS),
            rng.uniform(0, rows - 1, RANDOM_POINTS),
            strict=True,
        )
    ]
    out["random"] = Score(
        float(mask.mean()),  # exact expectation of the random point's hit
        float(np.mean([s.iou for s in randoms])),
        float(np.mean([s.inside for s in randoms])),
    )
    return out


def region_score(region: Region, case: Case, size: tuple[int, int]) -> Score:
    """The method's own region against the boxes."""
    x0, y0, x1, y1 = region.box
    box = (float(x0), float(y0), float(x1), float(y1))
    return score(
        (region.peak[0] + 0.5, region.peak[1] + 0.5), box, case.boxes, coverage(case.boxes, size)
    )


def occlusion_map(predictor: Predictor, image: FloatMap) -> FloatMap:
    """Drop of the fracture log-odds when each grid square is set to the input mean."""
    _, height, width = image.shape
    patch = OCCLUSION_PATCH
    cells = [(y, x) for y in range(0, height, patch) for x in range(0, width, patch)]
    batch = [image]
    for y, x in cells:
        occluded = image.copy()
        occluded[:, y : y + patch, x : x + patch] = 0.0
        batch.append(occluded)
    p = np.clip(np.asarray(predictor.probabilities(batch)), 1e-7, 1 - 1e-7)
    logits = np.log(p / (1 - p))
    heat = np.zeros(
        (height // patch + (height % patch > 0), width // patch + (width % patch > 0)), np.float32
    )
    for (y, x), value in zip(cells, logits[1:], strict=True):
        heat[y // patch, x // patch] = logits[0] - value
    return heat


def bootstrap(
    values: npt.NDArray[np.float64], groups: Sequence[str], rng: np.random.Generator
) -> tuple[float, float]:
    """95 % percentile interval of the mean, resampling whole groups."""
    names = sorted(set(groups))
    index = {name: i for i, name in enumerate(names)}
    sums = np.zeros(len(names))
    counts = np.zeros(len(names))
    for value, group in zip(values, groups, strict=True):
        sums[index[group]] += value
        counts[index[group]] += 1
    picks = rng.integers(0, len(names), (BOOTSTRAP, len(names)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarise(rows: list[dict[str, Any]], cases: Sequence[Case], seed: int = 0) -> dict[str, Any]:
    """Mean and bootstrap interval of every method's hit, IoU and inside, and the paired
    hit difference to the centre baseline."""
    rng = np.random.default_rng(seed)
    groups = [case.radiograph for case in cases]
    methods = list(rows[0]["scores"])
    out: dict[str, Any] = {"n": len(rows), "sources": len(set(groups)), "methods": {}}
    for method in methods:
        figures: dict[str, Any] = {}
        for measure in ("hit", "iou", "inside"):
            values = np.asarray([row["scores"][method][measure] for row in rows], dtype=float)
            figures[measure] = {
                "mean": float(values.mean()),
                "ci95": bootstrap(values, groups, rng),
            }
        difference = np.asarray(
            [row["scores"][method]["hit"] - row["scores"]["centre"]["hit"] for row in rows],
            dtype=float,
        )
        figures["hit_minus_centre"] = {
            "mean": float(difference.mean()),
            "ci95": bootstrap(difference, groups, rng),
        }
        out["methods"][method] = figures
    return out


def _plain(maps: FloatMap) -> FloatMap:
    """Unweighted activation (mean over channels): where the backbone fires, classifier aside."""
    return np.asarray(maps.mean(axis=0), dtype=np.float32)


def evaluate(
    predictor: Predictor, cases: Sequence[Case], *, occlusion: bool = False, seed: int = 0
) -> dict[str, Any]:
    """Score every method and baseline on ``cases``; per-image rows and timings included.

    "evidence" is what serving ships (:meth:`Predictor.evidence`); the others are the
    alternatives it was chosen against. An image where some method finds no positive
    evidence anywhere is left out (counted in ``skipped``).
    """
    rng = np.random.default_rng(seed)
    spec = predictor.bundle.input_spec
    rows: list[dict[str, Any]] = []
    kept: list[Case] = []
    timings: dict[str, list[float]] = {"evidence": [], "occlusion": []}
    for case in cases:
        display = load_display(case.path)
        size = display.size
        image = model_input(display, spec)
        feats, maps = predictor.run(image[np.newaxis])
        if maps is None:
            raise BundleError(f"{predictor.bundle.backbone_path}: the bundle has no spatial map")
        probability = predictor.scores(feats, maps)[0]
        started = time.perf_counter()
        [heat] = predictor.evidence(feats, maps)
        region = region_from_map(heat, spec, size)
        timings["evidence"].append(time.perf_counter() - started)
        channels = maps.shape[1]
        averages = PooledLayout.of(channels, channels)
        # the average features are the first C of the last 2C (or all C of a C-feature layout)
        phi_avg = predictor.contributions(feats)[0][-2 * channels :][:channels]
        heats = {
            "evidence, averages only": evidence_map(maps[0], phi_avg, averages),
            "plain activation": _plain(maps[0]),
        }
        if occlusion:
            started = time.perf_counter()
            heats["occlusion"] = occlusion_map(predictor, image)
            timings["occlusion"].append(time.perf_counter() - started)
        regions = {"evidence": region}
        regions.update({name: region_from_map(h, spec, size) for name, h in heats.items()})
        if region is None or any(r is None for r in regions.values()):
            continue
        scores = {name: vars(region_score(r, case, size)) for name, r in regions.items() if r}
        scores.update({name: vars(v) for name, v in baselines(region, case, size, rng).items()})
        rows.append({"file": case.path.name, "probability": probability, "scores": scores})
        kept.append(case)
    return {
        "rows": rows,
        "cases": kept,
        "threshold": predictor.bundle.threshold,
        "ms_per_image": {k: 1000 * float(np.mean(v)) for k, v in timings.items() if v},
        "skipped": len(cases) - len(rows),
    }


def report(result: dict[str, Any]) -> dict[str, Any]:
    """The summary on all images, on those without a multiregion near-duplicate, and on
    those the bundle flags (the only ones that get a region when served)."""
    rows, cases = result["rows"], result["cases"]
    subsets = {
        "all": list(range(len(rows))),
        "no_multiregion_duplicates": [i for i, case in enumerate(cases) if not case.near_duplicate],
        "flagged": [i for i, row in enumerate(rows) if row["probability"] >= result["threshold"]],
    }
    out: dict[str, Any] = {
        name: summarise([rows[i] for i in picks], [cases[i] for i in picks])
        for name, picks in subsets.items()
    }
    out["ms_per_image"] = result["ms_per_image"]
    out["skipped_no_evidence"] = result["skipped"]
    return out


def markdown(
    summary: dict[str, Any],
    subsets: Sequence[str] = ("all", "no_multiregion_duplicates", "flagged"),
) -> str:
    """The tables of docs/localisation.md."""
    lines = []
    for subset in subsets:
        part = summary[subset]
        lines.append(f"\n{subset}: {part['n']} images from {part['sources']} radiographs\n")
        lines.append(
            "| method | pointing hit [95% CI] | hit - centre [95% CI] | box IoU | inside a box |"
        )
        lines.append("|---|---|---|---|---|")
        for method, f in part["methods"].items():
            hit, diff = f["hit"], f["hit_minus_centre"]
            lines.append(
                f"| {method} | {hit['mean']:.3f} [{hit['ci95'][0]:.3f}, {hit['ci95'][1]:.3f}] | "
                f"{diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}] | "
                f"{f['iou']['mean']:.3f} | {f['inside']['mean']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary as JSON (``--json``) or as the markdown tables."""
    parser = argparse.ArgumentParser(prog="python -m osteoflag.training.localisation")
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--data", type=Path, required=True, metavar="DIR", help="fracture-boxes layout"
    )
    parser.add_argument("--occlusion", action="store_true", help="also score occlusion (slow)")
    parser.add_argument("--limit", type=int, metavar="N", help="first N images only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    predictor = Predictor(load_bundle(args.bundle), threads=1, batch_size=64)
    cases = read_cases(args.data)[: args.limit]
    summary = report(evaluate(predictor, cases, occlusion=args.occlusion))
    sys.stdout.write(json.dumps(summary, indent=2) + "\n" if args.json else markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``make bench``: what a flagged image costs on top of its classification.

Prints, for each shipped bundle on 2048x1664 12-bit DX radiographs, the time of the region
(classifier contributions, evidence map, peak and box; the map output itself comes with the
forward pass) beside the classification's, and, when the bundle has a trained localiser, the
localiser's region (its tiled forward passes, cell model, peak and box), which replaces the
evidence map's for fracture results. The objects that carry it (SR, presentation state,
summary image with the evidence drawn) are timed by ``bench.objects``.
Run with ``python -m bench.region`` from the repository root.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.localise import region_from_map
from osteoflag.inference.pixels import DisplayImage, display_from_dataset, model_input
from osteoflag.inference.predictor import Predictor
from testkit.inference_data import dataset, radiograph

BUNDLES = (Path("models/default"), Path("models/vgg16"))
IMAGES = 8


def _ms(samples: list[float]) -> str:
    return (
        f"{1000 * statistics.median(samples):.1f} ms (p95 {1000 * np.percentile(samples, 95):.1f})"
    )


def main() -> int:
    sources = [dataset(radiograph(2048, 1664, seed=i), bits_stored=12) for i in range(IMAGES)]
    displays = [display_from_dataset(source) for source in sources]
    for bundle in BUNDLES:
        _measure(bundle, displays)
    return 0


def _measure(bundle: Path, displays: list[DisplayImage]) -> None:
    predictor = Predictor(load_bundle(bundle), threads=0, batch_size=1)
    if not predictor.localises:
        print(f"NOTICE: {bundle} has no spatial map output: no region to measure")
        return
    spec = predictor.bundle.input_spec
    forward, region_times = [], []
    for display in displays:
        batch = model_input(display, spec)[np.newaxis]
        started = time.perf_counter()
        feats, maps = predictor.run(batch)
        assert maps is not None
        predictor.scores(feats, maps)
        forward.append(time.perf_counter() - started)
        started = time.perf_counter()
        [heat] = predictor.evidence(feats, maps)
        region_from_map(heat, spec, display.size)
        region_times.append(time.perf_counter() - started)
    print(f"region of a flagged image ({predictor.model_id}, 2048x1664 DX, {IMAGES} images):")
    print(f"  classification (forward pass + classifier)  {_ms(forward)}")
    print(f"  region (contributions, evidence map, box)   {_ms(region_times)}")
    localiser = predictor.localiser
    if localiser is not None:
        localiser_times = []
        for display in displays:
            started = time.perf_counter()
            localiser.region(display, spec, predictor.maps)
            localiser_times.append(time.perf_counter() - started)
        passes = localiser.passes
        print(f"  localiser region ({passes} tiled passes, cells)  {_ms(localiser_times)}")


if __name__ == "__main__":
    sys.exit(main())

"""``evaluate``: the documented metrics of a bundle on a labelled folder, through the serving path
(bundle loader, pixels, predictor) that ``validate`` and ``adapt`` share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from osteoflag.errors import UsageError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.training.dataset import find_samples
from osteoflag.validation.metrics import binary_metrics
from osteoflag.validation.scoring import BATCH, score_samples


def evaluate_folder(bundle_dir: Path, data: Path, threads: int = 2) -> dict[str, Any]:
    """The documented metrics of ``bundle_dir`` on ``data/{fracture,nofracture}``.

    Files that are not images or cannot be decoded are logged and left out (``n`` counts the
    scored ones).
    """
    predictor = Predictor(load_bundle(bundle_dir), threads=threads, batch_size=BATCH)
    found = find_samples(data)
    scored = score_samples(predictor, found.samples, desc="evaluate", not_images=found.skipped)
    if not scored.samples:  # as validate: figures of no image would read as a failing model
        raise UsageError(f"--data {data}: no image could be decoded")
    return binary_metrics(scored.labels, scored.probabilities, predictor.bundle.threshold)

"""Scoring a labelled folder through the serving path (bundle loader, pixels, predictor)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from osteoflag.errors import PixelDataError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.pixels import load_display, model_input
from osteoflag.inference.predictor import Predictor
from osteoflag.training.dataset import discover
from osteoflag.training.metrics import binary_metrics

logger = logging.getLogger(__name__)

BATCH = 16


def evaluate_folder(bundle_dir: Path, data: Path, threads: int = 2) -> dict[str, object]:
    """The contract's metrics of ``bundle_dir`` on ``data/{fracture,nofracture}``.

    Files that cannot be decoded are logged and left out (``n`` counts the scored ones).
    """
    bundle = load_bundle(bundle_dir)
    predictor = Predictor(bundle, threads=threads, batch_size=BATCH)
    spec = bundle.input_spec
    samples = discover(data)
    labels: list[int] = []
    probs: list[float] = []
    batch: list[np.ndarray] = []
    batch_labels: list[int] = []

    def flush() -> None:
        probs.extend(predictor.probabilities(batch))
        labels.extend(batch_labels)
        batch.clear()
        batch_labels.clear()

    for sample in tqdm(samples, desc="evaluate", mininterval=10):
        try:
            batch.append(model_input(load_display(sample.path), spec))
        except PixelDataError as exc:
            logger.warning(
                "image skipped",
                extra={"action": "evaluate_skip", "file": str(sample.path), "reason": str(exc)},
            )
            continue
        batch_labels.append(sample.label)
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    return binary_metrics(np.array(labels), np.array(probs), bundle.threshold)

"""One trained model: fine-tuned head + LightGBM + threshold, fitted on given indices.

Used for every protocol (published split, each CV fold, cross-source) so that all reported
numbers come from the same procedure as the committed bundle. Features are always computed
through the exported ONNX graphs with onnxruntime.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from osteoflag.inference import maps as map_output
from osteoflag.inference.bundle import CalibrationSection
from osteoflag.training import calibrate, classifier, export, features, metrics
from osteoflag.training.backbones import FeatureLayout, combine
from osteoflag.training.calibrate import Calibration
from osteoflag.training.classifier import Classifier
from osteoflag.training.finetune import FinetuneConfig, finetune

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrunkOutputs:
    """What the frozen trunk gives per image: two pooled levels and the head's input map."""

    b3: np.ndarray
    b4: np.ndarray
    maps: np.ndarray

    def rows(self, idx: np.ndarray) -> TrunkOutputs:
        return TrunkOutputs(self.b3[idx], self.b4[idx], self.maps[idx])


def with_copies(
    trunk: TrunkOutputs, copies: Sequence[TrunkOutputs], fit_idx: np.ndarray
) -> tuple[TrunkOutputs, np.ndarray, np.ndarray]:
    """Every image's outputs followed by the augmented copies of the ``fit_idx`` images; also
    the rows a fit trains on and, for each row, the image it comes from."""
    parts = [trunk, *(c.rows(fit_idx) for c in copies)]
    n = len(trunk.maps)
    source = np.concatenate([np.arange(n), *(fit_idx for _ in copies)])
    rows = np.concatenate([fit_idx, n + np.arange(len(copies) * len(fit_idx))])
    joined = TrunkOutputs(
        *(np.concatenate([getattr(p, name) for p in parts]) for name in ("b3", "b4", "maps"))
    )
    return joined, rows, source


@dataclass(frozen=True)
class Inputs:
    """The classifier's inputs of a set of images: pooled features ``x`` and, when the
    classifier has a cell term, the head's last maps (float16, [N, C, h, w])."""

    x: np.ndarray
    maps: np.ndarray | None = None

    def __getitem__(self, rows: np.ndarray | slice) -> Inputs:
        return Inputs(self.x[rows], None if self.maps is None else self.maps[rows])

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class FittedModel:
    """A head, booster, calibration and threshold (on the calibrated scale), plus what fitting
    them logged."""

    head: torch.nn.Module
    classifier: Classifier
    threshold: float
    threshold_method: str
    finetune_log: list[dict[str, float]]
    validation: dict[str, object]
    calibration: CalibrationSection | None = None

    def predict(self, inputs: Inputs) -> np.ndarray:
        """Fracture probabilities as served: the classifier's score, calibrated."""
        p = self.classifier.predict(inputs.x, inputs.maps)
        return p if self.calibration is None else self.calibration.apply(p)


def head_onnx_features(
    head: torch.nn.Module, maps: np.ndarray, path: Path, threads: int
) -> np.ndarray:
    """Export the head, check parity, and compute pooled block-5 features with onnxruntime."""
    return head_onnx_outputs(head, maps, path, threads, spatial=False)[0]


def head_onnx_outputs(
    head: torch.nn.Module, maps: np.ndarray, path: Path, threads: int, spatial: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Export the head to ``path``, check parity, and compute its pooled output for every
    image with onnxruntime and, when ``spatial``, its last map in float16 (the graph given the
    bundle's own ``maps`` output, so the cell term trains on the tensor the daemon serves)."""
    example = torch.from_numpy(maps[:1].astype(np.float32))
    export.export_onnx(head, example, path, input_name="map", output_names=("b5",))
    export.check_parity(head, path, maps[: export.PARITY_IMAGES].astype(np.float32), threads)
    if not spatial:
        return features.run_arrays(export.session(path, threads), maps), None
    map_output.expose_maps(path)
    session = export.session(path, threads)
    pooled, spatial_maps = [], []
    for start in range(0, len(maps), 64):
        batch = np.ascontiguousarray(maps[start : start + 64], dtype=np.float32)
        b5, last = session.run(["b5", map_output.MAPS_OUTPUT], {"map": batch})
        pooled.append(b5)
        spatial_maps.append(np.asarray(last, dtype=np.float16))
    return np.concatenate(pooled), np.concatenate(spatial_maps)


def layout_features(layout: FeatureLayout, trunk: TrunkOutputs, b5: np.ndarray) -> np.ndarray:
    """The LightGBM input matrix for ``layout``."""
    return combine(
        layout, torch.from_numpy(trunk.b3), torch.from_numpy(trunk.b4), torch.from_numpy(b5)
    ).numpy()


def fit_model(
    head0: torch.nn.Module,
    trunk: TrunkOutputs,
    labels: np.ndarray,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    layout: FeatureLayout,
    tune: FinetuneConfig | None,
    booster_config: classifier.BoosterConfig,
    target_sensitivity: float | None,
    scratch: Path,
    threads: int,
    calibration: Calibration = Calibration.NONE,
    copies: Sequence[TrunkOutputs] = (),
    untuned: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[FittedModel, Inputs]:
    """Fit on ``fit_idx`` (and the augmented ``copies`` of those images); early-stop, calibrate
    and pick the threshold on ``val_idx``. ``untuned``, the untuned head's output (and maps,
    for a cell term) for every image, spares a frozen fit (no fine-tuning, no copies)
    recomputing it.

    Returns the model and the inputs of *all* samples (so callers can score any set).
    """
    log: list[dict[str, float]] = []
    head = head0
    n = len(trunk.maps)
    if copies:
        trunk, fit_idx, source = with_copies(trunk, copies, fit_idx)
        labels = labels[source]
    if tune is not None and tune.epochs > 0:
        head, log = finetune(head0, trunk.maps, labels, fit_idx, val_idx, tune)
    if untuned is not None and head is head0 and not copies:
        b5, head_maps = untuned
    else:
        b5, head_maps = head_onnx_outputs(
            head, trunk.maps, scratch / "head.onnx", threads, booster_config.cells
        )
    x = layout_features(layout, trunk, b5)
    fitted = classifier.train_classifier(
        x[fit_idx],
        labels[fit_idx],
        x[val_idx],
        labels[val_idx],
        booster_config,
        maps=None if head_maps is None else (head_maps[fit_idx], head_maps[val_idx]),
    )
    inputs = Inputs(x, head_maps)[:n]
    y_val, val = labels[val_idx], inputs[val_idx]
    raw_val = fitted.predict(val.x, val.maps)
    mapping = calibrate.fit(calibration, y_val, raw_val, "validation groups of this fit")
    p_val = raw_val if mapping is None else mapping.apply(raw_val)
    threshold, method = metrics.choose_threshold(y_val, p_val, target_sensitivity)
    validation = metrics.binary_metrics(y_val, p_val, threshold) | calibrate.quality(y_val, p_val)
    return FittedModel(head, fitted, threshold, method, log, validation, mapping), inputs

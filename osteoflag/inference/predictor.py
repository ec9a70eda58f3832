"""Backbone features (onnxruntime) then LightGBM: fracture probability for batches of images.

The session is built once per bundle with every graph optimisation on and the configured
number of intra-op threads (0 lets onnxruntime use one per physical core). The bundle is
checked end to end at construction with one black image, so a backbone whose output does
not match the classifier fails at start-up rather than on the first patient.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from osteoflag.errors import BundleError, PermanentError
from osteoflag.inference.bundle import Bundle
from osteoflag.inference.labels import Label
from osteoflag.inference.pixels import DisplayImage, FloatArray, model_input
from osteoflag.inference.region import Region

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "features"


@dataclass(frozen=True)
class Prediction:
    """One image's result, with the threshold and model that produced it; ``region`` (where
    the model points) only for an image labelled fracture, when the bundle can localise."""

    probability: float
    label: Label
    threshold: float
    model: str
    region: Region | None = None


def session_options(threads: int) -> ort.SessionOptions:
    """CPU session options: all graph optimisations, ``threads`` intra-op threads (0 = auto)."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # onnxruntime's CPU arena stays on (its default): without it every run maps and faults in
    # fresh activation buffers, which cost the EfficientNet bundle at batch 8 a third of its
    # speed (float32 121 -> 184 img/s, INT8 177 -> 345 img/s on 2 cores) for the same peak RSS.
    # It keeps the largest batch's buffers for the process's life: +183 MB for a VGG16 at
    # 224x224 and batch 8, which a smaller ``model.batch_size`` trims.
    return options


class Predictor:
    """A loaded bundle, ready to classify batches of model inputs."""

    def __init__(self, bundle: Bundle, *, threads: int = 0, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.bundle = bundle
        self.batch_size = batch_size
        try:
            self._session = ort.InferenceSession(
                str(bundle.backbone_path),
                sess_options=session_options(threads),
                providers=["CPUExecutionProvider"],
            )
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph
            raise BundleError(f"{bundle.backbone_path}: onnxruntime cannot load it: {exc}") from exc
        try:
            self._booster = lgb.Booster(model_file=str(bundle.classifier_path))
        except lgb.basic.LightGBMError as exc:
            raise BundleError(f"{bundle.classifier_path}: LightGBM cannot load it: {exc}") from exc
        self._check_interfaces()

    def _check_interfaces(self) -> None:
        inputs = {node.name: node for node in self._session.get_inputs()}
        outputs = {node.name for node in self._session.get_outputs()}
        backbone = self.bundle.backbone_path
        if INPUT_NAME not in inputs or len(inputs[INPUT_NAME].shape) != 4:
            raise BundleError(f"{backbone}: needs a rank-4 input named '{INPUT_NAME}'")
        if OUTPUT_NAME not in outputs:
            raise BundleError(f"{backbone}: needs an output named '{OUTPUT_NAME}'")
        count = self.bundle.manifest.features.count
        if self._booster.num_feature() != count:
            raise BundleError(
                f"{self.bundle.classifier_path}: expects {self._booster.num_feature()} features, "
                f"the manifest declares {count}"
            )
        height, width = self.bundle.input_spec.size
        probe = self.features(np.zeros((1, 3, height, width), dtype=np.float32))
        if probe.shape != (1, count):
            raise BundleError(
                f"{backbone}: output '{OUTPUT_NAME}' has shape {probe.shape[1:]}, "
                f"the manifest declares {count} features"
            )

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    def features(self, batch: FloatArray) -> npt.NDArray[np.float32]:
        """Backbone features of a (N, 3, H, W) float32 batch."""
        try:
            result: list[Any] = self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        except Exception as exc:  # onnxruntime's errors have no common public base
            raise PermanentError(f"onnxruntime failed on a batch of {len(batch)}: {exc}") from exc
        return np.asarray(result[0], dtype=np.float32)

    def probabilities(self, inputs: Sequence[FloatArray]) -> list[float]:
        """Fracture probability for each (3, H, W) input, run ``batch_size`` at a time."""
        out: list[float] = []
        for start in range(0, len(inputs), self.batch_size):
            batch = np.stack(inputs[start : start + self.batch_size]).astype(np.float32, copy=False)
            out.extend(self.scores(self.features(batch)))
        return out

    def scores(self, features: npt.NDArray[np.float32]) -> list[float]:
        """Fracture probability of each row of backbone features (the bundle's classifier)."""
        try:
            # One LightGBM thread: a batch of a few rows gains nothing from more, and its
            # OpenMP threads fought onnxruntime's spinning ones (EfficientNet bundle,
            # 2 cores: 126 -> 184 img/s float32, 226 -> 389 img/s INT8).
            scores = self._booster.predict(features, num_threads=1)
        except lgb.basic.LightGBMError as exc:
            raise PermanentError(f"LightGBM failed on a batch of {len(features)}: {exc}") from exc
        return [float(score) for score in np.asarray(scores).reshape(-1)]

    def predict_inputs(self, inputs: Sequence[FloatArray]) -> list[Prediction]:
        """Probability, label (fracture when probability >= threshold) and model of each input."""
        threshold = self.bundle.threshold
        return [
            Prediction(
                probability=p,
                label=Label.FRACTURE if p >= threshold else Label.NO_FRACTURE,
                threshold=threshold,
                model=self.model_id,
            )
            for p in self.probabilities(inputs)
        ]

    def predict(self, displays: Sequence[DisplayImage]) -> list[Prediction]:
        """Classify display images (from :mod:`osteoflag.inference.pixels`)."""
        spec = self.bundle.input_spec
        return self.predict_inputs([model_input(display, spec) for display in displays])

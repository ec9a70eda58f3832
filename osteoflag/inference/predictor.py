"""Backbone features (onnxruntime) then LightGBM: fracture probability for batches of images.

The session is built once per bundle with every graph optimisation on and the configured
number of intra-op threads (0 lets onnxruntime use one per physical core). The bundle is
checked end to end at construction with one black image, so a backbone whose output does
not match the classifier fails at start-up rather than on the first patient.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from scipy.special import expit

from osteoflag.errors import BundleError, PermanentError
from osteoflag.inference.bundle import Bundle
from osteoflag.inference.cellterm import CellTerm, read_cells
from osteoflag.inference.labels import Label
from osteoflag.inference.linear import read_linear
from osteoflag.inference.localise import FloatMap, PooledLayout, evidence_map, region_from_map
from osteoflag.inference.localiser import Localiser, load_localiser
from osteoflag.inference.maps import MAPS_OUTPUT
from osteoflag.inference.ood import OOD_FILE, OodReference
from osteoflag.inference.pixels import DisplayImage, FloatArray, model_input
from osteoflag.inference.region import Region
from osteoflag.inference.terms import MissingMaps, Terms

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "features"
#: How far (relative) the average of ``maps`` may be from the pooled features: float32 graphs
#: agree to ~1e-6; an INT8 graph quantises the pooled output apart from the map (~0.4 %).
MAPS_TOLERANCE = 0.02


@dataclass(frozen=True)
class Prediction:
    """One image's result, with the threshold and model that produced it; ``region`` (where
    the model points) only for an image labelled fracture, when the bundle can localise."""

    probability: float
    label: Label
    threshold: float
    model: str
    region: Region | None = None
    #: Why the image lies outside the training images' domain (the bundle's
    #: out-of-distribution guard), or None; such an image is not to be reported.
    outside: str | None = None


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
        self._calibration = bundle.manifest.calibration
        self._ood = (
            OodReference.read(bundle.path / OOD_FILE, bundle.manifest.features.count)
            if OOD_FILE in bundle.manifest.files
            else None
        )
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
        linear = bundle.linear_path
        count = bundle.manifest.features.count
        self._terms = Terms(linear=None if linear is None else read_linear(linear, count))
        self._check_interfaces()

    def _check_interfaces(self) -> None:
        inputs = {node.name: node for node in self._session.get_inputs()}
        outputs = {node.name for node in self._session.get_outputs()}
        backbone = self.bundle.backbone_path
        if INPUT_NAME not in inputs or len(inputs[INPUT_NAME].shape) != 4:
            raise BundleError(f"{backbone}: needs a rank-4 input named '{INPUT_NAME}'")
        if OUTPUT_NAME not in outputs:
            raise BundleError(f"{backbone}: needs an output named '{OUTPUT_NAME}'")
        self._outputs = [OUTPUT_NAME] + ([MAPS_OUTPUT] if MAPS_OUTPUT in outputs else [])
        count = self.bundle.manifest.features.count
        if self._booster.num_feature() != count:
            raise BundleError(
                f"{self.bundle.classifier_path}: expects {self._booster.num_feature()} features, "
                f"the manifest declares {count}"
            )
        height, width = self.bundle.input_spec.size
        probe, maps = self.run(np.zeros((1, 3, height, width), dtype=np.float32))
        if probe.shape != (1, count):
            raise BundleError(
                f"{backbone}: output '{OUTPUT_NAME}' has shape {probe.shape[1:]}, "
                f"the manifest declares {count} features"
            )
        self._layout = None if maps is None else self._check_maps(probe, maps)
        self._cells = None if maps is None else (maps.shape[2], maps.shape[3])
        cells = self._load_cell_term(None if maps is None else maps.shape[1])
        self._terms = replace(self._terms, cells=cells)
        self._localiser = self._load_localiser()

    def _load_cell_term(self, channels: int | None) -> CellTerm | None:
        path = self.bundle.cells_path
        if path is None:
            return None
        if channels is None or self._cells is None:
            raise BundleError(f"{path}: the cell term needs the backbone's '{MAPS_OUTPUT}' output")
        return read_cells(path, channels, self._cells[0] * self._cells[1])

    def _load_localiser(self) -> Localiser | None:
        path = self.bundle.localiser_path
        if path is None:
            return None
        if self._cells is None:
            raise BundleError(f"{path}: the localiser needs the backbone's '{MAPS_OUTPUT}' output")
        return load_localiser(path, self.bundle.input_spec, self._cells)

    def _check_maps(self, probe: npt.NDArray[np.float32], maps: FloatArray) -> PooledLayout:
        """The pooled features must be the average (and maximum) of ``maps``: otherwise the
        map is not what the classifier saw, and a region drawn from it would mislead."""
        backbone = self.bundle.backbone_path
        if maps.ndim != 4:
            raise BundleError(f"{backbone}: output '{MAPS_OUTPUT}' must be [N, C, h, w]")
        try:
            layout = PooledLayout.of(probe.shape[1], maps.shape[1])
        except BundleError as exc:
            raise BundleError(f"{backbone}: output '{MAPS_OUTPUT}': {exc}") from exc
        scale = float(np.abs(probe).max()) or 1.0
        error = float(np.abs(maps.mean(axis=(2, 3)) - probe[:, layout.average]).max()) / scale
        if not error <= MAPS_TOLERANCE:
            raise BundleError(
                f"{backbone}: output '{MAPS_OUTPUT}' averaged differs from the pooled features "
                f"by {error:.3g} (relative); it is not the map the classifier sees"
            )
        return layout

    @property
    def model_id(self) -> str:
        return self.bundle.model_id

    @property
    def localises(self) -> bool:
        """Whether the bundle's backbone outputs the spatial map that regions come from."""
        return self._layout is not None

    @property
    def map_cells(self) -> tuple[int, int]:
        """(rows, columns) of the backbone's spatial map."""
        if self._cells is None:
            raise BundleError(f"{self.bundle.backbone_path}: no '{MAPS_OUTPUT}' output")
        return self._cells

    @property
    def localiser(self) -> Localiser | None:
        """The bundle's trained localiser, when it ships one (regions come from it)."""
        return self._localiser

    def maps(self, batch: FloatArray) -> FloatArray:
        """Spatial maps [N, C, h, w] of a batch; a bundle without them is refused."""
        maps = self.run(batch)[1]
        if maps is None:
            raise BundleError(f"{self.bundle.backbone_path}: no '{MAPS_OUTPUT}' output")
        return maps

    def run(self, batch: FloatArray) -> tuple[npt.NDArray[np.float32], FloatArray | None]:
        """Features [N, F] and, when the bundle has them, spatial maps [N, C, h, w]."""
        try:
            result: list[Any] = self._session.run(self._outputs, {INPUT_NAME: batch})
        except Exception as exc:  # onnxruntime's errors have no common public base
            raise PermanentError(f"onnxruntime failed on a batch of {len(batch)}: {exc}") from exc
        maps = np.asarray(result[1], dtype=np.float32) if len(result) > 1 else None
        return np.asarray(result[0], dtype=np.float32), maps

    def features(self, batch: FloatArray) -> npt.NDArray[np.float32]:
        """Backbone features of a (N, 3, H, W) float32 batch."""
        return self.run(batch)[0]

    def _classify(
        self, feats: npt.NDArray[np.float32], *, raw: bool = False, contributions: bool = False
    ) -> npt.NDArray[np.float64]:
        try:
            # One LightGBM thread: a batch of a few rows gains nothing from more, and its
            # OpenMP threads fought onnxruntime's spinning ones (EfficientNet bundle,
            # 2 cores: 126 -> 184 img/s float32, 226 -> 389 img/s INT8).
            out = self._booster.predict(
                feats, num_threads=1, raw_score=raw, pred_contrib=contributions
            )
        except lgb.basic.LightGBMError as exc:
            raise PermanentError(f"LightGBM failed on a batch of {len(feats)}: {exc}") from exc
        return np.asarray(out, dtype=np.float64)

    @property
    def uses_maps(self) -> bool:
        """Whether scoring needs the backbone's map beside its features (a cell term)."""
        return self._terms.cells is not None

    def scores(
        self, features: npt.NDArray[np.float32], maps: npt.NDArray[np.floating] | None = None
    ) -> list[float]:
        """Fracture probability of each row of backbone features (the bundle's classifier,
        with its linear term and its cell term on ``maps`` when it has them, then its
        calibration when it has one)."""
        if self._terms.empty:
            scores = self._classify(features).reshape(-1)
        else:
            try:
                raw = self._terms.log_odds(self._classify(features, raw=True), features, maps)
            except MissingMaps as exc:
                raise BundleError(f"{self.bundle.cells_path}: {exc}") from exc
            scores = np.asarray(expit(raw), dtype=np.float64)
        if self._calibration is not None:  # the served probability is the calibrated one
            scores = self._calibration.apply(scores)
        return [float(score) for score in scores]

    def contributions(self, feats: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Contribution of each feature to each row's log-odds [N, F] (bias left out): the
        booster's TreeSHAP values plus the linear term's exact shares."""
        phi = self._classify(feats, contributions=True)[:, :-1]
        linear = self._terms.linear
        return phi if linear is None else phi + linear.contributions(feats)

    def evidence(self, feats: npt.NDArray[np.float32], maps: FloatArray) -> list[FloatMap]:
        """Each row's evidence map (h, w) over its spatial map, in log-odds toward fracture
        (the cell term's shares added when the bundle has one)."""
        if self._layout is None:
            raise BundleError(f"{self.bundle.backbone_path}: no '{MAPS_OUTPUT}' output")
        layout = self._layout
        heats = [
            evidence_map(m, phi, layout)
            for m, phi in zip(maps, self.contributions(feats), strict=True)
        ]
        if self._terms.cells is None:
            return heats
        return [
            heat + share for heat, share in zip(heats, self._terms.cells.shares(maps), strict=True)
        ]

    def probabilities(self, inputs: Sequence[FloatArray]) -> list[float]:
        """Fracture probability for each (3, H, W) input, run ``batch_size`` at a time."""
        return [p for p, _, _ in self._evaluate(inputs, None)]

    def outside(self, feats: npt.NDArray[np.float32]) -> list[str | None]:
        """The out-of-distribution reason of each row of backbone features, when the bundle
        has a guard: the daemon skips such an image, and ``validate`` leaves it out."""
        if self._ood is None:
            return [None] * len(feats)
        limit = self._ood.threshold
        return [
            f"outside the model's training images: feature distance {d:.4f} > {limit:.4f}"
            if d > limit
            else None
            for d in self._ood.distances(feats)
        ]

    def _evaluate(
        self,
        inputs: Sequence[FloatArray],
        sizes: Sequence[tuple[int, int]] | None,
        displays: Sequence[DisplayImage] | None = None,
    ) -> list[tuple[float, Region | None, str | None]]:
        """Probability of each input and, when ``sizes`` (source rows, columns) are given and
        the bundle localises, the region of each input at or above the threshold: from the
        trained localiser when the bundle has one and ``displays`` are given, else from the
        classifier's evidence map; and the out-of-distribution reason of each input, if any."""
        out: list[tuple[float, Region | None, str | None]] = []
        for start in range(0, len(inputs), self.batch_size):
            batch = np.stack(inputs[start : start + self.batch_size]).astype(np.float32, copy=False)
            feats, maps = self.run(batch)
            scores = self.scores(feats, maps)
            regions: list[Region | None] = [None] * len(scores)
            flagged = [i for i, p in enumerate(scores) if p >= self.bundle.threshold]
            if self._localiser is not None and displays is not None:
                spec = self.bundle.input_spec
                for i in flagged:
                    regions[i] = self._localiser.region(displays[start + i], spec, self.maps)
            elif sizes is not None and maps is not None and flagged:
                heats = self.evidence(feats[flagged], maps[flagged])
                for heat, i in zip(heats, flagged, strict=True):
                    regions[i] = region_from_map(heat, self.bundle.input_spec, sizes[start + i])
            out.extend(zip(scores, regions, self.outside(feats), strict=True))
        return out

    def predict_inputs(
        self,
        inputs: Sequence[FloatArray],
        sizes: Sequence[tuple[int, int]] | None = None,
        displays: Sequence[DisplayImage] | None = None,
    ) -> list[Prediction]:
        """Probability, label (fracture when probability >= threshold) and model of each input;
        with ``sizes`` (each source image's rows, columns), the region of each fracture, and
        with the ``displays`` the inputs were made from, the trained localiser's region."""
        if sizes is not None and len(sizes) != len(inputs):
            raise ValueError(f"{len(sizes)} sizes for {len(inputs)} inputs")
        if displays is not None and len(displays) != len(inputs):
            raise ValueError(f"{len(displays)} displays for {len(inputs)} inputs")
        threshold = self.bundle.threshold
        return [
            Prediction(
                probability=p,
                label=Label.FRACTURE if p >= threshold else Label.NO_FRACTURE,
                threshold=threshold,
                model=self.model_id,
                region=region,
                outside=outside,
            )
            for p, region, outside in self._evaluate(inputs, sizes, displays)
        ]

    def predict(self, displays: Sequence[DisplayImage]) -> list[Prediction]:
        """Classify display images (from :mod:`osteoflag.inference.pixels`), with regions."""
        spec = self.bundle.input_spec
        return self.predict_inputs(
            [model_input(display, spec) for display in displays],
            [display.size for display in displays],
            displays,
        )

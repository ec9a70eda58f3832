"""INT8 backbones: static quantisation of a bundle's ONNX backbone, accepted only if it is as good.

The backbone is quantised with onnxruntime's ``quantize_static`` in QDQ format, weights
int8 per output channel and activations uint8 (the fast U8S8 kernels of x86 CPUs), with
activation ranges calibrated on real training images that went through the serving
pixel path (:mod:`osteoflag.inference.pixels`), so the ranges are those the daemon sees.

The result is a new bundle (``backbone.precision = "int8"``, version ``+int8``, the
calibration and both precisions' figures under ``metrics.int8``, an INT8 section in its
model card). It is written only when the INT8 AUC on a labelled folder is within
``max_auc_drop`` (:data:`MAX_AUC_DROP`) of float32; otherwise nothing is written and the
figures are returned with ``usable = false`` for the command to print and exit 1. A folder
with fewer than :data:`MIN_CHECK_IMAGES` readable images of either label is refused before
any work. A source bundle's out-of-distribution guard is carried over with its threshold
moved for the INT8 features (:func:`int8_guard`).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from osteoflag import publish
from osteoflag.errors import BundleError, PixelDataError, UsageError
from osteoflag.files import walk_files
from osteoflag.inference.bundle import MANIFEST, MODEL_CARD, Bundle, load_bundle, write_manifest
from osteoflag.inference.ood import OOD_FILE, OodReference
from osteoflag.inference.pixels import FloatArray, InputSpec, load_display, model_input
from osteoflag.inference.predictor import INPUT_NAME, Predictor

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

MAX_AUC_DROP = 0.005
#: Leading convolutions kept in float32, per backbone architecture (others: none). In
#: EfficientNet-Lite0 the stem and the first MBConv blocks (large maps, 16-32 channels, linear
#: bottlenecks) lose the most to 8-bit activations, and frozen ImageNet features (default bundle
#: 3.0.0) lose more than fine-tuned ones did. Measured on 3.0.0 with OsteoAI test (512
#: calibration images from train): 3 kept, AUC drop 0.011 (3 leading + 1 or 3 trailing kept:
#: 0.011-0.012, so the error is made early); 8 kept, 0.0031 at 1.8x float32's images/s; 14
#: kept, 0.0020 at 1.6x. Lite1 and Lite2 begin with the same layers as Lite0 (stem, stage 1 and
#: stage 2's first blocks keep Lite0's widths), so they keep the same 8 (not measured).
FLOAT_CONVS = {"efficientnet_lite0": 8, "efficientnet_lite1": 8, "efficientnet_lite2": 8}
#: Global poolings; they and every node that reads only their outputs (the feature vector's
#: concatenation) form the pooling tail, which stays float32. One 8-bit scale per tensor cannot
#: hold a concatenation of global averages (~10) and maxima (~10,000, VGG16 block 3):
#: quantised, the averages all became 0. The tail costs nothing next to the convolutions.
POOLING_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"})
INT8_BACKBONE = "backbone.int8.onnx"
CALIBRATION_BATCH = 4
#: Calibration images by default: with 128 the EfficientNet bundle's AUC drop was over MAX_AUC_DROP.
CALIBRATION_IMAGES = 512
#: Calibration batches whose activations are held before their ranges are merged: bounds the
#: calibrator's memory (a VGG16 keeps ~30 MB of activations per image).
CALIBRATION_MERGE_BATCHES = 16
CLASSES = (("fracture", 1), ("nofracture", 0))
#: Decodable check images needed of each label before the AUC rule is applied: with a handful
#: both precisions score AUC 1 and any INT8 copy passes. The rule compares two precisions on
#: the same images, so what counts is the noise of their paired AUC difference, far below an
#: AUC's own: for the default bundle 7.0.0 on OsteoAI test (bootstrap, n per label) its
#: standard deviation was 0.0136 at 10, 0.0043 at 50, 0.0028 at 100 and 0.0013 at 380
#: (an AUC's: 0.057, 0.025, 0.018, 0.010). At 100 it is about half the 0.005 margin: a copy
#: twice as bad as the rule allows (0.010) would pass about 4% of the time, at 50 about 12%.
MIN_CHECK_IMAGES = 100


@dataclass(frozen=True)
class Scores:
    """One precision's figures on the labelled folder."""

    auc: float
    accuracy: float
    images_per_second: float


def auc(labels: npt.NDArray[np.int_], scores: npt.NDArray[np.float64]) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half)."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise BundleError("AUC needs both fracture and nofracture images")
    ranks = rankdata(scores)
    return float(
        (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    )


def _inputs(files: Sequence[Path], spec: InputSpec) -> tuple[list[FloatArray], list[Path]]:
    inputs: list[FloatArray] = []
    used: list[Path] = []
    for path in files:
        try:
            inputs.append(model_input(load_display(path), spec))
            used.append(path)
        except PixelDataError as exc:
            logger.warning(
                "image left out",
                extra={"action": "quantize", "file": str(path), "reason": str(exc)},
            )
    return inputs, used


def spread(total: int, count: int) -> npt.NDArray[np.int_]:
    """Up to ``count`` indices spread evenly over ``range(total)``, both ends included: a
    calibration set that spans a sorted folder (both classes, every part) rather than its head."""
    return np.unique(np.linspace(0, total - 1, num=min(count, total)).astype(int))


def calibration_inputs(folder: Path, spec: InputSpec, count: int) -> list[FloatArray]:
    """Up to ``count`` images spread evenly over the sorted files under ``folder``."""
    files = list(walk_files([folder]))
    if not files:
        raise BundleError(f"{folder}: no calibration images")
    inputs, _ = _inputs([files[i] for i in spread(len(files), count)], spec)
    if not inputs:
        raise BundleError(f"{folder}: none of the calibration images could be read")
    return inputs


def labelled_inputs(folder: Path, spec: InputSpec) -> tuple[list[FloatArray], npt.NDArray[np.int_]]:
    """Model inputs and labels of ``folder/fracture`` (1) and ``folder/nofracture`` (0)."""
    inputs: list[FloatArray] = []
    labels: list[int] = []
    for name, label in CLASSES:
        if not (folder / name).is_dir():
            raise BundleError(f"{folder / name}: labelled folder is missing")
        found, _ = _inputs(list(walk_files([folder / name])), spec)
        inputs += found
        labels += [label] * len(found)
    return inputs, np.asarray(labels, dtype=int)


def check_enough(data: Path, labels: npt.NDArray[np.int_]) -> None:
    """Refuse a check folder too small for the AUC rule (see :data:`MIN_CHECK_IMAGES`)."""
    fracture = int(labels.sum())
    nofracture = len(labels) - fracture
    if min(fracture, nofracture) < MIN_CHECK_IMAGES:
        raise UsageError(
            f"--data {data}: {fracture} fracture and {nofracture} nofracture images could be "
            f"read; the AUC rule needs at least {MIN_CHECK_IMAGES} of each"
        )


def score(
    predictor: Predictor, inputs: list[FloatArray], labels: npt.NDArray[np.int_]
) -> tuple[Scores, npt.NDArray[np.float32]]:
    """AUC, accuracy at the bundle's threshold and throughput of ``predictor`` on ``inputs``,
    and their backbone features (the out-of-distribution guard is moved with them)."""
    features: list[npt.NDArray[np.float32]] = []
    scores: list[float] = []
    started = time.perf_counter()
    for start in range(0, len(inputs), predictor.batch_size):
        feats, maps = predictor.run(np.stack(inputs[start : start + predictor.batch_size]))
        features.append(feats)
        scores += predictor.scores(feats, maps)
    elapsed = time.perf_counter() - started
    probabilities = np.asarray(scores, dtype=float)
    predicted = (probabilities >= predictor.bundle.threshold).astype(int)
    return Scores(
        auc=auc(labels, probabilities),
        accuracy=float((predicted == labels).mean()),
        images_per_second=len(inputs) / elapsed,
    ), np.concatenate(features)


def int8_guard(
    source: Bundle,
    folder: Path,
    float_features: npt.NDArray[np.float32],
    int8_features: npt.NDArray[np.float32],
) -> dict[str, Any] | None:
    """Rewrite ``folder``'s copy of the source's out-of-distribution reference for the INT8
    backbone (:meth:`OodReference.shifted` on the check images' features of both precisions)
    and return what it does to the check images; None when the source has no guard.

    The INT8 features lie a little further from the float32 anchors than float32's own
    (default bundle 7.0.0, OsteoAI test: median +0.0009 against a threshold of 0.0966), so the
    copied reference skipped 26 of 767 test images where float32 skipped 20; moved, 21.
    """
    if OOD_FILE not in source.manifest.files:
        return None
    reference = OodReference.read(source.path / OOD_FILE, source.manifest.features.count)
    moved = reference.shifted(float_features, int8_features)
    (folder / OOD_FILE).write_bytes(moved.to_bytes())

    def skipped(guard: OodReference, features: npt.NDArray[np.float32]) -> int:
        return int((guard.distances(features) > guard.threshold).sum())

    return {
        "threshold_float32": reference.threshold,
        "threshold_int8": moved.threshold,
        "skipped_float32": skipped(reference, float_features),
        "skipped_int8": skipped(moved, int8_features),
        "skipped_int8_unmoved": skipped(reference, int8_features),
    }


def float_convs_for(architecture: str) -> int:
    """How many leading convolutions of ``architecture`` stay float32 (see ``FLOAT_CONVS``)."""
    return FLOAT_CONVS.get(architecture, 0)


def quantize_backbone(
    source: Path, target: Path, inputs: list[FloatArray], float_convs: int = 0
) -> None:
    """Write the statically quantised (QDQ, per-channel U8S8) version of ``source``.

    The first ``float_convs`` Conv nodes of each view (:func:`_leading_convs`) and the pooling
    tail (see ``POOLING_OPS``) are left in float32.
    """
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:  # onnx is an optional dependency (extra "quantize")
        raise BundleError(f"quantisation needs the 'onnx' package: {exc}") from exc

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(range(0, len(inputs), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, Any] | None:
            start = next(self._batches, None)
            if start is None:
                return None
            return {INPUT_NAME: np.stack(inputs[start : start + CALIBRATION_BATCH])}

    prepared = target.with_name(f".{target.name}.prepared")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        keep = _float_nodes(prepared, float_convs)
        quantize_static(
            str(prepared),
            str(target),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=keep,
            extra_options={"max_intermediate_outputs": CALIBRATION_MERGE_BATCHES},
        )
    finally:
        prepared.unlink(missing_ok=True)


def _float_nodes(model_path: Path, float_convs: int) -> list[str]:
    """Names of the leading ``float_convs`` Conv nodes of each view and of the pooling tail's
    nodes; unnamed nodes are named (in place) first."""
    import onnx

    model = onnx.load(str(model_path))
    unnamed = [node for node in model.graph.node if not node.name]
    for index, node in enumerate(unnamed):
        node.name = f"{node.op_type}_{index}"
    if unnamed:
        onnx.save(model, str(model_path))
    return _leading_convs(model.graph, float_convs) + _pooling_tail(model.graph)


def _leading_convs(graph: onnx.GraphProto, float_convs: int) -> list[str]:
    """Names of the Conv nodes with at most ``float_convs`` convolutions (themselves included)
    on any path from the input: the first layers of every view a graph runs (a two-view
    backbone has two stems), which for a single chain are its first ``float_convs`` Convs."""
    depth: dict[str, int] = {}  # tensor -> convolutions on the longest path that makes it
    kept = []
    for node in graph.node:  # topological order
        here = max((depth.get(name, 0) for name in node.input), default=0)
        if node.op_type == "Conv":
            here += 1
            if here <= float_convs:
                kept.append(node.name)
        depth.update((name, here) for name in node.output)
    return kept


def _pooling_tail(graph: onnx.GraphProto) -> list[str]:
    """Names of the global poolings and of the nodes (in topological order) whose every
    non-constant input is one of their outputs."""
    constant = {init.name for init in graph.initializer}
    constant.update(o for node in graph.node if node.op_type == "Constant" for o in node.output)
    pooled: set[str] = set()
    tail = []
    for node in graph.node:
        inputs = [i for i in node.input if i and i not in constant]
        if node.op_type in POOLING_OPS or (inputs and all(i in pooled for i in inputs)):
            tail.append(node.name)
            pooled.update(node.output)
    return tail


def int8_copy(source: Bundle, folder: Path, calibration: list[FloatArray]) -> dict[str, Any]:
    """Copy ``source`` to the new (or empty) ``folder`` with its backbone quantised and its
    manifest saying so (version ``+int8``); return the manifest's fields. No AUC gate: the
    caller decides."""
    shutil.copytree(
        source.path, folder, ignore=shutil.ignore_patterns(MANIFEST), dirs_exist_ok=True
    )
    (folder / source.manifest.backbone.file).unlink()
    quantize_backbone(
        source.backbone_path,
        folder / INT8_BACKBONE,
        calibration,
        float_convs_for(source.manifest.backbone.architecture),
    )
    fields = source.manifest.model_dump(exclude={"files", "format_version"})
    fields["version"] = f"{source.manifest.version}+int8"
    fields["backbone"] = {**fields["backbone"], "file": INT8_BACKBONE, "precision": "int8"}
    write_manifest(folder, **fields)
    return fields


def _kept_float(float_convs: int) -> str:
    """What of the backbone stays float32, as a clause of the card."""
    if float_convs <= 0:
        return "the pooling tail stays float32"
    return f"the first {float_convs} convolutions of each view and the pooling tail stay float32"


def _card_section(figures: dict[str, Any]) -> str:
    f32, i8 = figures["float32"], figures["int8"]
    calibration = figures["calibration"]
    return (
        "\n## INT8\n\n"
        f"Backbone statically quantised with onnxruntime ({calibration['format']}, weights "
        f"{calibration['weights']} per channel, activations {calibration['activations']}), "
        f"{calibration['method']} ranges from {calibration['images']} training images through the "
        f"serving pixel path; {_kept_float(calibration['float32_leading_convs'])}. "
        "Same classifier and threshold. Scored on "
        f"`{figures['data']}` (n = {figures['n']}):\n\n"
        "| precision | AUC | accuracy | images/s (this run) |\n|---|---|---|---|\n"
        f"| float32 | {f32['auc']:.4f} | {f32['accuracy']:.4f} | {f32['images_per_second']:.2f} |\n"
        f"| int8 | {i8['auc']:.4f} | {i8['accuracy']:.4f} | {i8['images_per_second']:.2f} |\n\n"
        f"AUC drop {figures['auc_drop']:+.4f} (rule: INT8 is used only within "
        f"{figures['max_auc_drop']}).\n{_guard_sentence(figures.get('ood_guard'))}"
    )


def _guard_sentence(guard: dict[str, Any] | None) -> str:
    if guard is None:
        return ""
    return (
        "\nOut-of-distribution guard: the float32 anchors, the threshold moved from "
        f"{guard['threshold_float32']:.4f} to {guard['threshold_int8']:.4f} by the median change "
        "of the scored images' distances in INT8; it skips "
        f"{guard['skipped_int8']} of them, float32's {guard['skipped_float32']} "
        f"(unmoved: {guard['skipped_int8_unmoved']}).\n"
    )


def quantize_bundle(
    bundle_dir: Path,
    calibration: Path,
    data: Path,
    out: Path,
    *,
    count: int = CALIBRATION_IMAGES,
    threads: int = 0,
    max_auc_drop: float = MAX_AUC_DROP,
) -> dict[str, Any]:
    """Quantise, score both precisions on ``data``, write ``out`` only if INT8 is usable."""
    source = load_bundle(bundle_dir)
    if source.manifest.backbone.precision != "float32":
        raise BundleError(
            f"{source.backbone_path}: backbone is already {source.manifest.backbone.precision}"
        )
    if out.exists():
        raise BundleError(f"{out}: already exists; choose a new folder for the INT8 bundle")
    spec = source.input_spec
    inputs, labels = labelled_inputs(data, spec)
    check_enough(data, labels)
    calibration_set = calibration_inputs(calibration, spec, count)
    with publish.staging(out) as staging:
        fields = int8_copy(source, staging, calibration_set)
        quantised = load_bundle(staging)
        float_scores, float_features = score(
            Predictor(source, threads=threads, batch_size=8), inputs, labels
        )
        int8_scores, int8_features = score(
            Predictor(quantised, threads=threads, batch_size=8), inputs, labels
        )
        guard = int8_guard(source, staging, float_features, int8_features)
        drop = float_scores.auc - int8_scores.auc
        figures: dict[str, Any] = {
            "float32": vars(float_scores),
            "int8": vars(int8_scores),
            "auc_drop": drop,
            "max_auc_drop": max_auc_drop,
            "usable": drop <= max_auc_drop,
            "n": len(labels),
            "data": str(data),
            "calibration": {
                "folder": str(calibration),
                "images": len(calibration_set),
                "method": "MinMax",
                "format": "QDQ",
                "per_channel": True,
                "activations": "uint8",
                "weights": "int8",
                "float32_leading_convs": float_convs_for(source.manifest.backbone.architecture),
                "source_backbone": source.manifest.files[source.manifest.backbone.file],
            },
        }
        if guard is not None:
            figures["ood_guard"] = guard
        if not figures["usable"]:  # leaving the block removes the staged copy
            figures["bundle"] = None
            return figures
        card = staging / MODEL_CARD
        if card.exists():
            card.write_text(
                card.read_text(encoding="utf-8") + _card_section(figures), encoding="utf-8"
            )
        fields["metrics"] = {**fields["metrics"], "int8": figures}
        write_manifest(staging, **fields)
        publish.publish(staging, out)
    figures["bundle"] = str(out)
    logger.info(
        "int8 bundle written",
        extra={
            "action": "quantize",
            "model": load_bundle(out).model_id,
            "auc_drop": round(drop, 4),
        },
    )
    return figures

"""INT8 beside float32 on the same protocols: each fitted model's graph, quantised and re-scored.

For every fit (the published-split bundle, each grouped-CV fold) the full feature graph is
exported, statically quantised exactly as ``osteoflag quantize`` does it
(:func:`osteoflag.inference.quantize.quantize_backbone`, calibrated on images of that fit's own
training indices only), and its held-out images are scored with the same booster and threshold.
The model card then shows both precisions side by side, and whether INT8 stays within
``MAX_AUC_DROP`` of float32, the rule the daemon's ``quantize`` command enforces.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from osteoflag.inference import maps
from osteoflag.inference.quantize import (
    CALIBRATION_IMAGES,
    MAX_AUC_DROP,
    float_convs_for,
    quantize_backbone,
    spread,
)
from osteoflag.training import export, features, metrics
from osteoflag.training.dataset import Sample
from osteoflag.training.model import FittedModel, Inputs
from osteoflag.training.networks import FeatureGraph, Network
from osteoflag.training.prepared import TrainOptions, cached_outputs, input_spec

logger = logging.getLogger(__name__)


def int8_features(
    network: Network,
    model: FittedModel,
    samples: list[Sample],
    calibration: np.ndarray,
    evaluate: np.ndarray,
    options: TrainOptions,
) -> tuple[Inputs, int]:
    """Inputs of ``samples[evaluate]`` through the INT8 version of this model's graph (its map
    too, for a cell term), and how many calibration images were used."""
    spec = input_spec(options)
    graph = FeatureGraph(network.trunk, model.head, options.layout).eval()
    source, target = options.work / "int8_source.onnx", options.work / "int8.onnx"
    example = torch.from_numpy(features.prepare(samples[int(evaluate[0])], spec)[None])
    export.export_onnx(graph, example, source)
    spatial = model.classifier.cells is not None
    if spatial:
        maps.expose_maps(source)
    picks = calibration[spread(len(calibration), CALIBRATION_IMAGES)]
    quantize_backbone(
        source,
        target,
        [features.prepare(samples[int(i)], spec) for i in picks],
        float_convs_for(network.architecture.value),
    )
    out, _ = cached_outputs(
        target, [samples[int(i)] for i in evaluate], spec, options, desc="int8 features"
    )
    return Inputs(out["features"], out[maps.MAPS_OUTPUT] if spatial else None), len(picks)


def compare(
    y: np.ndarray,
    float_p: np.ndarray,
    model: FittedModel,
    int8_x: Inputs,
    calibration_images: int,
) -> dict[str, Any]:
    """Both precisions' metrics at the model's threshold, and the AUC drop."""
    int8_p = model.predict(int8_x)
    f32 = metrics.binary_metrics(y, float_p, model.threshold)
    i8 = metrics.binary_metrics(y, int8_p, model.threshold)
    drop = float(f32["auc"]) - float(i8["auc"])
    logger.info("int8 scored", extra={"action": "int8", "n": len(y), "auc_drop": round(drop, 4)})
    return {
        "n": len(y),
        "float32": {k: f32[k] for k in ("auc", "accuracy")},
        "int8": {k: i8[k] for k in ("auc", "accuracy")},
        "auc_drop": drop,
        "within_rule": drop <= MAX_AUC_DROP,
        "max_auc_drop": MAX_AUC_DROP,
        "calibration_images": calibration_images,
    }

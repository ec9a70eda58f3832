"""ONNX export with a dynamic batch axis, and the torch/onnxruntime parity check.

Serving only ever sees the ONNX graph, so every number training reports must come from a graph
that provably computes what torch computed: the parity check fails the run otherwise.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from osteoflag.training.backbones import TrainingError

logger = logging.getLogger(__name__)

OPSET = 17
PARITY_IMAGES = 16
PARITY_MAX_RELATIVE_ERROR = 1e-4


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    input_name: str = "image",
    output_names: Sequence[str] = ("features",),
) -> None:
    """Export ``model`` (eval mode, float32) with the batch axis dynamic."""
    model.eval()
    axes = {input_name: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript and gives a plain graph.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    """A CPU session configured like serving's (all graph optimisations on)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's errors share no public base class
        raise TrainingError(f"{path}: onnxruntime cannot load the exported graph: {exc}") from exc


def max_relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    """``max |a-b| / max(|a|)``, per output: robust to the many exact zeros after a ReLU."""
    scale = float(np.abs(reference).max()) or 1.0
    return float(np.abs(reference - other).max()) / scale


def check_parity(model: nn.Module, path: Path, inputs: np.ndarray, threads: int = 2) -> float:
    """Run ``inputs`` (the first 16) through torch and onnxruntime; raise if they disagree."""
    batch = np.ascontiguousarray(inputs[:PARITY_IMAGES], dtype=np.float32)
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(batch))
    expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    sess = session(path, threads)
    got = sess.run(None, {sess.get_inputs()[0].name: batch})
    worst = max(
        max_relative_error(e.numpy(), np.asarray(g))
        for e, g in zip(expected_list, got, strict=True)
    )
    logger.info(
        "onnx parity", extra={"action": "parity", "images": len(batch), "max_rel_err": worst}
    )
    if not worst <= PARITY_MAX_RELATIVE_ERROR:
        raise TrainingError(
            f"{path}: onnxruntime and torch disagree, max relative error {worst:.3g} "
            f"> {PARITY_MAX_RELATIVE_ERROR} on {len(batch)} images"
        )
    return worst

"""The backbone's spatial map as a second ONNX output, ``maps`` [N, C, h, w].

The classifier sees only pooled features (global average and maximum of each channel of the
last map); to say *where* the model looks, serving also needs the map itself. Training adds
the output right after export, and :func:`add_maps_to_bundle` adds it to a bundle written
before, without retraining: the graph computes the same ``features``, it only exposes the
tensor that feeds the last spatial pooling. The surgery needs the ``onnx`` package (extras
``quantize`` or ``train``); the daemon only reads the result.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from osteoflag import publish
from osteoflag.errors import BundleError
from osteoflag.inference.bundle import MANIFEST, MODEL_CARD, Manifest, load_bundle, write_manifest

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

MAPS_OUTPUT: Final = "maps"
SPATIAL_AXES: Final = (2, 3)
_CARD_SECTION: Final = (
    "\n## Spatial map output\n\n"
    "The backbone also outputs `maps` [N, C, h, w]: the last feature map before its global "
    "pooling, which osteoflag weights by the classifier's per-feature contributions to point "
    "at the region behind a fracture call. Features and classifier are unchanged.\n"
)


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # optional dependency: extras "quantize" or "train"
        raise BundleError(f"adding the map output needs the 'onnx' package: {exc}") from exc
    return onnx


def _reduced_axes(node: onnx.NodeProto, initialisers: dict[str, Any]) -> tuple[int, ...]:
    """The axes a ReduceMean/ReduceMax reduces: an attribute up to opset 17, an input after."""
    onnx = _onnx()
    for attribute in node.attribute:
        if attribute.name == "axes":
            return tuple(int(a) for a in onnx.helper.get_attribute_value(attribute))
    if len(node.input) > 1 and node.input[1] in initialisers:
        return tuple(int(a) for a in initialisers[node.input[1]].reshape(-1))
    return ()


def pooled_map(model: onnx.ModelProto) -> str:
    """Name of the tensor the graph's last spatial average pooling reads: the map behind the
    classifier's last (or only) feature level."""
    onnx = _onnx()
    initialisers = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            initialisers[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    found = [
        node.input[0]
        for node in model.graph.node
        if node.op_type == "GlobalAveragePool"
        or (node.op_type == "ReduceMean" and _reduced_axes(node, initialisers) == SPATIAL_AXES)
    ]
    if not found:
        raise BundleError("the backbone graph has no global average pooling over (H, W)")
    return str(found[-1])


def expose_maps(path: Path) -> None:
    """Add the ``maps`` output to the ONNX graph at ``path``, in place (no-op if present)."""
    onnx = _onnx()
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others with no common base
        raise BundleError(f"{path}: onnx cannot read the backbone: {exc}") from exc
    if any(output.name == MAPS_OUTPUT for output in model.graph.output):
        return
    source = pooled_map(model)
    model.graph.node.append(
        onnx.helper.make_node("Identity", [source], [MAPS_OUTPUT], name="maps_output")
    )
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(
            MAPS_OUTPUT, onnx.TensorProto.FLOAT, ["batch", "channels", "height", "width"]
        )
    )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise BundleError(f"{path}: backbone invalid after adding '{MAPS_OUTPUT}': {exc}") from exc
    temporary = path.with_name(f".{path.name}.maps")
    onnx.save(model, str(temporary))
    os.replace(temporary, path)
    logger.info("map output added", extra={"action": "expose_maps", "file": str(path)})


def add_maps_to_bundle(bundle_dir: Path, out: Path) -> Manifest:
    """Copy the bundle at ``bundle_dir`` to the new folder ``out`` with the ``maps`` output
    added to its backbone, the model card saying so and the manifest's hashes rewritten.

    Same name, version, features and classifier: only the backbone file's hash changes. The
    copy is verified like any bundle before it takes its final name.
    """
    source = load_bundle(bundle_dir)
    if out.exists():
        raise BundleError(f"{out}: already exists; choose a new folder for the bundle")
    with publish.staging(out) as staging:
        shutil.copytree(
            source.path, staging, ignore=shutil.ignore_patterns(MANIFEST), dirs_exist_ok=True
        )
        expose_maps(staging / source.manifest.backbone.file)
        card = staging / MODEL_CARD
        if card.exists() and _CARD_SECTION not in card.read_text(encoding="utf-8"):
            card.write_text(card.read_text(encoding="utf-8") + _CARD_SECTION, encoding="utf-8")
        manifest = write_manifest(
            staging, **source.manifest.model_dump(exclude={"files", "format_version"})
        )
        load_bundle(staging)
        publish.publish(staging, out)
    return manifest

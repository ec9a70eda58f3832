"""``osteoflag train``: hygiene, trunk features, protocols, the bundle and its model card.

Protocols (each a full fit: fine-tuning, LightGBM, threshold on validation only):
- ``published``: OsteoAI train -> early stopping/threshold on val -> test. This model is the
  bundle (it sees train and val, never test), and it is also tested on the other source.
- ``cv``: grouped, stratified k-fold over every image of the primary source; inside each fold a
  grouped hold-out of the training groups is used for early stopping and the threshold.
- ``cross``: train on the second source, test on all of the primary source.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from osteoflag import publish
from osteoflag.errors import UsageError
from osteoflag.inference import maps
from osteoflag.inference.bundle import MANIFEST, write_manifest
from osteoflag.inference.predictor import INPUT_NAME, OUTPUT_NAME
from osteoflag.training import export, features, report
from osteoflag.training.backbones import FeatureLayout, TrainingError
from osteoflag.training.dataset import CLASSES
from osteoflag.training.hygiene import shared_sources
from osteoflag.training.model import FittedModel, Inputs, head_onnx_features
from osteoflag.training.networks import (
    HEAD_TEXT,
    FeatureGraph,
    Network,
    build_network,
    layout_text,
    with_small_view,
)
from osteoflag.training.prepared import (
    Prepared,
    Sources,
    TrainOptions,
    input_spec,
    prepare,
    run_facts,
    split_indices,
)
from osteoflag.training.protocols import (
    baselines,
    compare_layouts,
    cv_fold,
    evaluate,
    fit_on,
    int8_rows,
    other_split,
    per_cluster,
    summarise_cv,
)
from osteoflag.training.splits import group_holdout

logger = logging.getLogger(__name__)

#: How far (relative to the largest value) the bundle's ``maps`` output may be from the maps
#: the cell term trained on, which training keeps in float16 (11 significant bits: 4.9e-4).
MAPS_MAX_RELATIVE_ERROR = 1e-3

#: What the bundle is fitted on, as its manifest says.
FITTED_ON = {
    Sources.PRIMARY: "primary train split; epoch, early stopping, calibration, threshold: "
    "primary val",
    Sources.BOTH: "primary train split + 85% of the other source's groups; epoch, early "
    "stopping, calibration, threshold: primary val + the other 15%",
}


def run(options: TrainOptions, prepared: Prepared | None = None) -> dict[str, object]:
    """The whole training run; writes the bundle to ``options.out`` and returns the metrics.

    ``prepared`` (from :func:`prepare` with the same options) skips hygiene and the trunk pass.
    """
    torch.set_num_threads(options.threads)
    started = time.monotonic()
    check_out(options)
    missing = [split for split in ("train", "val") if not (options.data / split).is_dir()]
    if missing and prepared is None:  # before the trunk pass, which takes long on a real set
        raise TrainingError(
            f"{options.data}: no {missing[0]}/ folder; the bundle fits on train/ and validates "
            "on val/ ({train,val[,test]}/{fracture,nofracture}/)"
        )
    if options.small_view and options.layout is not FeatureLayout.B345:
        raise TrainingError(
            f"--small-view {options.small_view} needs --layout b345: its levels are pooled "
            f"ahead of the head's, not instead of them (got --layout {options.layout.value})"
        )
    options.work.mkdir(parents=True, exist_ok=True)
    network = build_network(
        options.architecture,
        options.init,
        options.weights,
        options.head_convs,
        options.seed,
        options.width_divisor,
    )
    network = with_small_view(network, options.small_view)
    head0 = network.head
    prep = prepared if prepared is not None else prepare(options, network.trunk)
    results: dict[str, object] = {"run": run_facts(options), "hygiene": prep.hygiene}
    if options.notes:
        results["notes"] = list(options.notes)
    if options.recipes is not None:
        results["recipes"] = read_recipes(options.recipes)

    def fit(
        fit_idx: np.ndarray, val_idx: np.ndarray, layout: FeatureLayout, tune: bool, tag: str
    ) -> tuple[FittedModel, Inputs]:
        return fit_on(prep, options, head0, fit_idx, val_idx, layout, tune, tag)

    if "published" not in options.protocols:
        raise TrainingError("the bundle is the published-split model: include 'published'")
    train, val, test = (split_indices(prep, s) for s in ("train", "val", "test"))
    if len(train) == 0 or len(val) == 0:
        raise TrainingError(f"{options.data} has no train/ and val/ splits")
    for split, idx in (("train", train), ("val", val)):
        # the booster, the calibration and the threshold each need both labels to fit
        absent = [name for label, name in enumerate(CLASSES) if label not in prep.labels[idx]]
        if absent:
            raise TrainingError(
                f"{options.data / split}: no {absent[0]} images; a fit needs both "
                f"{' and '.join(CLASSES)} in train/ and val/"
            )
    extra_fit, extra_val = other_split(prep, options)
    bundle_model, bundle_x = fit(
        np.concatenate([train, extra_fit]),
        np.concatenate([val, extra_val]),
        options.layout,
        True,
        "published",
    )
    published: dict[str, object] = {
        "validation": bundle_model.validation,
        "finetune_log": bundle_model.finetune_log,
        "test": evaluate(prep, bundle_model, bundle_x, test) if len(test) else None,
    }
    if len(test):
        published["test_shares_source"] = shared_sources(
            [prep.samples[i] for i in np.concatenate([train, val])],
            [prep.samples[i] for i in test],
        )
    if options.int8 and len(test):
        published["int8"] = int8_rows(prep, options, network, bundle_model, bundle_x, train, test)
    if len(prep.other):
        # The other source is scored by a primary-only model: the bundle itself when it was
        # trained on the primary source alone, else a fit of the same procedure without it.
        model, x = (
            (bundle_model, bundle_x)
            if not len(extra_fit)
            else fit(train, val, options.layout, True, "published, primary only")
        )
        published["other_source"] = {
            "files": evaluate(prep, model, x, prep.other),
            "per_group": per_cluster(prep, model, x, prep.other),
        }
    results["published"] = published

    def checkpoint() -> None:
        # Rewritten after each stage, so that a stopped run still leaves a complete bundle.
        results["seconds"] = round(time.monotonic() - started, 1)
        # Full results, per-image scores included, so a card can be re-rendered without a rerun.
        (options.work / "results.json").write_text(json.dumps(results, default=float))
        write_bundle(options, prep, network, bundle_model, bundle_x, results)

    checkpoint()
    if "cv" in options.protocols:
        results["cv"] = summarise_cv(
            prep, [cv_fold(prep, options, network, k) for k in range(options.folds)]
        )
    if "cross" in options.protocols and len(prep.other):
        fit_i, val_i = group_holdout(
            prep.labels[prep.other], prep.groups[prep.other], 0.2, options.seed
        )
        model, x = fit(prep.other[fit_i], prep.other[val_i], options.layout, True, "cross")
        results["cross"] = {
            "files": evaluate(prep, model, x, prep.primary),
            "per_group": per_cluster(prep, model, x, prep.primary),
            "validation": model.validation,
        }
    checkpoint()
    if options.compare_layouts and options.small_view:
        # The comparison's layouts are those of one view; with two they would mislabel the
        # views' levels and fit one booster where the bundle averages two.
        logger.info(
            "layout comparison skipped: two views",
            extra={"action": "compare_layouts", "small_view": options.small_view},
        )
    elif options.compare_layouts:
        frozen_b5 = head_onnx_features(
            head0, prep.trunk.maps, options.work / "compare.onnx", options.threads
        )
        results["layouts"] = compare_layouts(
            prep, frozen_b5, bundle_model, options, train, val, test
        )
        results["baselines"] = baselines(prep, options, frozen_b5)
        checkpoint()
    return results


def check_out(options: TrainOptions) -> None:
    """Refuse an ``--out`` whose replacement would delete what is not a bundle: the new bundle
    takes the folder's place and the old folder is deleted, so a typo naming the data's folder
    (or one around it) would wipe the images, and a bundle written inside ``--data`` or
    ``--other`` would be read as images by the next run. An empty folder, or a bundle a
    previous run wrote, is replaced.
    """
    out = options.out.resolve()
    given = {"--data": options.data, "--other": options.other, "--work": options.work}
    for flag, path in given.items():
        if path is None:
            continue
        if path.resolve().is_relative_to(out):
            raise UsageError(f"--out {options.out}: holds {flag} {path}; choose another folder")
        if flag != "--work" and out.is_relative_to(path.resolve()):
            raise UsageError(
                f"--out {options.out}: is inside {flag} {path}; choose a folder outside it"
            )
    if out.exists() and not (
        out.is_dir() and (not any(out.iterdir()) or (out / MANIFEST).is_file())
    ):
        raise UsageError(
            f"--out {options.out}: exists and is not a model bundle; choose a new folder "
            "(a previous run's bundle there is replaced)"
        )


def read_recipes(path: Path) -> list[dict[str, object]]:
    """The rows ``recipes`` wrote (``WORK/recipes.json``), for the model card's table."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{path}: recipe results cannot be read: {exc}") from exc
    if not isinstance(rows, list):
        raise TrainingError(f"{path}: expected a list of recipe results")
    return rows


def tuned_text(options: TrainOptions) -> str:
    """What the manifest's layout says of fine-tuning: the layers it trained, or frozen."""
    if options.tuning.epochs == 0:
        return "; frozen: no layer fine-tuned"
    head = HEAD_TEXT[options.architecture].format(head_convs=options.head_convs)
    return f"; fine-tuned: {head}"


def write_bundle(
    options: TrainOptions,
    prep: Prepared,
    network: Network,
    model: FittedModel,
    trained_x: Inputs,
    results: dict[str, object],
) -> None:
    """Write the bundle beside ``--out`` (:func:`_write_files`) and put it in place whole."""
    with publish.staging(options.out) as staging:
        _write_files(staging, options, prep, network, model, trained_x, results)
        publish.publish(staging, options.out, replace=True)
    logger.info("bundle written", extra={"action": "bundle_written", "path": str(options.out)})


def _write_files(
    staging: Path,
    options: TrainOptions,
    prep: Prepared,
    network: Network,
    model: FittedModel,
    trained_x: Inputs,
    results: dict[str, object],
) -> None:
    """Export the full graph, verify it against the split graphs, write files and manifest."""
    full = FeatureGraph(network.trunk, model.head, options.layout).eval()
    spec = input_spec(options)
    inputs = np.stack(
        # the first images, as many as the parity check takes (a small set may have fewer)
        [features.prepare(sample, spec) for sample in prep.samples[: export.PARITY_IMAGES]]
    )
    export.export_onnx(full, torch.from_numpy(inputs[:1]), staging / "backbone.onnx")
    parity = export.check_parity(full, staging / "backbone.onnx", inputs, options.threads)
    maps.expose_maps(staging / "backbone.onnx")
    session = export.session(staging / "backbone.onnx", options.threads)
    served, served_maps = session.run([OUTPUT_NAME, maps.MAPS_OUTPUT], {INPUT_NAME: inputs})
    split_error = export.max_relative_error(served, trained_x.x[: len(served)])
    if not split_error <= export.PARITY_MAX_RELATIVE_ERROR:
        raise TrainingError(
            f"bundle graph differs from the graphs training used: {split_error:.3g}"
        )
    parity_figures = {"torch_vs_onnxruntime": parity, "bundle_vs_training_graphs": split_error}
    if trained_x.maps is not None:
        map_error = export.max_relative_error(served_maps, trained_x.maps[: len(inputs)])
        if not map_error <= MAPS_MAX_RELATIVE_ERROR:
            raise TrainingError(
                f"bundle's '{maps.MAPS_OUTPUT}' output differs from the maps the cell term "
                f"trained on: {map_error:.3g}"
            )
        parity_figures["bundle_maps_vs_training_maps"] = map_error
    results["parity"] = parity_figures
    classifier_section = model.classifier.save(staging)
    metrics_doc = report.strip_scores(results)
    (staging / "metrics.json").write_text(json.dumps(metrics_doc, indent=2, default=float) + "\n")
    report.write_card(staging, results)
    training_data = {
        "sources": {
            "primary": str(options.data),
            "other": str(options.other) if options.other else None,
        },
        "bundle_fitted_on": FITTED_ON[options.train_on],
        "counts": {s: len(split_indices(prep, s)) for s in ("train", "val", "test")},
        "grouping": "Roboflow stem + pixel duplicates + dihedral phash near-dups + groups.csv",
        "hygiene": prep.hygiene,
    }
    write_manifest(
        staging,
        name=options.name,
        version=options.version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        training_data=training_data,
        input={
            "size": list(spec.size),
            "resize_mode": spec.resize_mode.value,
            "colour_order": spec.colour_order.value,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "scale": spec.scale,
        },
        backbone={
            "file": "backbone.onnx",
            "architecture": options.architecture.value,
            "init": options.init.value,
            "precision": "float32",
        },
        features={
            "count": int(served.shape[1]),
            "layout": layout_text(options.architecture, options.layout, options.small_view)
            + tuned_text(options),
            "views": list(options.bundle_booster.view_starts),
        },
        classifier=classifier_section,
        threshold={"value": model.threshold, "method": model.threshold_method},
        calibration=model.calibration,
        metrics={"validation": report.strip_scores(model.validation)},
    )

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
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from osteoflag.inference.bundle import write_manifest
from osteoflag.inference.pixels import ColourOrder, InputSpec, ResizeMode
from osteoflag.training import classifier, export, features, hygiene, metrics, report
from osteoflag.training.backbones import FeatureLayout, Init, TrainingError, normalisation_for
from osteoflag.training.dataset import Sample, discover
from osteoflag.training.finetune import FinetuneConfig
from osteoflag.training.model import (
    FittedModel,
    TrunkOutputs,
    fit_model,
    head_onnx_features,
    layout_features,
)
from osteoflag.training.networks import (
    FINETUNE,
    HEAD_TEXT,
    Architecture,
    FeatureGraph,
    Network,
    build_network,
    layout_text,
)
from osteoflag.training.splits import assert_disjoint, group_folds, group_holdout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run depends on (recorded in the model card)."""

    data: Path
    out: Path
    work: Path
    other: Path | None = None
    architecture: Architecture = Architecture.EFFICIENTNET_LITE0
    init: Init = Init.IMAGENET
    weights: Path | None = None
    size: int = 224
    resize_mode: ResizeMode = ResizeMode.STRETCH
    head_convs: int = 1
    layout: FeatureLayout = FeatureLayout.B5
    finetune: FinetuneConfig = FINETUNE[Architecture.EFFICIENTNET_LITE0]
    booster: classifier.BoosterConfig = field(default_factory=classifier.BoosterConfig)
    protocols: tuple[str, ...] = ("published", "cv", "cross")
    folds: int = 5
    seed: int = 0
    target_sensitivity: float | None = None
    name: str = "osteoflag-effnetlite0-imagenet"
    version: str = "2.0.0"
    threads: int = 2
    compare_layouts: bool = True
    int8: bool = False  # also score INT8 versions of the published and CV models
    notes: tuple[str, ...] = ()  # provenance lines for the model card ("Notes on this run")
    width_divisor: int = 1
    cache: Path | None = None  # default: WORK/cache; shareable between runs and processes


@dataclass
class Prepared:
    """Hygiene-checked samples of both sources and their trunk outputs (primary first)."""

    samples: list[Sample]
    groups: np.ndarray
    labels: np.ndarray
    primary: np.ndarray
    other: np.ndarray
    trunk: TrunkOutputs
    hygiene: dict[str, object]


def input_spec(options: TrainOptions) -> InputSpec:
    """The bundle's input contract for these options."""
    norm = normalisation_for(options.architecture.value, options.init)
    return InputSpec(
        size=(options.size, options.size),
        resize_mode=options.resize_mode,
        colour_order=ColourOrder(norm.colour_order),
        mean=norm.mean,
        std=norm.std,
    )


def _load_grey(sample: Sample) -> np.ndarray:
    from osteoflag.inference.pixels import load_display

    return load_display(sample.path).pixels


def prepare(options: TrainOptions, trunk_model: torch.nn.Module) -> Prepared:
    """Hygiene on every source, then the trunk through onnxruntime (cached)."""
    sources = [discover(options.data, "primary")]
    if options.other is not None:
        sources.append(discover(options.other, "other", representatives_only=True))
    checked = [hygiene.check(s, _load_grey) for s in sources]
    samples = [s for c in checked for s in c.kept]
    groups = np.array(
        [f"{s.source}/{g}" for c in checked for s, g in zip(c.kept, c.groups, strict=True)]
    )
    labels = np.array([s.label for s in samples], dtype=int)
    spec = input_spec(options)
    trunk_path = options.work / "trunk.onnx"
    example = torch.from_numpy(features.prepare(samples[0], spec)[None])
    export.export_onnx(trunk_model, example, trunk_path, output_names=("b3", "b4", "map"))
    parity_inputs = np.stack([features.prepare(s, spec) for s in samples[: export.PARITY_IMAGES]])
    export.check_parity(trunk_model, trunk_path, parity_inputs, options.threads)
    cache = features.FeatureCache(
        options.cache or options.work / "cache", features.sha256_bytes(trunk_path.read_bytes())
    )
    out = features.run_images(
        export.session(trunk_path, options.threads),
        samples,
        spec,
        cache,
        desc="trunk (onnxruntime)",
    )
    n_primary = len(checked[0].kept)
    return Prepared(
        samples=samples,
        groups=groups,
        labels=labels,
        primary=np.arange(n_primary),
        other=np.arange(n_primary, len(samples)),
        trunk=TrunkOutputs(out["b3"], out["b4"], out["map"]),
        hygiene={name: c.summary() for name, c in zip(("primary", "other"), checked, strict=False)}
        | {"cache_entries_rejected": cache.rejected},
    )


def run_facts(options: TrainOptions) -> dict[str, object]:
    """The settings the model card states (kept in the results so a card can be re-rendered)."""
    spec = input_spec(options)
    rule = options.target_sensitivity
    return {
        "name": options.name,
        "version": options.version,
        "architecture": options.architecture.value,
        "init": options.init.value,
        "head": HEAD_TEXT[options.architecture].format(head_convs=options.head_convs),
        "layout": layout_text(options.architecture, options.layout),
        "finetune": str(options.finetune),
        "booster": str(options.booster),
        "threshold_rule": "Youden's J" if rule is None else f"sensitivity >= {rule}",
        "input": f"{spec.size[0]}x{spec.size[1]} {spec.resize_mode.value}, grey in 3 channels, "
        f"{spec.colour_order.value} mean {list(spec.mean)} std {list(spec.std)} on 0-255 values",
    }


def _split_indices(prep: Prepared, split: str) -> np.ndarray:
    return np.array([i for i in prep.primary if prep.samples[i].split == split], dtype=int)


def _evaluate(
    prep: Prepared, model: FittedModel, x: np.ndarray, idx: np.ndarray
) -> dict[str, object]:
    p = classifier.predict(model.booster, x[idx])
    result = metrics.binary_metrics(prep.labels[idx], p, model.threshold)
    result["ci95"] = metrics.bootstrap_ci(prep.labels[idx], p, model.threshold, prep.groups[idx])
    result["per_class"] = metrics.per_class(prep.labels[idx], p, model.threshold)
    result["scores"] = {"y": prep.labels[idx].tolist(), "p": p.tolist()}
    return result


def _per_cluster(
    prep: Prepared, model: FittedModel, x: np.ndarray, idx: np.ndarray
) -> dict[str, object]:
    """Mean probability per group: one vote per radiograph group, not per augmented copy."""
    p = classifier.predict(model.booster, x[idx])
    groups = prep.groups[idx]
    uniq = sorted(set(groups.tolist()))
    yg = np.array([prep.labels[idx][groups == g].max() for g in uniq])
    pg = np.array([p[groups == g].mean() for g in uniq])
    return metrics.binary_metrics(yg, pg, model.threshold)


def run(options: TrainOptions, prepared: Prepared | None = None) -> dict[str, object]:
    """The whole training run; writes the bundle to ``options.out`` and returns the metrics.

    ``prepared`` (from :func:`prepare` with the same options) skips hygiene and the trunk pass.
    """
    torch.set_num_threads(options.threads)
    started = time.monotonic()
    options.work.mkdir(parents=True, exist_ok=True)
    network = build_network(
        options.architecture,
        options.init,
        options.weights,
        options.head_convs,
        options.seed,
        options.width_divisor,
    )
    head0 = network.head
    prep = prepared if prepared is not None else prepare(options, network.trunk)
    results: dict[str, object] = {"run": run_facts(options), "hygiene": prep.hygiene}
    if options.notes:
        results["notes"] = list(options.notes)

    def fit(
        fit_idx: np.ndarray, val_idx: np.ndarray, layout: FeatureLayout, tune: bool, tag: str
    ) -> tuple[FittedModel, np.ndarray]:
        return fit_on(prep, options, head0, fit_idx, val_idx, layout, tune, tag)

    if "published" not in options.protocols:
        raise TrainingError("the bundle is the published-split model: include 'published'")
    train, val, test = (_split_indices(prep, s) for s in ("train", "val", "test"))
    if len(train) == 0 or len(val) == 0:
        raise TrainingError(f"{options.data} has no train/ and val/ splits")
    bundle_model, bundle_x = fit(train, val, options.layout, True, "published")
    published: dict[str, object] = {
        "validation": bundle_model.validation,
        "finetune_log": bundle_model.finetune_log,
        "test": _evaluate(prep, bundle_model, bundle_x, test) if len(test) else None,
    }
    if options.int8 and len(test):
        published["int8"] = _int8(prep, options, network, bundle_model, bundle_x, train, test)
    if len(prep.other):
        published["other_source"] = {
            "files": _evaluate(prep, bundle_model, bundle_x, prep.other),
            "per_group": _per_cluster(prep, bundle_model, bundle_x, prep.other),
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
            "files": _evaluate(prep, model, x, prep.primary),
            "per_group": _per_cluster(prep, model, x, prep.primary),
            "validation": model.validation,
        }
    checkpoint()
    if options.compare_layouts:
        results["layouts"] = _compare_layouts(prep, head0, bundle_model, options, train, val, test)
        results["baselines"] = _baselines(prep, options, head0)
        checkpoint()
    return results


def _compare_layouts(
    prep: Prepared,
    head0: torch.nn.Module,
    tuned: FittedModel,
    options: TrainOptions,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
) -> dict[str, object]:
    """Published-split test metrics of each feature layout, frozen and fine-tuned.

    Fine-tuning does not depend on the layout, so the tuned head is reused and only LightGBM is
    refitted; the layout of the bundle is fixed in advance (test never chooses anything).
    """
    table: dict[str, object] = {}
    for tag, head in (("frozen", head0), ("finetuned", tuned.head)):
        b5 = head_onnx_features(
            head, prep.trunk.maps, options.work / "compare.onnx", options.threads
        )
        for layout in FeatureLayout:
            x = layout_features(layout, prep.trunk, b5)
            booster = classifier.train_booster(
                x[train], prep.labels[train], x[val], prep.labels[val], options.booster
            )
            threshold, _ = metrics.choose_threshold(
                prep.labels[val], classifier.predict(booster, x[val]), options.target_sensitivity
            )
            table[f"{layout.value}_{tag}"] = {
                "layout": layout_text(options.architecture, layout),
                "head": tag,
                "test": metrics.binary_metrics(
                    prep.labels[test], classifier.predict(booster, x[test]), threshold
                ),
            }
    return table


def _baselines(prep: Prepared, options: TrainOptions, head0: torch.nn.Module) -> dict[str, object]:
    """Frozen-feature baselines on the same protocols: this backbone and the other one."""
    from osteoflag.training import compare

    b5 = head_onnx_features(head0, prep.trunk.maps, options.work / "compare.onnx", options.threads)
    this = options.architecture
    out: dict[str, object] = {
        f"{this.value}_{options.layout.value}_frozen": compare.lightgbm_protocols(
            prep, options, layout_features(options.layout, prep.trunk, b5)
        )
    }
    for other in Architecture:
        if other is not this:
            layout = compare.BASELINE_LAYOUT[other]
            out[f"{other.value}_{layout.value}_frozen"] = compare.lightgbm_protocols(
                prep, options, compare.frozen_features(prep, options, other)
            )
    return out


def fit_on(
    prep: Prepared,
    options: TrainOptions,
    head0: torch.nn.Module,
    fit_idx: np.ndarray,
    val_idx: np.ndarray,
    layout: FeatureLayout,
    tune: bool,
    tag: str,
) -> tuple[FittedModel, np.ndarray]:
    """One fit of the bundle's procedure (see :func:`fit_model`), logged with its protocol."""
    if tag != "published":  # the published split is honoured as published, leaks included
        assert_disjoint(prep.groups, fit_idx, val_idx)
    logger.info(
        "fitting",
        extra={"action": "fit", "protocol": tag, "fit": len(fit_idx), "val": len(val_idx)},
    )
    return fit_model(
        head0,
        prep.trunk,
        prep.labels,
        fit_idx,
        val_idx,
        layout,
        options.finetune if tune else None,
        options.booster,
        options.target_sensitivity,
        options.work,
        options.threads,
    )


def cv_fold(prep: Prepared, options: TrainOptions, network: Network, k: int) -> dict[str, Any]:
    """Fold ``k`` of the grouped CV: fit inside the fold's training groups, score its test groups.

    Folds are independent, so they can also run in separate processes and be merged with
    :func:`summarise_cv`.
    """
    idx = prep.primary
    y, g = prep.labels[idx], prep.groups[idx]
    tr, te = list(group_folds(y, g, options.folds, options.seed))[k]
    a, b = group_holdout(y[tr], g[tr], 0.15, options.seed + k)
    fit_idx = idx[tr[a]]
    model, x = fit_on(
        prep, options, network.head, fit_idx, idx[tr[b]], options.layout, True, f"cv{k}"
    )
    p = classifier.predict(model.booster, x[idx[te]])
    m = metrics.binary_metrics(y[te], p, model.threshold)
    if options.int8:
        m["int8"] = _int8(prep, options, network, model, x, fit_idx, idx[te])
    m["fold"] = k
    m["finetune_log"] = model.finetune_log
    m["scores"] = {"index": te.tolist(), "p": p.tolist()}
    return m


def _int8(
    prep: Prepared,
    options: TrainOptions,
    network: Network,
    model: FittedModel,
    x: np.ndarray,
    calibration: np.ndarray,
    evaluate: np.ndarray,
) -> dict[str, Any]:
    """This fit's INT8 graph (calibrated on ``calibration``) scored on ``evaluate``."""
    from osteoflag.training import int8

    int8_x, calibration_images = int8.int8_features(
        network,
        model,
        options.layout,
        prep.samples,
        calibration,
        evaluate,
        input_spec(options),
        options.work,
        options.threads,
    )
    float_p = classifier.predict(model.booster, x[evaluate])
    return int8.compare(prep.labels[evaluate], float_p, model, int8_x, calibration_images)


def summarise_cv(prep: Prepared, folds: list[dict[str, Any]]) -> dict[str, object]:
    """Mean and t-interval of the fold AUCs, plus a group bootstrap of the pooled scores."""
    idx = prep.primary
    y, g = prep.labels[idx], prep.groups[idx]
    oof = np.full(len(idx), np.nan)
    for fold in folds:
        oof[np.asarray(fold["scores"]["index"], dtype=int)] = fold["scores"]["p"]
    auc_mean, auc_lo, auc_hi = metrics.mean_ci([float(f["auc"]) for f in folds])
    acc_mean, acc_lo, acc_hi = metrics.mean_ci([float(f["accuracy"]) for f in folds])
    int8_folds = [f["int8"] for f in folds if "int8" in f]
    int8 = (
        {
            precision: {
                "auc_mean": float(np.mean([f[precision]["auc"] for f in int8_folds])),
                "accuracy_mean": float(np.mean([f[precision]["accuracy"] for f in int8_folds])),
            }
            for precision in ("float32", "int8")
        }
        | {"max_auc_drop": max(f["auc_drop"] for f in int8_folds)}
        if int8_folds
        else None
    )
    return {
        "folds": [{k: v for k, v in f.items() if k != "scores"} for f in folds],
        "int8": int8,
        "auc_mean": auc_mean,
        "auc_ci95_t": [auc_lo, auc_hi],
        "accuracy_mean": acc_mean,
        "accuracy_ci95_t": [acc_lo, acc_hi],
        "pooled_auc_ci95_group_bootstrap": metrics.bootstrap_ci(y, oof, 0.5, g)["auc"],
        "scores": {"y": y.tolist(), "p": oof.tolist()},
    }


def write_bundle(
    options: TrainOptions,
    prep: Prepared,
    network: Network,
    model: FittedModel,
    trained_x: np.ndarray,
    results: dict[str, object],
) -> None:
    """Export the full graph, verify it against the split graphs, write files and manifest."""
    staging = options.out.with_name(options.out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    full = FeatureGraph(network.trunk, model.head, options.layout).eval()
    spec = input_spec(options)
    inputs = np.stack(
        [features.prepare(prep.samples[i], spec) for i in range(export.PARITY_IMAGES)]
    )
    export.export_onnx(full, torch.from_numpy(inputs[:1]), staging / "backbone.onnx")
    parity = export.check_parity(full, staging / "backbone.onnx", inputs, options.threads)
    served = features.run_arrays(export.session(staging / "backbone.onnx", options.threads), inputs)
    split_error = export.max_relative_error(served, trained_x[: len(served)])
    if not split_error <= export.PARITY_MAX_RELATIVE_ERROR:
        raise TrainingError(
            f"bundle graph differs from the graphs training used: {split_error:.3g}"
        )
    results["parity"] = {"torch_vs_onnxruntime": parity, "bundle_vs_training_graphs": split_error}
    model.booster.save_model(
        str(staging / "classifier.txt"), num_iteration=model.booster.best_iteration
    )
    metrics_doc = report.strip_scores(results)
    (staging / "metrics.json").write_text(json.dumps(metrics_doc, indent=2, default=float) + "\n")
    report.write_card(staging, results)
    training_data = {
        "sources": {
            "primary": str(options.data),
            "other": str(options.other) if options.other else None,
        },
        "bundle_fitted_on": "primary train split; epoch, early stopping, threshold: primary val",
        "counts": {s: len(_split_indices(prep, s)) for s in ("train", "val", "test")},
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
            "layout": layout_text(options.architecture, options.layout)
            + "; fine-tuned: "
            + HEAD_TEXT[options.architecture].format(head_convs=options.head_convs),
        },
        classifier={"file": "classifier.txt", "kind": "lightgbm"},
        threshold={"value": model.threshold, "method": model.threshold_method},
        metrics={"validation": report.strip_scores(model.validation)},
    )
    shutil.rmtree(options.out, ignore_errors=True)
    staging.rename(options.out)
    logger.info("bundle written", extra={"action": "bundle_written", "path": str(options.out)})

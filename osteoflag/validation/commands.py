"""``osteoflag validate``: argument parsing over :mod:`osteoflag.validation`.

It runs in the runtime install (no torch, no scikit-learn); the model code is imported inside
the handlers so the rest of the command line stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from osteoflag.config import Settings
from osteoflag.errors import UsageError

if TYPE_CHECKING:
    from osteoflag.inference.predictor import Predictor
    from osteoflag.training.dataset import Found, Sample
    from osteoflag.validation.scoring import Scored

DATA_HELP = (
    "labelled images: fracture/ and nofracture/ folders (DICOM, PNG, JPEG; an optional "
    "groups.csv with file,group[,representative]), or any folder with a labels CSV"
)
LABELS_HELP = (
    "labels CSV (default DIR/labels.csv if present): label (fracture, nofracture or unsure, "
    "left out), file (relative to DIR) or sop_instance_uid, optional group (patient/study)"
)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--labels``, ``--representatives``, ``--cache``: shared with ``adapt``."""
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help=DATA_HELP)
    parser.add_argument("--labels", type=Path, metavar="CSV", help=LABELS_HELP)
    parser.add_argument(
        "--representatives",
        action="store_true",
        help="score one image per near-duplicate cluster (rows with representative=1)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="keep backbone features here, checksummed, to skip the backbone on re-runs",
    )
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0 = auto)")


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``validate``."""
    parser.add_argument(
        "--bundle", type=Path, metavar="DIR", help="model bundle (default: [model] bundle)"
    )
    add_data_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        metavar="REPORT",
        help="write a Markdown report here (ROC and reliability PNGs beside it)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def read_samples(args: argparse.Namespace) -> Found:
    """The labelled set the command line names."""
    from osteoflag.training.dataset import find_samples

    if not args.data.is_dir():
        raise UsageError(f"--data {args.data}: not a folder")
    if args.labels is not None and not args.labels.is_file():
        raise UsageError(f"--labels {args.labels}: no such file")
    return find_samples(args.data, representatives_only=args.representatives, labels=args.labels)


def score_data(predictor: Predictor, args: argparse.Namespace, desc: str) -> Scored:
    """Score the command line's labelled set with ``predictor`` (cached when asked)."""
    found = read_samples(args)
    return _score(predictor, args, found.samples, desc, found.skipped)


def run_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Score the bundle on the labelled set; print figures, write the report if asked."""
    from osteoflag.inference.bundle import load_bundle
    from osteoflag.inference.predictor import Predictor
    from osteoflag.validation import report
    from osteoflag.validation.scoring import BATCH
    from osteoflag.validation.validate import served, summarise

    folder = args.bundle if args.bundle is not None else settings.model.bundle
    bundle = load_bundle(folder)
    predictor = Predictor(bundle, threads=args.threads, batch_size=BATCH)
    decoded = score_data(predictor, args, "validate")
    if not len(decoded.samples):
        raise UsageError(f"--data {args.data}: no image could be decoded")
    scored, outside = served(predictor, decoded, args.data)
    result = summarise(bundle, scored, args.data, outside)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plots, note = report.write_plots(args.out, scored.labels, scored.probabilities, result)
        args.out.write_text(report.markdown(result, plots, note), encoding="utf-8")
    if args.json:
        sys.stdout.write(json.dumps(result, allow_nan=False) + "\n")
    else:
        sys.stdout.write(report.summary_line(result))
    return 0


def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``adapt``."""
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR", help="base bundle")
    add_data_arguments(parser)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="new bundle folder (must not exist)"
    )
    parser.add_argument(
        "--site",
        required=True,
        metavar="NAME",
        help="site name: the version becomes X.Y.Z+site.NAME",
    )
    parser.add_argument(
        "--base-data",
        type=Path,
        metavar="DIR",
        help="the base bundle's training images, mixed into every fit (their train and val "
        "splits; a test split is only scored, to show the cost on that source)",
    )
    parser.add_argument("--folds", type=int, default=5, help="grouped CV folds (default 5)")
    parser.add_argument("--seed", type=int, default=0)


def run_adapt(args: argparse.Namespace, settings: Settings) -> int:
    """Refit the head on the site, write the new bundle, print base against adapted."""
    from osteoflag.inference.bundle import MANIFEST, load_bundle, sha256_file
    from osteoflag.inference.predictor import Predictor
    from osteoflag.training.classifier import BoosterConfig
    from osteoflag.training.dataset import discover
    from osteoflag.validation.adapt import BaseRows, adapt_head
    from osteoflag.validation.adapted_bundle import (
        adapted_version,
        check_out,
        model_card,
        write_adapted,
    )
    from osteoflag.validation.scoring import BATCH
    from osteoflag.validation.validate import served

    if args.folds < 2:
        raise UsageError(f"--folds {args.folds}: needs at least 2")
    base = load_bundle(args.bundle)
    version = adapted_version(base.manifest.version, args.site)
    check_out(args.bundle, args.out)
    predictor = Predictor(base, threads=args.threads, batch_size=BATCH)
    site, skipped_by_guard = served(predictor, score_data(predictor, args, "site"), args.data)
    rows = None
    if args.base_data is not None:
        samples = discover(args.base_data, source="base")
        fit = [s for s in samples if s.split != "test"]
        test = [s for s in samples if s.split == "test"]
        scored_test = _score(predictor, args, test, "base test") if test else None
        rows = BaseRows(fit=_score(predictor, args, fit, "base fit"), test=scored_test)
    config = BoosterConfig(
        seed=args.seed,
        view_starts=base.manifest.features.views,
        linear=base.manifest.classifier.linear is not None,
        cells=base.manifest.classifier.cells is not None,
    )
    calibrate = base.manifest.calibration is not None
    adapted = adapt_head(site, rows, base.threshold, args.folds, config, calibrate)
    y = site.labels
    training_data = {
        "adapted_from": {
            "model": base.model_id,
            "manifest_sha256": sha256_file(base.path / MANIFEST),
            "training_data": base.manifest.training_data,
        },
        "site": {
            "name": args.site,
            "data": str(args.data),
            "labels": str(args.labels) if args.labels else None,
            "images": len(y),
            "fracture": int(y.sum()),
            "nofracture": int(len(y) - y.sum()),
            "groups": len(set(site.groups)),
            "skipped": len(site.skipped),
            "skipped_by_guard": skipped_by_guard,
        },
        "mixed_with": None
        if rows is None
        else {
            "data": str(args.base_data),
            "images": len(rows.fit.samples),
            "splits": "train and val" if rows.test is not None else "all",
        },
        "head": f"LightGBM refitted, {config}; backbone unchanged",
    }
    card = model_card(base, version, training_data, adapted)
    written = write_adapted(base, args.out, adapted, version, training_data, card)
    cv = adapted.metrics["site_cv"]
    summary = {
        "bundle": str(written.path),
        "model": written.model_id,
        "site_auc_base": cv["pooled"]["base"]["auc"],
        "site_auc_adapted": cv["pooled"]["adapted"]["auc"],
        "site_auc_mean_base": cv["base_auc_mean"],
        "site_auc_mean_adapted": cv["adapted_auc_mean"],
        "threshold": adapted.threshold,
        "base_source_test": adapted.metrics.get("base_source_test"),
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _score(
    predictor: Predictor,
    args: argparse.Namespace,
    samples: list[Sample],
    desc: str,
    not_images: Sequence[tuple[Path, str]] = (),
) -> Scored:
    from osteoflag.training.features import FeatureCache
    from osteoflag.validation.scoring import score_samples

    manifest = predictor.bundle.manifest
    cache = (
        None
        if args.cache is None
        else FeatureCache(args.cache, manifest.files[manifest.backbone.file])
    )
    return score_samples(predictor, samples, cache, desc=desc, not_images=not_images)

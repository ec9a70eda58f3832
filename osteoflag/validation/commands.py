"""``osteoflag validate``: argument parsing over :mod:`osteoflag.validation`.

It runs in the runtime install (no torch, no scikit-learn); the model code is imported inside
the handlers so the rest of the command line stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from osteoflag.config import Settings
from osteoflag.errors import UsageError

if TYPE_CHECKING:
    from osteoflag.inference.predictor import Predictor
    from osteoflag.training.dataset import Sample
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


def read_samples(args: argparse.Namespace) -> list[Sample]:
    """The labelled set the command line names."""
    from osteoflag.training.dataset import discover

    if not args.data.is_dir():
        raise UsageError(f"--data {args.data}: not a folder")
    if args.labels is not None and not args.labels.is_file():
        raise UsageError(f"--labels {args.labels}: no such file")
    return discover(args.data, representatives_only=args.representatives, labels=args.labels)


def score_data(predictor: Predictor, args: argparse.Namespace, desc: str) -> Scored:
    """Score the command line's labelled set with ``predictor`` (cached when asked)."""
    from osteoflag.training.features import FeatureCache
    from osteoflag.validation.scoring import score_samples

    samples = read_samples(args)
    cache = None
    if args.cache is not None:
        manifest = predictor.bundle.manifest
        cache = FeatureCache(args.cache, manifest.files[manifest.backbone.file])
    return score_samples(predictor, samples, cache, desc=desc)


def run_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Score the bundle on the labelled set; print figures, write the report if asked."""
    from osteoflag.inference.bundle import load_bundle
    from osteoflag.inference.predictor import Predictor
    from osteoflag.validation import report
    from osteoflag.validation.scoring import BATCH
    from osteoflag.validation.validate import summarise

    folder = args.bundle if args.bundle is not None else settings.model.bundle
    bundle = load_bundle(folder)
    predictor = Predictor(bundle, threads=args.threads, batch_size=BATCH)
    scored = score_data(predictor, args, "validate")
    if not len(scored.samples):
        raise UsageError(f"--data {args.data}: no image could be decoded")
    result = summarise(bundle, scored, args.data)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plots, note = report.write_plots(args.out, scored.labels, scored.probabilities, result)
        args.out.write_text(report.markdown(result, plots, note), encoding="utf-8")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(
            f"{result['model']} on {result['n']} images: AUC {result['auc']}, "
            f"sensitivity {result['sensitivity']:.3f}, specificity {result['specificity']:.3f} "
            f"at threshold {result['threshold']:.4f}\n"
        )
    return 0

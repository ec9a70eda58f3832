"""``osteoflag ood-reference``: give a bundle its out-of-distribution guard.

The bundle's own training images are scored through the serving path: their ``train`` split
gives the anchors, ``val`` the threshold (a folder without splits is split by group, 80/20).
The reference is written into the bundle and the manifest re-pinned (through a copy that
replaces the bundle whole); the guard then applies wherever the bundle is served.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from osteoflag.config import Settings
from osteoflag.errors import UsageError


def add_ood_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ood-reference``."""
    from osteoflag.validation.commands import add_data_arguments

    parser.add_argument(
        "--bundle", type=Path, required=True, metavar="DIR", help="bundle to give a guard"
    )
    add_data_arguments(parser)


def run_ood_reference(args: argparse.Namespace, settings: Settings) -> int:
    """Fit the reference on the bundle's training images and pin it in the bundle."""
    from osteoflag.inference.bundle import load_bundle, write_manifest
    from osteoflag.inference.ood import OOD_FILE, OodReference
    from osteoflag.inference.predictor import Predictor
    from osteoflag.publish import rewriting
    from osteoflag.validation.commands import score_data
    from osteoflag.validation.folds import group_holdout
    from osteoflag.validation.scoring import BATCH

    bundle = load_bundle(args.bundle)
    predictor = Predictor(bundle, threads=args.threads, batch_size=BATCH)
    scored = score_data(predictor, args, "ood reference")
    splits = np.array([s.split for s in scored.samples])
    if (splits == "train").any() and (splits == "val").any():
        fit, held = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
    else:
        if len(set(scored.groups)) < 10:
            raise UsageError(f"--data {args.data}: needs at least 10 groups to hold some out")
        fit, held = group_holdout(scored.labels, scored.groups)
    reference = OodReference.fit(scored.features[fit], scored.features[held])
    manifest = bundle.manifest.model_dump(mode="json", exclude={"files", "format_version"})
    with rewriting(args.bundle) as staging:
        (staging / OOD_FILE).write_bytes(reference.to_bytes())
        write_manifest(staging, **manifest)
        Predictor(load_bundle(staging), threads=1, batch_size=1)
    held_out = reference.distances(scored.features[held])
    summary = {
        "bundle": str(args.bundle),
        "anchors": len(reference.anchors),
        "threshold": reference.threshold,
        "held_out": len(held),
        "held_out_skipped": float((held_out > reference.threshold).mean()),
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0

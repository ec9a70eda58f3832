"""``osteoflag quantize``: the CLI's two entry points, free of heavy imports.

Exit 0 with the INT8 bundle written when its AUC is within
``osteoflag.inference.quantize.MAX_AUC_DROP`` of float32's (imported only when the command
runs); exit 1 with the same figures, and nothing written, when it is not; exit 2, before any
work, when ``--data`` has too few readable images of a label for that rule to mean anything.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from osteoflag.config import Settings


def add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``quantize`` sub-command."""
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR", help="float32 bundle")
    parser.add_argument(
        "--calibration", type=Path, required=True, metavar="DIR", help="training images"
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="labelled folder (fracture/, nofracture/; 100 or more images of each) scored "
        "with both precisions",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="new INT8 bundle")
    parser.add_argument(
        "--calibration-images",
        type=int,
        metavar="N",
        help="calibration images, spread over the folder (default 512)",
    )


def run_quantize(args: argparse.Namespace, settings: Settings) -> int:
    """Print the figures as one JSON object; 0 when the INT8 bundle was written."""
    from osteoflag.inference.bundle_out import check_apart
    from osteoflag.inference.quantize import CALIBRATION_IMAGES, quantize_bundle

    check_apart(args.bundle, args.out)
    figures = quantize_bundle(
        args.bundle,
        args.calibration,
        args.data,
        args.out,
        count=args.calibration_images or CALIBRATION_IMAGES,
        threads=settings.model.threads,
    )
    print(json.dumps(figures, indent=2))
    return 0 if figures["usable"] else 1

"""``osteoflag drift-reference``: give a bundle the reference drift watch compares against.

It scores in-distribution images (e.g. the bundle's validation images) through the serving
path, reads their input statistics from the DICOM headers (pictures give only their size),
writes ``drift_reference.json`` into the bundle and re-writes its manifest, so the file is
hash-pinned like every other.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from osteoflag.config import Settings
from osteoflag.drift.reference import Inputs
from osteoflag.errors import UsageError


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``drift-reference``."""
    from osteoflag.validation.commands import add_data_arguments

    parser.add_argument(
        "--bundle", type=Path, required=True, metavar="DIR", help="bundle to give a reference"
    )
    add_data_arguments(parser)


def file_inputs(path: Path, probability: float) -> Inputs:
    """The drift statistics of one image file (header only)."""
    import pydicom
    from PIL import Image, UnidentifiedImageError
    from pydicom.errors import InvalidDicomError

    tags = ["BodyPartExamined", "PhotometricInterpretation", "Manufacturer", "Rows", "Columns"]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except (InvalidDicomError, OSError):
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError):
            return Inputs(probability)
        return Inputs(probability, rows=height, columns=width)
    return Inputs(
        probability,
        body_part=str(ds.get("BodyPartExamined", "")) or None,
        photometric=str(ds.get("PhotometricInterpretation", "")) or None,
        manufacturer=str(ds.get("Manufacturer", "")) or None,
        rows=int(ds.get("Rows", 0)) or None,
        columns=int(ds.get("Columns", 0)) or None,
    )


def run_reference(args: argparse.Namespace, settings: Settings) -> int:
    """Score the images, write the reference into the bundle, re-pin the manifest."""
    from osteoflag.drift.reference import REFERENCE_FILE, Reference
    from osteoflag.inference.bundle import load_bundle, write_manifest
    from osteoflag.inference.predictor import Predictor
    from osteoflag.publish import rewriting
    from osteoflag.validation.commands import score_data
    from osteoflag.validation.scoring import BATCH

    bundle = load_bundle(args.bundle)
    predictor = Predictor(bundle, threads=args.threads, batch_size=BATCH)
    scored = score_data(predictor, args, "reference")
    if len(scored.samples) < 50:
        raise UsageError(
            f"--data {args.data}: {len(scored.samples)} images decoded; a reference needs 50"
        )
    inputs = [
        file_inputs(sample.path, p)
        for sample, p in zip(scored.samples, scored.probabilities, strict=True)
    ]
    reference = Reference.build(inputs, f"{args.data}, {len(inputs)} images")
    manifest = bundle.manifest.model_dump(mode="json", exclude={"files", "format_version"})
    with rewriting(args.bundle) as staging:
        reference.write(staging / REFERENCE_FILE)
        write_manifest(staging, **manifest)
        load_bundle(staging)
    sys.stdout.write(json.dumps({"bundle": str(args.bundle), "n": reference.n}) + "\n")
    return 0

"""Labelled 'site' sets for validate/adapt tests: DICOM radiographs whose label is visible.

Fracture images carry strong fine-grained noise and no-fracture images weak noise, which the
tiny test backbone's features separate well, but which the tiny bundle's own classifier (fitted
on an unrelated feature) was never taught: a site where the base model is poor and a refitted
head is good, as at a new hospital.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from testkit.inference_data import dataset, save

PARTS = ("HAND", "WRIST")


def site_image(label: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A 12-bit picture: smooth background plus noise whose strength depends on ``label``."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = 0.3 + 0.3 * np.exp(-(((x - rng.uniform(0.3, 0.7)) / 0.2) ** 2)) + 0.1 * y
    strength = rng.uniform(0.15, 0.3) if label else rng.uniform(0.0, 0.04)
    picture = np.clip(base + strength * rng.standard_normal((size, size)), 0.0, 1.0)
    return np.rint(picture * 4095).astype(np.int64)


def write_site(
    folder: Path,
    per_class: int,
    seed: int = 0,
    per_group: int = 2,
    size: int = 48,
    parts: tuple[str, ...] = PARTS,
    inverted: bool = False,
    nofracture: int | None = None,
) -> Path:
    """``per_class`` DICOM files of each label under ``folder/images`` and ``folder/labels.csv``
    (sop_instance_uid, label, group: ``per_group`` images of one label per patient group);
    ``inverted`` stores negatives under MONOCHROME2, as a misconfigured modality would;
    ``nofracture`` sets that label's count apart (a clinic's mix rather than half and half)."""
    rng = np.random.default_rng(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, count in ((1, per_class), (0, per_class if nofracture is None else nofracture)):
        for index in range(count):
            pixels = site_image(label, rng, size)
            ds = dataset(
                4095 - pixels if inverted else pixels,
                bits_stored=12,
                BodyPartExamined=parts[index % len(parts)],
            )
            save(ds, images / f"{label}-{index:03d}.dcm")
            name = "fracture" if label else "nofracture"
            rows.append([ds.SOPInstanceUID, name, f"p{label}-{index // per_group:03d}"])
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sop_instance_uid", "label", "group"])
        writer.writerows(rows)
    return labels

"""Tiny training sources in the layouts ``osteoflag train`` reads: OsteoAI-like split folders
and a multiregion-like folder with ``groups.csv``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(
    root: Path,
    splits: tuple[str | None, ...],
    n: int,
    seed: int,
    conflicting: bool = False,
) -> None:
    """``n`` noise JPEGs per label and split (``None``: no split folder, with a
    ``groups.csv``); fractures carry a bright vertical line and pairs of files share a source
    group. With ``conflicting``, the first pair of each label in ``train`` shares one file stem,
    so the same source carries both labels (a conflicting group)."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in splits:
        for label in ("fracture", "nofracture"):
            folder = root / split / label if split else root / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 200, (40, 36)).astype(np.uint8)
                if label == "fracture":
                    pixels[:, 16:19] = 255
                shared = conflicting and split == "train" and i < 2
                stem = "shared" if shared else f"{split}-{label}-{i // 2}"
                name = f"{stem}_png.rf.{rng.integers(1 << 40):012x}.jpg"
                Image.fromarray(pixels).save(folder / name)
                rows.append({"file": f"{label}/{name}", "group": f"{label}{i // 2}"})
    if splits == (None,):
        with (root / "groups.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["file", "group"])
            writer.writeheader()
            writer.writerows(rows)

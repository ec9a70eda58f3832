"""Synthetic boxed radiographs in the fracture-boxes layout, for the localiser's tests.

Each image is a dim ramp with noise and one bright blob; its only box is centred on the blob
(``HALF_BOX`` pixels either side), so a working localiser must point at the blob.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROWS, COLUMNS = 120, 160
HALF_BOX = 10  # pixels either side of the blob's centre


def blob_radiograph(rng: np.random.Generator) -> tuple[Any, tuple[float, float]]:
    """A dim ramp with noise and one bright blob; returns the image and the blob's centre."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float32)
    cx, cy = rng.uniform(20, COLUMNS - 20), rng.uniform(20, ROWS - 20)
    image = 0.15 + 0.1 * x / COLUMNS + 0.05 * rng.standard_normal((ROWS, COLUMNS))
    image += 0.8 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 4.0**2))
    return np.clip(image, 0, 1).astype(np.float32), (cx, cy)


def boxes_folder(root: Path, count: int, seed: int) -> list[tuple[Path, tuple[float, float]]]:
    """``count`` blob radiographs as a fracture-boxes folder (PNG images, YOLO labels, two
    copies per source stem); returns each image's path and blob centre."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(seed)
    written, rows = [], []
    for index in range(count):
        image, (cx, cy) = blob_radiograph(rng)
        name = f"case{index}.png"
        Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "images" / name)
        w, h = 2 * HALF_BOX / COLUMNS, 2 * HALF_BOX / ROWS
        line = f"1 {cx / COLUMNS:.5f} {cy / ROWS:.5f} {w:.5f} {h:.5f}\n"
        (root / "labels" / f"case{index}.txt").write_text(line)
        rows.append([name, f"stem{index // 2}", "train", COLUMNS, ROWS, 1, ""])
        written.append((root / "images" / name, (cx, cy)))
    with (root / "images.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = "file source_stem roboflow_split width height fracture_boxes"
        writer.writerow([*header.split(), "near_duplicate_in_multiregion"])
        writer.writerows(rows)
    return written


def film(seed: int) -> Image.Image:
    """A 300x400 grey film with bone-like structure (bright bars and ellipses on a dark field,
    lightly blurred): enough texture for keypoints, unlike the blob radiographs."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (300, 400), 20)
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rng.uniform(0, 300), rng.uniform(0, 400)
        w, h = rng.uniform(8, 60), rng.uniform(8, 60)
        shade = int(rng.integers(90, 250))
        if rng.random() < 0.5:
            draw.ellipse((x, y, x + w, y + h), fill=shade)
        else:
            draw.line((x, y, x + w, y + 3 * h), fill=shade, width=int(rng.integers(3, 12)))
    return image.filter(ImageFilter.GaussianBlur(1.5))

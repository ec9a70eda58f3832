"""Fixed, seeded image-space augmentations of a display image (training only).

A trunk pass per augmented image is what makes augmentation cost on a CPU; so each image gets
a few *fixed* copies (copy ``k`` of an image is always the same pixels), whose trunk outputs the
feature cache keeps like any other input. Copy 0 is the image itself; :data:`FLIP` is its
horizontal mirror (the test-time augmentation). The transforms mimic what differs between
hospitals: framing (crop), positioning (rotation, mirror), exposure and processing
(brightness, contrast, gamma, blur, noise) and display polarity (inverted grey).
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from osteoflag.inference.localiser import mirrored
from osteoflag.inference.pixels import DisplayImage, FloatArray

#: Copy number of the plain horizontal mirror.
FLIP = -1


def _rng(key: str, copy: int) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256(f"{key}:{copy}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def _crop(pixels: FloatArray, rng: np.random.Generator) -> FloatArray:
    h, w = pixels.shape
    ch, cw = max(2, int(h * rng.uniform(0.75, 1.0))), max(2, int(w * rng.uniform(0.75, 1.0)))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return pixels[top : top + ch, left : left + cw]


def _rotate(pixels: FloatArray, degrees: float) -> FloatArray:
    image = Image.fromarray(pixels).rotate(degrees, Image.Resampling.BILINEAR, fillcolor=0.0)
    return np.asarray(image, dtype=np.float32)


def _tone(pixels: FloatArray, rng: np.random.Generator) -> FloatArray:
    gamma = float(np.exp(rng.uniform(-0.4, 0.4)))
    out = np.clip(pixels, 0.0, 1.0) ** gamma
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-0.1, 0.1)
    return np.asarray((out - 0.5) * contrast + 0.5 + brightness, dtype=np.float32)


def _degrade(pixels: FloatArray, rng: np.random.Generator) -> FloatArray:
    draw = rng.random()
    if draw < 0.3:
        return np.asarray(gaussian_filter(pixels, float(rng.uniform(0.5, 1.5))), np.float32)
    if draw < 0.6:
        noise = rng.normal(0.0, rng.uniform(0.01, 0.04), pixels.shape)
        return np.asarray(pixels + noise, dtype=np.float32)
    return pixels


def augment(display: DisplayImage, key: str, copy: int) -> DisplayImage:
    """Copy ``copy`` of the image identified by ``key`` (its path): 0 is the image itself,
    :data:`FLIP` its mirror, any other number a fixed random transform of it."""
    pixels = display.pixels
    if copy == 0:
        return display
    if copy == FLIP:
        return mirrored(display)
    rng = _rng(key, copy)
    pixels = _crop(pixels, rng)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    if rng.random() < 0.7:
        pixels = _rotate(np.ascontiguousarray(pixels), float(rng.uniform(-15.0, 15.0)))
    pixels = _degrade(_tone(np.ascontiguousarray(pixels), rng), rng)
    if rng.random() < 0.15:
        pixels = 1.0 - np.clip(pixels, 0.0, 1.0)
    out = np.ascontiguousarray(np.clip(pixels, 0.0, 1.0), dtype=np.float32)
    return DisplayImage(out, display.frames, (*display.notes, f"augmented copy {copy}"))

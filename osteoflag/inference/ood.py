"""Out-of-distribution guard: how far an image's backbone features lie from the training images.

A bundle may carry ``ood_reference.npz``: up to ``MAX_ANCHORS`` training images' pooled
features (unit length, float16) and a threshold. An image's distance is one minus the mean
cosine similarity of its features to their ``K`` nearest anchors. The threshold is the
``quantile`` (0.98) of the distances of held-out in-distribution images, so about 2% of them
would be skipped; it is chosen when the reference is made, never at serving time. The worker
skips an image beyond it, with the distance and the threshold in the reason.

Why not a Mahalanobis distance: on the default bundle's features, Mahalanobis in the leading
principal axes (8 to 512 of them, raw or log features) skipped 0-47% of generated noise,
documents, photos and smooth non-bone images at the same 2% in-distribution rate; this
nearest-neighbour distance skipped 97-100% of them (README, Out-of-distribution guard).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from osteoflag.errors import BundleError

OOD_FILE = "ood_reference.npz"
MAX_ANCHORS = 1024
K = 5
QUANTILE = 0.98
MIN_HELD_OUT = 50

Matrix = npt.NDArray[np.floating]


def _unit(features: Matrix) -> npt.NDArray[np.float32]:
    x = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: npt.NDArray[np.float32] = x / np.maximum(norms, 1e-12)
    return unit


@dataclass(frozen=True)
class OodReference:
    """Anchor features of training images and the distance threshold."""

    anchors: npt.NDArray[np.float32]  # (n, F), unit rows
    threshold: float
    quantile: float
    k: int = K

    @classmethod
    def fit(
        cls,
        fit: Matrix,
        held_out: Matrix,
        quantile: float = QUANTILE,
        max_anchors: int = MAX_ANCHORS,
        seed: int = 0,
    ) -> OodReference:
        """Anchors drawn from ``fit``, threshold from ``held_out`` (both in-distribution)."""
        if len(fit) < K or len(held_out) < MIN_HELD_OUT:
            raise BundleError(
                f"an out-of-distribution reference needs at least {K} fitting and "
                f"{MIN_HELD_OUT} held-out images, got {len(fit)} and {len(held_out)}"
            )
        rows = np.random.default_rng(seed).permutation(len(fit))[:max_anchors]
        anchors = _unit(np.asarray(fit)[np.sort(rows)]).astype(np.float16).astype(np.float32)
        unscaled = cls(anchors, np.inf, quantile)
        threshold = float(np.quantile(unscaled.distances(held_out), quantile, method="higher"))
        return cls(anchors, threshold, quantile)

    def shifted(self, before: Matrix, after: Matrix) -> OodReference:
        """The same anchors, the threshold moved by the median change in distance from
        ``before`` to ``after``: the features of the same in-distribution images from this
        reference's backbone and from one that approximates it (an INT8 copy).

        The anchors stay (the training images they came from are not in the bundle) and so
        does what the threshold means (the reference's quantile of its own held-out images):
        only the approximation's systematic change is taken out. The median of paired
        changes uses every image, where re-choosing a quantile would rest on a few in the
        tail, and of whatever set the images come from.
        """
        if len(before) != len(after) or len(before) < MIN_HELD_OUT:
            raise BundleError(
                f"moving an out-of-distribution threshold needs the same {MIN_HELD_OUT} or "
                f"more images from both backbones, got {len(before)} and {len(after)}"
            )
        change = float(np.median(self.distances(after) - self.distances(before)))
        return replace(self, threshold=self.threshold + change)

    def distances(self, features: Matrix) -> npt.NDArray[np.float64]:
        """Each row's distance: 1 - mean cosine similarity to its ``k`` nearest anchors."""
        similarity = _unit(features) @ self.anchors.T
        nearest = np.sort(similarity, axis=1)[:, -self.k :]
        return np.asarray(1.0 - nearest.mean(axis=1), dtype=np.float64)

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's content (anchors kept as float16)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            anchors=self.anchors.astype(np.float16),
            threshold=np.array(self.threshold),
            quantile=np.array(self.quantile),
            k=np.array(self.k),
        )
        return buffer.getvalue()

    @classmethod
    def read(cls, path: Path, feature_count: int) -> OodReference:
        """Load and check against the bundle's feature count."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                reference = cls(
                    npz["anchors"].astype(np.float32),
                    float(npz["threshold"]),
                    float(npz["quantile"]),
                    int(npz["k"]),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"{path}: out-of-distribution reference unreadable: {exc}") from exc
        if reference.anchors.ndim != 2 or reference.anchors.shape[1] != feature_count:
            raise BundleError(
                f"{path}: anchors of shape {reference.anchors.shape}, the bundle has "
                f"{feature_count} features"
            )
        return reference

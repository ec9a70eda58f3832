"""Which images of a boxes set are one radiograph, whatever their publisher's source stems say.

A publisher's stem groups the augmented copies it made of one upload, but the same film can be
uploaded twice and get two stems (the fracture-boxes set holds 13 such films under 28 of its 182
stems). Cross-validation and bootstrap intervals grouped by stem would then see one radiograph,
and its box, on both sides. Two stems are one radiograph when a keypoint match survives the
near-duplicate test the multiregion set was cleaned with: SIFT on a 320 px CLAHE image (and its
mirror, since copies may be flipped), an affine fit by RANSAC with at least
:data:`MIN_INLIERS` inliers, then the aligned images' correlation at least
:data:`MIN_ALIGNED_CORRELATION` where they overlap (at least :data:`MIN_OVERLAP` of the
other image). Candidates are each stem's :data:`CANDIDATES` nearest by
thumbnail correlation, so the matching grows with the set, not its square.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from osteoflag.training.unionfind import UnionFind

logger = logging.getLogger(__name__)

SIDE: Final = 320  # pixels on the long side for keypoints
THUMB: Final = 48  # thumbnail side for picking candidates
CANDIDATES: Final = 10
RATIO: Final = 0.8  # Lowe's ratio test
MIN_INLIERS: Final = 40
MIN_ALIGNED_CORRELATION: Final = 0.85
RANSAC_PIXELS: Final = 4.0
MIN_OVERLAP: Final = 0.5  # of the target image, for the correlation to speak for it

Grey = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class _Image:
    grey: Grey
    keypoints: npt.NDArray[np.float32]  # (n, 2) positions
    descriptors: npt.NDArray[np.float32] | None
    thumb: npt.NDArray[np.float32]  # zero mean, unit norm, flattened


def _load(path: Path) -> Grey:
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        raise ValueError(f"{path}: not a readable image")
    scale = SIDE / max(grey.shape)
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return np.asarray(cv2.createCLAHE(2.0, (8, 8)).apply(cv2.resize(grey, size)), dtype=np.uint8)


def _describe(grey: Grey, sift: cv2.SIFT) -> _Image:
    points, descriptors = sift.detectAndCompute(grey, None)
    thumb = cv2.resize(grey, (THUMB, THUMB)).astype(np.float32).ravel()
    thumb -= thumb.mean()
    return _Image(
        grey,
        np.array([p.pt for p in points], dtype=np.float32).reshape(-1, 2),
        None if descriptors is None else np.asarray(descriptors, dtype=np.float32),
        thumb / (float(np.linalg.norm(thumb)) + 1e-6),
    )


def _blurred(grey: Grey) -> npt.NDArray[np.float64]:
    return cv2.GaussianBlur(grey, (5, 5), 0).astype(np.float64)


def _same_radiograph(a: _Image, b: _Image, matcher: cv2.BFMatcher) -> bool:
    """Whether ``a`` maps onto ``b`` by an affine transform that makes them look alike."""
    if a.descriptors is None or b.descriptors is None or len(b.keypoints) < 2:
        return False
    pairs = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < MIN_INLIERS:
        return False
    source = a.keypoints[[m.queryIdx for m in good]]
    target = b.keypoints[[m.trainIdx for m in good]]
    affine, inliers = cv2.estimateAffine2D(source, target, ransacReprojThreshold=RANSAC_PIXELS)
    if affine is None or int(inliers.sum()) < MIN_INLIERS:
        return False
    height, width = b.grey.shape
    warped = np.asarray(cv2.warpAffine(a.grey, affine, (width, height)), dtype=np.uint8)
    covered = cv2.warpAffine(np.ones_like(a.grey), affine, (width, height)) > 0
    if covered.mean() < MIN_OVERLAP:
        return False
    x, y = _blurred(warped)[covered], _blurred(b.grey)[covered]
    x, y = x - x.mean(), y - y.mean()
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return denominator > 0 and float(x @ y) / denominator >= MIN_ALIGNED_CORRELATION


def radiograph_groups(paths: Sequence[Path], stems: Sequence[str]) -> list[str]:
    """For each image, its radiograph: the first (sorted) of the stems found to be one film.

    Images sharing a stem are one radiograph already; the first image of each stem speaks for
    it (matching every copy finds more, but copies turned by their publisher share black
    corners that keypoints match across different films).
    """
    first: dict[str, Path] = {}
    for path, stem in zip(paths, stems, strict=True):
        first.setdefault(stem, path)
    order = sorted(first)
    sift = cv2.SIFT.create(nfeatures=800)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    plain = [_describe(_load(first[stem]), sift) for stem in order]
    mirrored = [_describe(np.ascontiguousarray(image.grey[:, ::-1]), sift) for image in plain]
    thumbs = np.stack([image.thumb for image in plain])
    films = UnionFind(len(order))  # a root is its film's smallest index: the first stem
    for i in range(len(order)):
        for query in (plain[i], mirrored[i]):
            for j in map(int, np.argsort(-(thumbs @ query.thumb))[: CANDIDATES + 1]):
                if films.find(i) != films.find(j) and _same_radiograph(query, plain[j], matcher):
                    films.union(i, j)
    merged = {stem: order[films.find(k)] for k, stem in enumerate(order)}
    logger.info(
        "radiographs grouped",
        extra={
            "action": "radiographs",
            "stems": len(order),
            "radiographs": len(set(merged.values())),
        },
    )
    return [merged[stem] for stem in stems]

"""Labelled images through a bundle exactly as the daemon sees them: pixels, backbone, classifier.

``evaluate``, ``validate`` and ``adapt`` all score through :func:`score_samples`: it keeps the
backbone features (``adapt`` refits the head on them) and, for a bundle with a cell term, the
backbone's maps (in float16: 0.4 MB an image at 384 px), the probabilities and each image's
``BodyPartExamined``, and logs and leaves out the images that cannot be decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from osteoflag.errors import PixelDataError
from osteoflag.inference.pixels import load_display, model_input
from osteoflag.inference.predictor import Predictor
from osteoflag.training.dataset import Sample
from osteoflag.training.features import FeatureCache, sha256_bytes
from osteoflag.training.unionfind import UnionFind

logger = logging.getLogger(__name__)

BATCH = 16
#: The body part shown for pictures (PNG, JPEG) and DICOM files without BodyPartExamined.
UNKNOWN_PART = "unknown"


@dataclass(frozen=True)
class Scored:
    """What a bundle made of a labelled set: one row per image that could be decoded."""

    samples: list[Sample]
    features: npt.NDArray[np.float32]
    probabilities: npt.NDArray[np.float64]
    body_parts: list[str]
    skipped: list[tuple[Path, str]]
    #: The backbone's map of each row (float16), when the bundle's classifier reads it.
    maps: npt.NDArray[np.float16] | None = None
    #: SHA-256 of each row's model input: the same picture saved twice gives the same one.
    inputs: tuple[str, ...] = ()

    @property
    def labels(self) -> npt.NDArray[np.int_]:
        return np.array([s.label for s in self.samples], dtype=int)

    @property
    def groups(self) -> list[str]:
        """Each image's group; an image without one is its own group. Images with the same
        model input (one picture under two names) are merged into one group, so that no fold
        is judged on a copy of an image it was fitted on."""
        named = [s.group or s.path.as_posix() for s in self.samples]
        sets = UnionFind(len(named))
        first: dict[tuple[str, str], int] = {}
        for i, name in enumerate(named):
            sets.union(i, first.setdefault(("group", name), i))
        for i, key in enumerate(self.inputs):
            sets.union(i, first.setdefault(("input", key), i))
        return [named[sets.find(i)] for i in range(len(named))]

    def subset(self, keep: npt.NDArray[np.bool_]) -> Scored:
        """The rows where ``keep`` is true."""
        rows = np.flatnonzero(keep)
        return Scored(
            samples=[self.samples[i] for i in rows],
            features=self.features[rows],
            probabilities=self.probabilities[rows],
            body_parts=[self.body_parts[i] for i in rows],
            skipped=self.skipped,
            maps=None if self.maps is None else self.maps[rows],
            inputs=tuple(self.inputs[i] for i in rows) if self.inputs else (),
        )


def body_part(path: Path) -> str:
    """``BodyPartExamined`` of a DICOM file (header only); :data:`UNKNOWN_PART` otherwise."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["BodyPartExamined"])
    except (InvalidDicomError, OSError):
        return UNKNOWN_PART
    value = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    return value or UNKNOWN_PART


def score_samples(
    predictor: Predictor,
    samples: Sequence[Sample],
    cache: FeatureCache | None = None,
    desc: str = "scoring",
    not_images: Sequence[tuple[Path, str]] = (),
) -> Scored:
    """Features and probabilities of ``samples`` (progress bar on stderr when it is a tty);
    ``not_images``, the files discovery left out, head the ``skipped`` list."""
    spec = predictor.bundle.input_spec
    kept: list[Sample] = []
    keys: list[str] = []
    rows: list[dict[str, npt.NDArray[np.generic]] | None] = []
    pending: list[tuple[int, str, npt.NDArray[np.float32]]] = []
    skipped: list[tuple[Path, str]] = list(not_images)
    spatial = predictor.uses_maps

    def flush() -> None:
        feats, maps = predictor.run(np.stack([x for _, _, x in pending]))
        for i, (row, key, _) in enumerate(pending):
            values: dict[str, npt.NDArray[np.generic]] = {"features": feats[i]}
            if spatial and maps is not None:
                values["maps"] = maps[i].astype(np.float16)
            rows[row] = values
            if cache is not None:
                cache.put(key, values)
        pending.clear()

    for sample in tqdm(samples, desc=desc, unit="img", disable=None):
        try:
            x = model_input(load_display(sample.path), spec)
        except PixelDataError as exc:
            logger.warning(
                "image skipped",
                extra={"action": "score_skip", "file": str(sample.path), "reason": str(exc)},
            )
            skipped.append((sample.path, str(exc)))
            continue
        kept.append(sample)
        key = sha256_bytes(x.tobytes())
        keys.append(key)
        hit = cache.get(key) if cache is not None else None
        if hit is not None and spatial and "maps" not in hit:
            hit = None  # cached by a run that did not need the map
        rows.append(hit)
        if hit is None:
            pending.append((len(rows) - 1, key, x))
            if len(pending) == BATCH:
                flush()
    if pending:
        flush()
    count = predictor.bundle.manifest.features.count
    done = [r for r in rows if r is not None]
    features = (
        np.stack([r["features"] for r in done]).astype(np.float32, copy=False)
        if done
        else np.zeros((0, count), dtype=np.float32)
    )
    maps = np.stack([r["maps"] for r in done]).astype(np.float16) if spatial and done else None
    probabilities = np.array(
        [
            p
            for start in range(0, len(features), 256)
            for p in predictor.scores(
                features[start : start + 256], None if maps is None else maps[start : start + 256]
            )
        ],
        dtype=float,
    )
    return Scored(
        samples=kept,
        features=features,
        probabilities=probabilities,
        body_parts=[body_part(s.path) for s in kept],
        skipped=skipped,
        maps=maps,
        inputs=tuple(keys),
    )

"""Data hygiene: unreadable files, duplicates, near-duplicates, source groups, label conflicts.

Published fracture datasets leak: Roboflow exports several augmented copies of one radiograph
(``<stem>_<ext>.rf.<hash>.jpg``) and split per file. Every split here is made per *group*:
the union of the file-name stem, exact pixel duplicates, perceptual-hash near-duplicates under
the 8 dihedral transforms, and any groups the data set ships (``groups.csv``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image
from tqdm import tqdm

from osteoflag.training.dataset import Sample
from osteoflag.training.unionfind import UnionFind

logger = logging.getLogger(__name__)

ROBOFLOW = re.compile(
    r"^(?P<stem>.+)_(?:jpe?g|png|bmp|gif|tiff?)\.rf\.[0-9a-f]{8,}$", re.IGNORECASE
)
#: phash Hamming distance at or below which two images count as one radiograph.
NEAR_DUP_DISTANCE = 4

Loader = Callable[[Sample], np.ndarray]


@dataclass
class HygieneReport:
    """What the data check found; ``groups[i]`` is the group id of ``kept[i]``."""

    kept: list[Sample]
    groups: list[str]
    pixel_hashes: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    exact_duplicates: list[tuple[str, str]] = field(default_factory=list)
    near_duplicate_pairs: int = 0
    conflicting_groups: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """JSON-ready counts (file names of problems included, never pixel data)."""
        return {
            "images": len(self.kept),
            "groups": len(set(self.groups)),
            "unreadable": [{"file": f, "reason": r} for f, r in self.unreadable],
            "exact_duplicates_dropped": len(self.exact_duplicates),
            "near_duplicate_pairs": self.near_duplicate_pairs,
            "conflicting_label_groups": len(self.conflicting_groups),
            "conflicting_label_images": sum(
                1 for g in self.groups if g in set(self.conflicting_groups)
            ),
        }


def source_stem(sample: Sample) -> str:
    """The Roboflow source stem, or the file stem when the name is not a Roboflow export."""
    match = ROBOFLOW.match(sample.path.stem)
    return match.group("stem") if match else sample.path.stem


def shared_sources(seen: Sequence[Sample], scored: Sequence[Sample]) -> int:
    """How many of ``scored`` share their source radiograph (Roboflow stem) with one of
    ``seen``: the published split's measure of how much its test set repeats training."""
    stems = {source_stem(sample) for sample in seen}
    return sum(source_stem(sample) in stems for sample in scored)


def _dihedral_hashes(grey: np.ndarray) -> np.ndarray:
    """phash (64 bits as uint64) of the 8 rotations/flips of a [0,1] grey image."""
    img = Image.fromarray((np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8)).resize((128, 128))
    arr = np.asarray(img)
    out = np.empty(8, dtype=np.uint64)
    for k in range(8):
        t = np.rot90(arr, k % 4)
        t = np.fliplr(t) if k >= 4 else t
        bits = imagehash.phash(Image.fromarray(np.ascontiguousarray(t))).hash.flatten()
        out[k] = np.packbits(bits).view(">u8")[0]
    return out


_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    counts: np.ndarray = _BITS[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.int32)
    return counts


def near_duplicate_pairs(
    hashes: np.ndarray, max_distance: int = NEAR_DUP_DISTANCE
) -> list[tuple[int, int]]:
    """Pairs (i<j) whose phash distance under some dihedral transform is ``<= max_distance``.

    ``hashes`` is ``[n, 8]``: column 0 the image as is, columns 1-7 its transforms.
    """
    pairs: list[tuple[int, int]] = []
    plain = hashes[:, 0]
    for i in range(len(hashes)):
        dist = _popcount(np.bitwise_xor(hashes[i][:, None], plain[None, i + 1 :])).min(axis=0)
        pairs += [(i, i + 1 + int(j)) for j in np.flatnonzero(dist <= max_distance)]
    return pairs


def check(samples: Sequence[Sample], load: Loader) -> HygieneReport:
    """Decode every sample once, drop unreadable files and exact duplicates, build groups."""
    kept: list[Sample] = []
    pixel_hashes: list[str] = []
    phashes: list[np.ndarray] = []
    unreadable: list[tuple[str, str]] = []
    duplicates: list[tuple[str, str]] = []
    first_of: dict[str, str] = {}
    for sample in tqdm(samples, desc="hygiene: decode", mininterval=5):
        try:
            grey = load(sample)
        except Exception as exc:  # any decoder failure is a data finding, not a crash
            unreadable.append((str(sample.path), f"{type(exc).__name__}: {exc}"))
            continue
        digest = hashlib.sha256(np.ascontiguousarray(grey, dtype=np.float32).tobytes()).hexdigest()
        if digest in first_of:
            duplicates.append((str(sample.path), first_of[digest]))
            continue
        first_of[digest] = str(sample.path)
        kept.append(sample)
        pixel_hashes.append(digest)
        phashes.append(_dihedral_hashes(grey))
    uf = UnionFind(len(kept))
    by_key: dict[tuple[str, str], int] = {}
    for i, sample in enumerate(kept):
        keys = [("stem", f"{sample.source}/{source_stem(sample)}")]
        if sample.group is not None:
            keys.append(("group", f"{sample.source}/{sample.group}"))
        for key in keys:
            uf.union(i, by_key.setdefault(key, i))
    pairs = near_duplicate_pairs(np.stack(phashes)) if phashes else []
    for a, b in pairs:
        uf.union(a, b)
    groups = [f"g{uf.find(i):05d}" for i in range(len(kept))]
    labels: dict[str, set[int]] = {}
    for g, sample in zip(groups, kept, strict=True):
        labels.setdefault(g, set()).add(sample.label)
    report = HygieneReport(
        kept=kept,
        groups=groups,
        pixel_hashes=pixel_hashes,
        unreadable=unreadable,
        exact_duplicates=duplicates,
        near_duplicate_pairs=len(pairs),
        conflicting_groups=sorted(g for g, s in labels.items() if len(s) > 1),
    )
    logger.info("hygiene done", extra={"action": "hygiene", **report.summary()})
    return report

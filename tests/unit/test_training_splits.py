"""Grouping and splitting: no source radiograph on both sides of any split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteoflag.training.backbones import TrainingError
from osteoflag.training.dataset import Sample
from osteoflag.training.hygiene import check, near_duplicate_pairs, source_stem
from osteoflag.training.splits import assert_disjoint, group_folds, group_holdout


def test_group_folds_never_share_a_group() -> None:
    rng = np.random.default_rng(0)
    groups = [f"g{int(i)}" for i in rng.integers(0, 60, 500)]
    labels = [int(g[1:]) % 2 for g in groups]
    g = np.asarray(groups)
    seen_test: list[str] = []
    for train, test in group_folds(labels, groups, 5, seed=1):
        assert not set(g[train]) & set(g[test])
        seen_test += sorted(set(g[test]))
    assert sorted(seen_test) == sorted(set(groups))
    fit, val = group_holdout(labels, groups, 0.2, seed=2)
    assert not set(g[fit]) & set(g[val])


def test_assert_disjoint_names_the_shared_group() -> None:
    with pytest.raises(TrainingError, match="g1"):
        assert_disjoint(np.array(["g0", "g1", "g1"]), np.array([0, 1]), np.array([2]))


def test_roboflow_copies_share_a_stem() -> None:
    a = Sample(Path("x/elbow-fracture_jpg.rf.71650459c69a9734ecd545067cf18bf4.jpg"), 1, "s")
    b = Sample(Path("y/elbow-fracture_jpg.rf.0123456789abcdef0123456789abcdef.jpg"), 1, "s")
    assert source_stem(a) == source_stem(b) == "elbow-fracture"
    assert source_stem(Sample(Path("mr-45d9c76e59a9.jpg"), 0, "s")) == "mr-45d9c76e59a9"


def test_hygiene_groups_duplicates_flips_and_conflicts() -> None:
    rng = np.random.default_rng(3)
    base = rng.random((64, 64)).astype(np.float32)
    other = rng.random((64, 64)).astype(np.float32)
    images = {
        "a.png": base,
        "a_copy.png": base.copy(),  # exact duplicate: dropped
        "a_flip.png": np.fliplr(base).copy(),  # near-duplicate under a flip: same group
        "b.png": other,
        "c_jpg.rf.0123456789abcdef.jpg": rng.random((64, 64)).astype(np.float32),
        "c_jpg.rf.fedcba9876543210.jpg": rng.random((64, 64)).astype(np.float32),
    }
    labels = {"a.png": 1, "a_copy.png": 1, "a_flip.png": 0, "b.png": 0}
    samples = [Sample(Path(n), labels.get(n, 1), "s") for n in images]
    report = check(samples, lambda s: images[s.path.name] if s.path.name != "b.png" else _boom())
    kept = [s.path.name for s in report.kept]
    assert "a_copy.png" not in kept and "b.png" not in kept
    assert report.unreadable and report.unreadable[0][0] == "b.png"
    group = dict(zip(kept, report.groups, strict=True))
    assert group["a.png"] == group["a_flip.png"]
    assert group["c_jpg.rf.0123456789abcdef.jpg"] == group["c_jpg.rf.fedcba9876543210.jpg"]
    assert group["a.png"] in report.conflicting_groups


def _boom() -> np.ndarray:
    raise OSError("truncated file")


def test_near_duplicate_pairs_threshold() -> None:
    hashes = np.zeros((3, 8), dtype=np.uint64)
    hashes[1, 0] = np.uint64(0b111)  # distance 3 from image 0
    hashes[2, :] = np.uint64(0xFFFF)  # distance 16 from both
    assert near_duplicate_pairs(hashes, max_distance=4) == [(0, 1)]

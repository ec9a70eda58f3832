"""The feature cache returns what was stored, and never a tampered entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from osteoflag.training.features import FeatureCache


def _entry(cache: FeatureCache, key: str) -> Path:
    return next(cache.folder.rglob(f"{key}.npz"))


def test_roundtrip_and_key_includes_backbone(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "a" * 64)
    arrays = {"b3": np.arange(6, dtype=np.float32), "map": np.ones((2, 2), np.float32)}
    cache.put("k" * 64, arrays)
    got = cache.get("k" * 64)
    assert got is not None and np.array_equal(got["b3"], arrays["b3"])
    assert FeatureCache(tmp_path, "b" * 64).get("k" * 64) is None


def test_tampered_entry_is_rejected_and_removed(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "a" * 64)
    cache.put("k" * 64, {"b3": np.zeros(4, np.float32)})
    path = _entry(cache, "k" * 64)
    with np.load(path) as npz:
        digest = npz["__digest__"]
    np.savez(path, __digest__=digest, b3=np.full(4, 7.0, np.float32))  # same digest, new values
    assert cache.get("k" * 64) is None
    assert cache.rejected == 1
    assert not path.exists()


def test_truncated_entry_is_rejected(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "a" * 64)
    cache.put("k" * 64, {"b3": np.zeros(400, np.float32)})
    path = _entry(cache, "k" * 64)
    path.write_bytes(path.read_bytes()[:100])
    assert cache.get("k" * 64) is None

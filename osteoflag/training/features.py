"""Running images through an exported ONNX graph, with a verified on-disk cache.

Every image goes through :mod:`osteoflag.inference.pixels` (the daemon's own preprocessing)
and then through onnxruntime, exactly as in serving. Outputs are cached by (backbone hash,
model-input hash); each entry carries a SHA-256 over its key and arrays, so a tampered or
truncated entry is detected, discarded and recomputed instead of silently poisoning a run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from osteoflag.inference.pixels import InputSpec, load_display, model_input
from osteoflag.training.augment import augment
from osteoflag.training.dataset import Sample

logger = logging.getLogger(__name__)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 (used for graph files and model inputs)."""
    return hashlib.sha256(data).hexdigest()


def _digest(backbone: str, key: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(f"{backbone}:{key}".encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class FeatureCache:
    """Outputs of one backbone graph, one ``.npz`` per model input, integrity-checked."""

    def __init__(self, root: Path, backbone_hash: str) -> None:
        self.backbone_hash = backbone_hash
        self.folder = root / backbone_hash[:24]
        self.rejected = 0

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The cached arrays, or ``None`` when absent or failing verification."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files if name != "__digest__"}
                stored = str(npz["__digest__"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            self._reject(path, f"unreadable: {exc}")
            return None
        if stored != _digest(self.backbone_hash, key, arrays):
            self._reject(path, "digest mismatch")
            return None
        return arrays

    def _reject(self, path: Path, reason: str) -> None:
        self.rejected += 1
        logger.warning(
            "feature cache entry rejected",
            extra={"action": "cache_reject", "file": str(path), "reason": reason},
        )
        path.unlink(missing_ok=True)

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store atomically (write to a temporary name, then rename)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            payload = {"__digest__": np.array(_digest(self.backbone_hash, key, arrays)), **arrays}
            np.savez(fh, **payload)  # type: ignore[arg-type]
        os.replace(tmp, path)


def prepare(sample: Sample, spec: InputSpec, copy: int = 0) -> np.ndarray:
    """The serving preprocessing for one training image, or for its fixed augmented ``copy``
    (see :mod:`osteoflag.training.augment`; 0 is the image itself)."""
    display = load_display(sample.path)
    if copy:
        display = augment(display, str(sample.path), copy)
    return model_input(display, spec)


def run_images(
    sess: ort.InferenceSession,
    samples: Sequence[Sample],
    spec: InputSpec,
    cache: FeatureCache | None,
    batch_size: int = 16,
    desc: str = "features",
    copy: int = 0,
) -> dict[str, np.ndarray]:
    """All outputs of ``sess`` for ``samples`` (or their augmented ``copy``), in sample order."""
    names = [o.name for o in sess.get_outputs()]
    input_name = sess.get_inputs()[0].name
    results: list[dict[str, np.ndarray] | None] = [None] * len(samples)
    pending: list[tuple[int, str, np.ndarray]] = []

    def flush() -> None:
        batch = np.stack([x for _, _, x in pending])
        outs = sess.run(names, {input_name: batch})
        for j, (i, key, _) in enumerate(pending):
            arrays = {n: np.asarray(o[j]) for n, o in zip(names, outs, strict=True)}
            if cache is not None:
                cache.put(key, arrays)
            results[i] = arrays
        pending.clear()

    for i, sample in enumerate(tqdm(samples, desc=desc, mininterval=10)):
        x = prepare(sample, spec, copy)
        key = sha256_bytes(x.tobytes())
        hit = cache.get(key) if cache is not None else None
        if hit is not None:
            results[i] = hit
            continue
        pending.append((i, key, x))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return {n: np.stack([r[n] for r in results if r is not None]) for n in names}


def run_arrays(sess: ort.InferenceSession, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """First output of ``sess`` for an array of already prepared inputs (e.g. cached maps)."""
    input_name = sess.get_inputs()[0].name
    outs = [
        sess.run(
            None, {input_name: np.ascontiguousarray(inputs[i : i + batch_size], dtype=np.float32)}
        )[0]
        for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outs)

"""Classify local files without the daemon: the body of ``osteoflag infer``.

One JSON object per line and per file, in the order given (directories recursed, sorted):
``{"file", "probability", "label", "threshold", "model"}``, plus ``"region": {"peak": [x, y],
"box": [x0, y0, x1, y1]}`` (source pixels) for a fracture when the bundle localises, or
``{"file", "error"}`` for a file that cannot be classified, in which case the exit status is 1
once all are done.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from osteoflag.config import Settings
from osteoflag.errors import ConfigError, PixelDataError
from osteoflag.files import walk_files
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.labels import Label
from osteoflag.inference.pixels import load_display, model_input
from osteoflag.inference.predictor import Predictor

logger = logging.getLogger(__name__)


def _line(record: dict[str, object], as_json: bool) -> str:
    if as_json:
        return json.dumps(record)
    if "error" in record:
        return f"{record['file']}: ERROR {record['error']}"
    return (
        f"{record['file']}: {record['label']} (probability {record['probability']:.4f}, "
        f"threshold {record['threshold']}, model {record['model']})"
    )


def classify_files(
    predictor: Predictor, files: Sequence[Path], out: TextIO, *, as_json: bool = True
) -> int:
    """Classify ``files`` in batches, writing one line each; return how many failed."""
    spec = predictor.bundle.input_spec
    failures = 0
    for start in range(0, len(files), predictor.batch_size):
        chunk = files[start : start + predictor.batch_size]
        records: list[dict[str, object]] = []
        ready: list[int] = []
        inputs = []
        sizes: list[tuple[int, int]] = []
        displays = []
        for path in chunk:
            try:
                display = load_display(path)
                inputs.append(model_input(display, spec))
                sizes.append(display.size)
                displays.append(display)
                ready.append(len(records))
                records.append({"file": str(path)})
            except PixelDataError as exc:
                failures += 1
                records.append({"file": str(path), "error": str(exc)})
            except Exception as exc:  # one odd file must not cost the others their lines
                failures += 1
                error = f"unexpected {type(exc).__name__} while decoding: {exc}"
                records.append({"file": str(path), "error": error})
        predictions = predictor.predict_inputs(inputs, sizes, displays)
        for index, prediction in zip(ready, predictions, strict=True):
            records[index].update(
                probability=prediction.probability,
                label=prediction.label.value,
                threshold=prediction.threshold,
                model=prediction.model,
            )
            if prediction.label is Label.FRACTURE and prediction.region is not None:
                records[index]["region"] = prediction.region.as_json()
        for record in records:
            out.write(_line(record, as_json) + "\n")
        out.flush()
    return failures


def infer_paths(
    paths: Sequence[Path], settings: Settings, *, bundle_path: Path | None, as_json: bool
) -> int:
    """Load the bundle, classify every file under ``paths`` to stdout; 0 if all classified."""
    bundle = load_bundle(bundle_path or settings.model.bundle)
    predictor = Predictor(
        bundle, threads=settings.model.threads, batch_size=settings.model.batch_size
    )
    files = list(walk_files(paths))
    if not files:
        named = ", ".join(str(path) for path in paths)
        raise ConfigError(f"infer: no files found under {named} (hidden ones are left out)")
    failures = classify_files(predictor, files, sys.stdout, as_json=as_json)
    logger.info(
        "infer finished",
        extra={
            "action": "infer",
            "files": len(files),
            "failed": failures,
            "model": bundle.model_id,
        },
    )
    return 1 if failures else 0

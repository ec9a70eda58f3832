"""Finding labelled images on disk.

Layouts understood:
- ``ROOT/{fracture,nofracture}/*`` and ``ROOT/{train,val,test}/{fracture,nofracture}/*``
  (the published split is then recorded per sample);
- an optional ``ROOT/groups.csv`` with ``file`` and ``group`` columns (the multiregion set)
  whose groups are kept on one side of every split;
- a folder of DICOM files with a ``labels.csv`` (``file,label``; label fracture/nofracture).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from osteoflag.training.backbones import TrainingError

logger = logging.getLogger(__name__)

CLASSES = ("nofracture", "fracture")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm", ""}


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``label`` is 1 for fracture (the positive class)."""

    path: Path
    label: int
    source: str
    split: str | None = None
    group: str | None = None
    representative: bool = True


def _label(name: str, where: Path) -> int:
    try:
        return CLASSES.index(name.strip().lower().replace("_", "").replace(" ", ""))
    except ValueError as exc:
        raise TrainingError(f"{where}: unknown label {name!r} (want fracture/nofracture)") from exc


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def discover(
    root: Path, source: str | None = None, representatives_only: bool = False
) -> list[Sample]:
    """All labelled images under ``root`` in a stable order."""
    if not root.is_dir():
        raise TrainingError(f"data folder {root} does not exist")
    name = source or root.name
    labels_csv = root / "labels.csv"
    if labels_csv.is_file():
        with labels_csv.open(newline="") as fh:
            return [
                Sample(root / row["file"], _label(row["label"], labels_csv), name)
                for row in csv.DictReader(fh)
            ]
    meta = _groups_csv(root / "groups.csv")
    split_dirs: list[str | None] = [s for s in SPLITS if (root / s).is_dir()]
    samples: list[Sample] = []
    for split in split_dirs or [None]:  # None: no split folders
        base = root / split if split else root
        for cls in CLASSES:
            folder = base / cls
            if not folder.is_dir():
                continue
            for path in _images(folder):
                rel = path.relative_to(root).as_posix()
                group, rep = meta.get(rel, (None, True))
                if representatives_only and not rep:
                    continue
                samples.append(Sample(path, _label(cls, folder), name, split, group, rep))
    if not samples:
        raise TrainingError(f"no images under {root}/[train|val|test/]{{fracture,nofracture}}/")
    logger.info(
        "discovered images", extra={"action": "discover", "source": name, "n": len(samples)}
    )
    return samples


def _groups_csv(path: Path) -> dict[str, tuple[str, bool]]:
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        return {
            row["file"]: (row["group"], row.get("representative", "1") == "1")
            for row in csv.DictReader(fh)
        }

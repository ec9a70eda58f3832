"""Finding labelled images on disk.

Layouts understood:
- ``ROOT/{fracture,nofracture}/**`` and ``ROOT/{train,val,test}/{fracture,nofracture}/**``
  (the published split is then recorded per sample); class folders are walked to any depth (a
  PACS export keeps one folder per study and names files by UID), and a file counts when its
  content is an image, as ``infer`` decides: the other files are left out with a reason;
- an optional ``ROOT/groups.csv`` with ``file`` and ``group`` columns (the multiregion set)
  whose groups are kept on one side of every split;
- a folder of images with a labels CSV (``ROOT/labels.csv`` or one named explicitly): a
  ``label`` column (fracture / nofracture, also ``no_fracture`` or ``no fracture``; ``unsure``
  rows are left out) and either ``file`` (relative to ROOT) or ``sop_instance_uid`` (matched
  against the DICOM files under ROOT), with optional ``group`` and ``representative`` columns.

Nothing here imports torch: ``validate`` and ``adapt`` read labelled sets in the runtime install.
"""

from __future__ import annotations

import csv
import logging
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from osteoflag.errors import PixelDataError, TrainingError, UsageError
from osteoflag.files import walk_files
from osteoflag.inference.dicomfile import read_instance
from osteoflag.inference.pixels import is_part10, open_picture

logger = logging.getLogger(__name__)

CLASSES = ("nofracture", "fracture")
#: A reference label that says nothing either way (radiologists' feedback may record it).
UNSURE = "unsure"
SPLITS = ("train", "val", "test")
NOT_AN_IMAGE = "not a DICOM, PNG or JPEG image"


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


@dataclass(frozen=True)
class Found:
    """A labelled set as read from disk: its images, and the files left out with why."""

    samples: list[Sample]
    skipped: list[tuple[Path, str]]


def not_an_image(path: Path) -> str | None:
    """Why ``path`` is not an image ``infer`` would decode, or None when it is one: the
    content decides, with the tests of :func:`osteoflag.inference.pixels.load_display` (a
    Part 10 prefix, a picture Pillow recognises, a data set without the preamble that holds
    Pixel Data). No pixel is decoded."""
    try:
        if is_part10(path):
            return None
        picture = open_picture(path)
    except PixelDataError as exc:  # unreadable
        return str(exc)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None  # a picture, but a bad one: scoring reports why it cannot be decoded
    if picture is not None:
        picture.close()
        return None
    try:
        ds = read_instance(path, force=True)
    except PixelDataError:
        return NOT_AN_IMAGE
    return None if "PixelData" in ds else NOT_AN_IMAGE


def _images(folder: Path, skipped: list[tuple[Path, str]]) -> Iterable[Path]:
    for path in walk_files([folder]):
        reason = not_an_image(path)
        if reason is None:
            yield path
            continue
        logger.warning(
            "file skipped", extra={"action": "discover_skip", "file": str(path), "reason": reason}
        )
        skipped.append((path, reason))


def discover(
    root: Path,
    source: str | None = None,
    representatives_only: bool = False,
    labels: Path | None = None,
) -> list[Sample]:
    """All labelled images under ``root`` in a stable order (``labels``: a labels CSV)."""
    return find_samples(root, source, representatives_only, labels).samples


def find_samples(
    root: Path,
    source: str | None = None,
    representatives_only: bool = False,
    labels: Path | None = None,
) -> Found:
    """:func:`discover`, keeping the files of class folders that are not images, with why."""
    if not root.is_dir():
        raise UsageError(f"data folder {root} does not exist")
    name = source or root.name
    labels_csv = labels if labels is not None else root / "labels.csv"
    if labels is not None or labels_csv.is_file():
        listed = read_labels_csv(labels_csv, root, name)
        return Found([s for s in listed if s.representative or not representatives_only], [])
    meta = _groups_csv(root / "groups.csv")
    split_dirs: list[str | None] = [s for s in SPLITS if (root / s).is_dir()]
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    found: set[str] = set()  # every image's path relative to root, as groups.csv names it
    for split in split_dirs or [None]:  # None: no split folders
        base = root / split if split else root
        for cls in CLASSES:
            folder = base / cls
            if not folder.is_dir():
                continue
            for path in _images(folder, skipped):
                rel = path.relative_to(root).as_posix()
                found.add(rel)
                group, rep = meta.get(rel, (None, True))
                if representatives_only and not rep:
                    continue
                samples.append(Sample(path, _label(cls, folder), name, split, group, rep))
    if not samples:
        raise UsageError(f"no images under {root}/[train|val|test/]{{fracture,nofracture}}/")
    _check_groups_matched(
        root / "groups.csv", meta, found | {p.relative_to(root).as_posix() for p, _ in skipped}
    )
    logger.info(
        "discovered images",
        extra={"action": "discover", "source": name, "n": len(samples), "skipped": len(skipped)},
    )
    return Found(samples, skipped)


def read_labels_csv(path: Path, root: Path, source: str) -> list[Sample]:
    """Samples from a labels CSV (see the module docstring), in the CSV's row order."""
    rows, columns = _csv_rows(path, "labels CSV")
    if "label" not in columns or not columns & {"file", "sop_instance_uid"}:
        raise TrainingError(f"{path}: needs a 'label' column and a 'file' or 'sop_instance_uid'")
    by_uid = _dicom_files_by_uid(root) if "file" not in columns else {}
    samples: list[Sample] = []
    listed: dict[Path, int] = {}  # image -> the line that labelled it
    for number, row in enumerate(rows, start=2):
        where = Path(f"{path}:{number}")
        if row["label"].strip().lower() == UNSURE:
            continue
        if "file" in columns:
            image = root / row["file"]
        elif row["sop_instance_uid"].strip() in by_uid:
            image = by_uid[row["sop_instance_uid"].strip()]
        else:
            raise TrainingError(
                f"{where}: no DICOM file under {root} has SOPInstanceUID "
                f"{row['sop_instance_uid'].strip()!r}"
            )
        if not image.is_file():
            raise TrainingError(f"{where}: image {image} does not exist")
        label = _label(row["label"], where)
        first = listed.setdefault(image.resolve(), number)
        if first != number:  # counted twice it would narrow the intervals, or be both labels
            raise TrainingError(f"{where}: image {image} is already labelled on line {first}")
        group = (row.get("group") or "").strip() or None
        representative = (row.get("representative") or "1").strip() == "1"
        samples.append(Sample(image, label, source, None, group, representative))
    if not samples:  # a header alone: feedback exported before any reading was recorded
        raise UsageError(f"no labelled rows in {path}")
    return samples


def _csv_rows(path: Path, kind: str) -> tuple[list[dict[str, str]], set[str]]:
    """The rows and column names of a UTF-8 CSV (with or without a byte-order mark); a row
    with fewer fields than the header gets empty strings, so the checks name its line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, restval="")
            rows = list(reader)
            columns = set(reader.fieldnames or ())
    except OSError as exc:
        raise TrainingError(f"{path}: {kind} cannot be read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise TrainingError(
            f"{path}: {kind} is not UTF-8 (byte {exc.start}); save it as UTF-8"
        ) from exc
    return rows, columns


def _dicom_files_by_uid(root: Path) -> dict[str, Path]:
    """SOPInstanceUID -> file for every DICOM file under ``root`` (headers only)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    found: dict[str, Path] = {}
    for path in walk_files([root]):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except (InvalidDicomError, OSError):
            continue
        uid = ds.get("SOPInstanceUID")
        if uid:
            found[str(uid)] = path
    return found


def _check_groups_matched(path: Path, meta: dict[str, tuple[str, bool]], found: set[str]) -> None:
    """Refuse a groups CSV none of whose rows names a file here (its paths are written from
    another root: no group would apply, and the images it keeps together would split across
    folds); warn when some rows do not (a subset of the set it was written for)."""
    unmatched = sorted(set(meta) - found)
    if not unmatched:
        return
    if len(unmatched) == len(meta):
        raise TrainingError(
            f"{path}: none of its {len(meta)} rows names a file under {path.parent}, "
            f"e.g. {unmatched[0]!r} (write paths relative to {path.parent})"
        )
    logger.warning(
        "groups.csv rows name no file",
        extra={
            "action": "discover",
            "file": str(path),
            "unmatched": len(unmatched),
            "rows": len(meta),
            "example": unmatched[0],
        },
    )


def _groups_csv(path: Path) -> dict[str, tuple[str, bool]]:
    """``file -> (group, representative)``; read as the labels CSV is (a spreadsheet's UTF-8
    byte-order mark would otherwise rename the first column), each path normalised to how
    discovery writes it (``./fracture/x.dcm`` and ``fracture\\x.dcm`` are ``fracture/x.dcm``)."""
    if not path.is_file():
        return {}
    rows, columns = _csv_rows(path, "groups CSV")
    if not {"file", "group"} <= columns:
        raise TrainingError(f"{path}: needs 'file' and 'group' columns")
    return {
        posixpath.normpath(row["file"].replace("\\", "/")): (
            row["group"],
            row.get("representative", "1") == "1",
        )
        for row in rows
    }

"""The model bundle: a folder with ``manifest.json``, the ONNX backbone, the LightGBM model
and the model card files, every one of them pinned by SHA-256 in the manifest.

Loading validates the manifest and verifies every hash before anything is handed to
onnxruntime or LightGBM, so a tampered, truncated or half-copied bundle is refused with a
:class:`BundleError` naming the file. Training writes bundles with :func:`write_manifest`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from osteoflag.errors import BundleError
from osteoflag.inference.pixels import ColourOrder, InputSpec, ResizeMode

logger = logging.getLogger(__name__)

MANIFEST: Final = "manifest.json"
#: The model card every bundle carries (training writes it, quantisation appends to it).
MODEL_CARD: Final = "MODEL_CARD.md"
FORMAT_VERSION: Final = 1
_CHUNK: Final = 1 << 20
_EPS: Final = 1e-7

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Positive = Annotated[int, Field(ge=1)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSection(_Part):
    """How display pixels become the backbone input (see :class:`InputSpec`)."""

    size: tuple[Positive, Positive]
    resize_mode: ResizeMode
    colour_order: ColourOrder
    mean: tuple[float, float, float]
    std: tuple[
        Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]
    ]
    scale: Annotated[float, Field(gt=0)] = 255.0

    def spec(self) -> InputSpec:
        """The pixels module's view of this section."""
        return InputSpec(
            size=self.size,
            resize_mode=self.resize_mode,
            colour_order=self.colour_order,
            mean=self.mean,
            std=self.std,
            scale=self.scale,
        )


class BackboneSection(_Part):
    """The ONNX feature extractor: input ``image`` [N,3,H,W], output ``features`` [N,F]."""

    file: str
    architecture: str
    init: str
    precision: Literal["float32", "int8"] = "float32"


class FeaturesSection(_Part):
    """What the backbone emits: ``count`` values per image, arranged as ``layout`` says.

    ``views``: the columns where each view starts whose booster was fitted apart from the
    others' before their scores were averaged (empty: one booster on every column); ``adapt``
    refits the same way.
    """

    count: Positive
    layout: str
    views: tuple[Annotated[int, Field(ge=0)], ...] = ()

    @model_validator(mode="after")
    def _views_inside(self) -> FeaturesSection:
        if self.views and (
            self.views[0] != 0
            or list(self.views) != sorted(set(self.views))
            or self.views[-1] >= self.count
        ):
            raise ValueError(f"views {list(self.views)} must rise from 0 below count {self.count}")
        return self


class ClassifierSection(_Part):
    """The classifier on top of the features: a LightGBM text model and, when ``linear`` names
    one, a linear term added to its raw score (:mod:`osteoflag.inference.linear`); when
    ``cells`` names one, a cell probe on the backbone's map adds its share too
    (:mod:`osteoflag.inference.cellterm`)."""

    file: str
    kind: Literal["lightgbm"]
    linear: str | None = None
    cells: str | None = None


class ThresholdSection(_Part):
    """Decision threshold on the fracture probability and how it was chosen."""

    value: Annotated[float, Field(ge=0.0, le=1.0)]
    method: str


class CalibrationSection(_Part):
    """How the classifier's score becomes the served probability, fitted on validation groups.

    ``platt``: ``1 / (1 + exp(-(a * logit(score) + b)))`` (strictly increasing, so ranking and
    AUC are the classifier's own); ``isotonic``: piecewise linear through the points ``x`` (scores,
    increasing) and ``y`` (probabilities, non-decreasing), flat beyond the ends. The threshold is
    on the calibrated scale. A bundle without this section serves the classifier's score as is.
    """

    method: Literal["platt", "isotonic"]
    a: float | None = None
    b: float | None = None
    x: list[float] | None = None
    y: list[float] | None = None
    fitted_on: str = ""

    @model_validator(mode="after")
    def _parameters_match_the_method(self) -> CalibrationSection:
        if self.method == "platt":
            if self.a is None or self.b is None or self.a <= 0:
                raise ValueError("platt calibration needs a > 0 and b")
        else:
            x, y = self.x or [], self.y or []
            if len(x) < 2 or len(x) != len(y):
                raise ValueError("isotonic calibration needs x and y of the same length >= 2")
            if any(b < a for a, b in pairwise(x)) or any(b < a for a, b in pairwise(y)):
                raise ValueError("isotonic calibration points must be non-decreasing")
        return self

    def apply(self, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Calibrated probabilities of classifier scores in [0, 1]."""
        if self.method == "platt":
            s = np.clip(scores, _EPS, 1.0 - _EPS)
            z = float(self.a or 0.0) * np.log(s / (1.0 - s)) + float(self.b or 0.0)
            return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)
        return np.asarray(np.interp(scores, self.x or [], self.y or []), dtype=np.float64)


class LocaliserSection(_Part):
    """An optional model for *where* on a flagged image: ``file`` (``localiser.json``, kind
    ``cell-logistic``, see :mod:`osteoflag.inference.localiser`), what it was ``trained_on`` and
    its grouped cross-validated pointing-game figures. Without it, regions come from the
    classifier's evidence map."""

    file: str
    kind: Literal["cell-logistic"]
    trained_on: str
    cross_validation: dict[str, Any] = Field(default_factory=dict)


class Manifest(_Part):
    """``manifest.json``, format version 1 (``calibration`` and ``localiser`` optional; see
    their sections)."""

    format_version: Literal[1]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    version: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,31}$")]
    created: datetime
    training_data: dict[str, Any]
    input: InputSection
    backbone: BackboneSection
    features: FeaturesSection
    classifier: ClassifierSection
    threshold: ThresholdSection
    metrics: dict[str, Any]
    files: dict[str, Sha256]
    calibration: CalibrationSection | None = None
    localiser: LocaliserSection | None = None

    @field_validator("files")
    @classmethod
    def _relative_names(cls, files: dict[str, str]) -> dict[str, str]:
        for name in files:
            if not _safe_name(name) or name == MANIFEST:
                raise ValueError(f"file name {name!r} must be a relative path inside the bundle")
        return files

    @model_validator(mode="after")
    def _parts_are_listed(self) -> Manifest:
        parts = [("backbone", self.backbone.file), ("classifier", self.classifier.file)]
        if self.classifier.linear is not None:
            parts.append(("linear term", self.classifier.linear))
        if self.classifier.cells is not None:
            parts.append(("cell term", self.classifier.cells))
        if self.localiser is not None:
            parts.append(("localiser", self.localiser.file))
        for role, name in parts:
            if name not in self.files:
                raise ValueError(f"{role} file {name!r} has no entry in 'files'")
        return self


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks so large backbones don't sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bundle_files(folder: Path) -> dict[str, Path]:
    """Every regular file under ``folder`` except the manifest, by POSIX relative name."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            name = path.relative_to(folder).as_posix()
            if name != MANIFEST:
                found[name] = path
    return found


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk."""

    path: Path
    manifest: Manifest

    @property
    def model_id(self) -> str:
        """``NAME@VERSION``, as recorded with every result and shown by ``infer``."""
        return f"{self.manifest.name}@{self.manifest.version}"

    @property
    def backbone_path(self) -> Path:
        return self.path / self.manifest.backbone.file

    @property
    def classifier_path(self) -> Path:
        return self.path / self.manifest.classifier.file

    @property
    def linear_path(self) -> Path | None:
        """The classifier's linear term, when the bundle has one."""
        name = self.manifest.classifier.linear
        return None if name is None else self.path / name

    @property
    def cells_path(self) -> Path | None:
        """The classifier's cell term, when the bundle has one."""
        name = self.manifest.classifier.cells
        return None if name is None else self.path / name

    @property
    def localiser_path(self) -> Path | None:
        """The localiser's file, when the bundle has one."""
        section = self.manifest.localiser
        return None if section is None else self.path / section.file

    @property
    def input_spec(self) -> InputSpec:
        return self.manifest.input.spec()

    @property
    def threshold(self) -> float:
        return self.manifest.threshold.value


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "<root>"
    return f"'{where}': {first['msg']}"


def read_manifest(folder: Path) -> Manifest:
    """Parse and validate ``folder/manifest.json`` without checking the other files."""
    path = folder / MANIFEST
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: bundle manifest is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: bundle manifest cannot be read: {exc}") from exc
    try:
        return Manifest.model_validate(document)
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid manifest, {_describe(exc)}") from exc


def load_bundle(folder: Path) -> Bundle:
    """Validate the manifest and verify every listed file's SHA-256; refuse unlisted files."""
    if not folder.is_dir():
        raise BundleError(f"{folder}: model bundle folder does not exist")
    manifest = read_manifest(folder)
    present = _bundle_files(folder)
    for name, expected in manifest.files.items():
        path = folder / name
        if name not in present:
            raise BundleError(f"{path}: listed in the manifest but missing from the bundle")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"{path}: SHA-256 {actual} does not match the manifest's {expected}; "
                "the bundle was modified or is incomplete"
            )
    unlisted = sorted(set(present) - set(manifest.files))
    if unlisted:
        raise BundleError(f"{folder / unlisted[0]}: file not listed in the bundle manifest")
    bundle = Bundle(path=folder, manifest=manifest)
    logger.info(
        "model bundle verified",
        extra={"action": "bundle_loaded", "model": bundle.model_id, "files": len(present)},
    )
    return bundle


def write_manifest(folder: Path, **fields: Any) -> Manifest:
    """Write ``folder/manifest.json`` from ``fields``, hashing every other file in the folder.

    Call it last, once the backbone, classifier and model card files are in place. ``fields``
    are the manifest's keys except ``files`` and ``format_version``, which this fills in.
    """
    if "files" in fields or "format_version" in fields:
        raise BundleError("write_manifest computes 'files' and 'format_version' itself")
    hashes = {name: sha256_file(path) for name, path in _bundle_files(folder).items()}
    try:
        manifest = Manifest.model_validate(
            {"format_version": FORMAT_VERSION, **fields, "files": hashes}
        )
    except ValidationError as exc:
        raise BundleError(f"{folder / MANIFEST}: invalid manifest, {_describe(exc)}") from exc
    temporary = folder / f".{MANIFEST}.tmp"
    temporary.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, folder / MANIFEST)
    return manifest

"""What every object osteoflag derives from a radiograph shares: identity, UIDs, marking.

The SR, the presentation state and the summary image are new instances in the source study
(PS3.3 C.7.2 General Study module copied, a new General Series), with UIDs derived deterministically
(PS3.5 9.1, 2.25 / hash-derived roots) so that rebuilding after a crash or a retry yields
the very same SOP Instance UID, and the same series for every instance of a source
series processed by one model version.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Final

import highdicom as hd
from pydicom import Dataset
from pydicom.uid import UID, generate_uid

import osteoflag
from osteoflag.errors import PermanentError
from osteoflag.inference.bundle import MANIFEST, Bundle, sha256_file
from osteoflag.inference.labels import Label
from osteoflag.pacs import codes, values

RESEARCH_PREFIX: Final = "RESEARCH USE ONLY"
RESEARCH_STATEMENT: Final = "For research use only. Not for diagnostic use."
MANUFACTURER: Final = "osteoflag"
DEVICE_NAME: Final = "osteoflag RESEARCH USE ONLY"
DEVICE_MODEL_NAME: Final = "osteoflag fracture flag"

#: Type 2 Patient and General Study attributes: present in what we derive, empty if unknown.
PATIENT_STUDY_TYPE2: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_PATIENT_STUDY_OPTIONAL: Final = (
    "IssuerOfPatientID",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "StudyDescription",
)
#: Maximum characters of an LO value (PS3.5 Table 6.2-1).
LO_CHARACTERS: Final = 64
#: Timezone Offset From UTC (0008,0201): ``+HHMM`` or ``-HHMM`` (PS3.3 C.12.1.1.8).
_UTC_OFFSET: Final = re.compile(r"([+-])(\d\d)(\d\d)")
#: Every attribute :func:`study_evidence` copies from the source, besides the UIDs.
COPIED: Final = (*PATIENT_STUDY_TYPE2, *_PATIENT_STUDY_OPTIONAL)


class Kind(StrEnum):
    """The objects produced per source instance; also the outbound row's ``kind``."""

    SR = "sr"
    GSPS = "gsps"
    SUMMARY = "summary"


@dataclass(frozen=True)
class ModelIdentity:
    """The algorithm that produced a result (TID 4019): name, version, hash and threshold."""

    name: str
    version: str
    sha256: str
    threshold: float

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("model name is empty")
        if not self.version.strip():
            raise ValueError(f"model {self.name!r} has an empty version")
        if not math.isfinite(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"model threshold {self.threshold!r} is outside [0, 1]")

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ModelIdentity:
        """The identity of a loaded bundle; the hash is that of its manifest, which in turn
        lists the SHA-256 of every file of the bundle."""
        return cls(
            name=bundle.manifest.name,
            version=bundle.manifest.version,
            sha256=sha256_file(bundle.path / MANIFEST),
            threshold=bundle.threshold,
        )

    @property
    def tag(self) -> str:
        """``NAME@VERSION`` as printed by ``osteoflag infer``."""
        return f"{self.name}@{self.version}"

    @property
    def software_versions(self) -> list[str]:
        """Software Versions (0018,1020) of the objects made from this model's results:
        :attr:`tag`, or name and version as two values when the tag is longer than an LO
        holds (64 characters). A bundle's name may have 64 characters and its version 32
        (``adapt`` appends ``+site.NAME``), and highdicom refuses a longer value, which
        would lose every result."""
        return [self.tag] if len(self.tag) <= LO_CHARACTERS else [self.name, self.version]


@dataclass(frozen=True)
class Classification:
    """One image's result: probability and label, or undetermined with a reason."""

    label: Label
    probability: float | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.label is Label.UNDETERMINED:
            if not self.reason:
                raise ValueError("an undetermined classification needs a reason")
            return
        if self.probability is None or not math.isfinite(self.probability):
            raise ValueError(f"probability {self.probability!r} is not a finite number")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability!r} is outside [0, 1]")


def derived_uid(*parts: str) -> UID:
    """A UID that is a pure function of ``parts`` (PS3.5 B.2 style hash-derived)."""
    return generate_uid(entropy_srcs=[json.dumps(["osteoflag", *parts])])


def series_uid(source_series_uid: str, model_version: str, kind: Kind) -> UID:
    """Series Instance UID for ``kind`` objects of one source series under one model version."""
    return derived_uid("series", source_series_uid, model_version, kind.value)


def instance_uid(source_sop_instance_uid: str, model_version: str, kind: Kind) -> UID:
    """SOP Instance UID for the ``kind`` object of one source instance under one model version."""
    return derived_uid("instance", source_sop_instance_uid, model_version, kind.value)


def device_uid(ae_title: str) -> UID:
    """Device Observer UID (TID 1004) of this osteoflag installation, stable per AE title."""
    return derived_uid("device", ae_title.strip())


def require(source: Dataset, keyword: str) -> str:
    """The value of a Type 1 attribute of ``source``, or PermanentError naming it."""
    value = source.get(keyword)
    if value in (None, ""):
        raise PermanentError(f"source instance lacks {values.attribute_name(keyword)}")
    return str(value)


def study_evidence(source: Dataset) -> Dataset:
    """A header-only copy of ``source``: Patient, Study and reference attributes, no pixels.

    Type 2 attributes missing from the source, or with an invalid date, time or number
    (:func:`osteoflag.pacs.values.copied_value`), are present and empty (PS3.5 7.4.5), so the
    derived object's Patient and General Study modules are complete; such Type 3 ones are
    left out. The character set is one every writer accepts (:func:`values.character_set`).
    """
    evidence = Dataset()
    charset = values.character_set(source)
    if charset is not None:
        evidence.SpecificCharacterSet = charset
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        setattr(evidence, keyword, require(source, keyword))
    for keyword in PATIENT_STUDY_TYPE2:
        value = values.copied_value(source, keyword)
        setattr(evidence, keyword, "" if value is None else value)
    for keyword in _PATIENT_STUDY_OPTIONAL:
        value = values.copied_value(source, keyword)
        if value is not None:
            setattr(evidence, keyword, value)
    return evidence


def _utc_offset(value: object) -> timezone | None:
    match = _UTC_OFFSET.fullmatch(str(value).strip()) if value is not None else None
    if match is None:
        return None
    sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3))
    if hours > 14 or minutes > 59:
        return None
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if sign == "-" else offset)


def local_time(source: Dataset, created: datetime) -> tuple[datetime, str | None]:
    """``created`` in the time zone of the source's dates and times, and the Timezone Offset
    From UTC (0008,0201) to write beside it, if any.

    DICOM dates and times are local time unless that attribute says otherwise (PS3.3
    C.12.1.1.8), and a derived object's copied Study Date and Time are the source's. A source
    with an offset gets ``created`` at that offset and the same attribute; one without gets
    the host's local time, the hospital's, and none. Written in UTC, a result made at 00:30
    in Berlin would be dated the day before its own study."""
    value = values.copied_value(source, "TimezoneOffsetFromUTC")
    zone = _utc_offset(value)
    if zone is None:
        return created.astimezone(), None
    return created.astimezone(zone), str(value).strip()


def series_laterality(source: Dataset) -> str:
    """Series Laterality (C.7.3.1, Type 2C for paired body parts): L, R or empty."""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(source.get(keyword) or "")
        if value in ("L", "R"):
            return value
    return ""


def series_description(kind: Kind, model: ModelIdentity) -> str:
    """SeriesDescription (LO, 64 chars) starting with ``RESEARCH USE ONLY``."""
    what = {Kind.SR: "fracture flag SR", Kind.GSPS: "fracture flag overlay"}.get(
        kind, "fracture flag summary"
    )
    return f"{RESEARCH_PREFIX} {what} {model.version}"[:64]


def name_software(dataset: Dataset, model: ModelIdentity) -> None:
    """Software Versions (0018,1020): :attr:`ModelIdentity.software_versions`, all its values
    (highdicom's constructors take one)."""
    dataset.add_new(0x00181020, "LO", model.software_versions)


def mark_research(dataset: Dataset, kind: Kind, model: ModelIdentity) -> None:
    """Research-only marking: SeriesDescription and the Clinical Trial Series module (C.7.3.2)."""
    dataset.SeriesDescription = series_description(kind, model)
    dataset.ClinicalTrialCoordinatingCenterName = ""
    dataset.ClinicalTrialSeriesID = f"osteoflag {model.version}"[:64]
    dataset.ClinicalTrialSeriesDescription = RESEARCH_STATEMENT


def contributing_equipment() -> list[hd.ContributingEquipment]:
    """Contributing Equipment (PS3.3 C.12.1.1.5) naming osteoflag and its version."""
    return [
        hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=DEVICE_MODEL_NAME,
            software_versions=osteoflag.__version__,
            contribution_description=RESEARCH_STATEMENT,
        )
    ]

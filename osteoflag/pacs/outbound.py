"""From a stored result to durable outbound objects: files on disk and queue rows.

``write_objects`` builds the SR (and the presentation state and summary image), each only
when some destination takes its kind (:func:`kinds_taken`), and writes them atomically under
the outgoing folder with owner-only permissions
(``storage.write_atomically``), before the transaction that records the result, holding no
database lock while it does (on SQLite that lock would stall every C-STORE).
``osteoflag.db.outbound.add_pending`` then adds one ``pending`` outbound row per object and
destination that takes its kind to that transaction. Committing it makes result and
delivery obligation durable together; a crash before the commit leaves only files,
rewritten with the same UIDs on the next attempt.
"""

from __future__ import annotations

import logging
from datetime import datetime
from io import BytesIO

from pydicom import Dataset

from osteoflag.config import Settings
from osteoflag.db.models import Instance
from osteoflag.db.outbound import Produced
from osteoflag.destination_settings import Destination, DicomWebDestination
from osteoflag.errors import PermanentError, PixelDataError, TransientError
from osteoflag.inference.labels import Label
from osteoflag.inference.pixels import GreyArray
from osteoflag.inference.region import Region
from osteoflag.pacs import values
from osteoflag.pacs.derived import COPIED, Classification, Kind, ModelIdentity, device_uid
from osteoflag.pacs.gsps import build_gsps
from osteoflag.pacs.sr import build_sr
from osteoflag.pacs.storage import write_atomically
from osteoflag.pacs.summary import build_summary

_KINDS = {"SR": Kind.SR, "PR": Kind.GSPS}
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
logger = logging.getLogger(__name__)


def destination_key(destination: Destination | DicomWebDestination) -> str:
    """The outbound row's ``destination``: ``AE@host:port``, or the DICOMweb base URL."""
    if isinstance(destination, DicomWebDestination):
        return destination.url
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def destination_keys(settings: Settings) -> list[str]:
    """The ``destination`` of every configured destination."""
    return [destination_key(destination) for destination in settings.destinations]


def in_shadow(settings: Settings, destination: Destination | DicomWebDestination) -> bool:
    """Whether ``destination`` only records results (its own ``shadow`` or the top-level one)."""
    return settings.shadow or destination.shadow


def destinations_by_kind(settings: Settings) -> dict[str, list[str]]:
    """For each kind of object, the destinations that take it (``objects`` of each), leaving
    out those in shadow mode."""
    return {
        kind.value: [
            destination_key(d)
            for d in settings.destinations
            if kind.value in d.objects and not in_shadow(settings, d)
        ]
        for kind in Kind
    }


def kinds_taken(settings: Settings) -> frozenset[Kind]:
    """The kinds of object worth building: those the ``objects`` of some destination name,
    one in shadow mode included (its kept objects are shown on the operator page); every kind
    with ``shadow = true`` and no destination at all (the results are kept for the page).

    Anything else would be sent nowhere and shown nowhere, only removed by retention a day
    later: with no destination and shadow mode off, nothing is built.
    """
    if settings.shadow and not settings.destinations:
        return frozenset(Kind)
    return frozenset(Kind(kind) for d in settings.destinations for kind in d.objects)


def shadow_by_kind(settings: Settings) -> dict[str, list[str]] | None:
    """For each kind of object kept in shadow mode, the destinations in shadow mode that take
    it (it is not sent to them); None when shadow mode is off everywhere. With
    ``shadow = true`` and no destination at all every kind is kept, for none: the results are
    kept for the operator page (:func:`kinds_taken`)."""
    if not settings.shadow and not any(d.shadow for d in settings.destinations):
        return None
    if not settings.destinations:
        return {kind.value: [] for kind in Kind}
    withheld = [d for d in settings.destinations if in_shadow(settings, d)]
    return {
        kind.value: [destination_key(d) for d in withheld if kind.value in d.objects]
        for kind in Kind
        if any(kind.value in d.objects for d in withheld)
    }


def encode(dataset: Dataset) -> bytes:
    """``dataset`` as a DICOM file (PS3.10: preamble, File Meta Information, data set)."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def build_objects(
    source: Dataset,
    result: Classification,
    model: ModelIdentity,
    settings: Settings,
    created: datetime,
    *,
    grey: GreyArray | None = None,
    region: Region | None = None,
) -> list[Dataset]:
    """The SR, the presentation state of a flagged image with a ``region`` (when its header
    can make one), then the summary image if configured (and if an undetermined image can
    show), each only if some destination takes its kind (:func:`kinds_taken`); ``grey`` is the
    source as already decoded (:meth:`DisplayImage.grey8`), when the caller has it."""
    taken = kinds_taken(settings)
    objects: list[Dataset] = []
    if not taken:
        return objects
    left_out = values.invalid_attributes(source, COPIED)
    if left_out:
        logger.warning(
            "invalid source values left out of the produced objects",
            extra={
                "action": "build_objects",
                "sop_instance_uid": str(source.get("SOPInstanceUID", "")),
                "attributes": left_out,
            },
        )
    if Kind.SR in taken:
        objects.append(
            build_sr(
                source,
                result,
                model=model,
                device_uid=device_uid(settings.listener.ae_title),
                created=created,
                region=region,
                sr_class=settings.report.sr_class,
            )
        )
    if Kind.GSPS in taken and result.label is Label.FRACTURE and region is not None:
        assert result.probability is not None  # guaranteed by Classification
        if _grayscale(source):
            objects.extend(_presentation_state(source, result.probability, region, model, created))
        else:
            logger.info(
                "no presentation state for a colour source; the SR and summary show the region",
                extra={
                    "action": "build_objects",
                    "sop_instance_uid": str(source.get("SOPInstanceUID", "")),
                },
            )
    if Kind.SUMMARY in taken and settings.report.summary_image:
        try:
            objects.append(
                build_summary(
                    source, result, model=model, created=created, grey=grey, region=region
                )
            )
        except PixelDataError:
            if result.label is not Label.UNDETERMINED:
                raise
    return objects


def _presentation_state(
    source: Dataset, probability: float, region: Region, model: ModelIdentity, created: datetime
) -> list[Dataset]:
    """The presentation state, or none when the source's header cannot make one (highdicom
    refuses a Rescale Slope without its Intercept, which the pixels did without): the state
    is an overlay the SR and summary image also show, so it never costs them the result."""
    try:
        return [build_gsps(source, probability, region, model=model, created=created)]
    except PermanentError as exc:  # its message names tags, never values (build_gsps)
        logger.warning(
            "no presentation state: %s",
            exc,
            extra={
                "action": "build_objects",
                "sop_instance_uid": str(source.get("SOPInstanceUID", "")),
            },
        )
        return []


def _grayscale(source: Dataset) -> bool:
    """A Grayscale Softcopy Presentation State applies the grayscale pipeline, so it may
    reference only MONOCHROME1 or MONOCHROME2 images (PS3.3 A.33.1); a colour one (a film
    scanned in colour), PALETTE COLOR included although it has one sample per pixel, would
    need a colour or pseudo-colour state."""
    return str(source.get("PhotometricInterpretation", "")).strip() in _MONOCHROME


def write_objects(
    instance: Instance,
    source: Dataset,
    result: Classification,
    model: ModelIdentity,
    settings: Settings,
    created: datetime,
    *,
    grey: GreyArray | None = None,
    region: Region | None = None,
) -> list[Produced]:
    """Build the objects for ``instance`` that some destination takes, dated ``created`` (when
    the result was made), and write them; no database work.

    Nothing for an undetermined result unless ``[report] undetermined_sr`` is on.
    """
    if result.label is Label.UNDETERMINED and not settings.report.undetermined_sr:
        return []
    written: list[Produced] = []
    built = build_objects(source, result, model, settings, created, grey=grey, region=region)
    for dataset in built:
        kind = _KINDS.get(dataset.Modality, Kind.SUMMARY)
        sop_uid = str(dataset.SOPInstanceUID)
        path = settings.outgoing_path / kind.value / f"{sop_uid}.dcm"
        try:
            write_atomically(path, encode(dataset))
        except OSError as exc:
            raise TransientError(f"cannot write {kind.value} {sop_uid} to {path}: {exc}") from exc
        written.append(Produced(kind.value, str(dataset.SOPClassUID), sop_uid, path))
    return written

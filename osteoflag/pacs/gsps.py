"""The overlay a viewer can toggle: a Grayscale Softcopy Presentation State per flagged image.

PS3.3 A.33.1: the presentation state references the source image and, on its own graphic
layer, draws the model's box as a closed POLYLINE and the text "RESEARCH USE ONLY -
fracture suspected NN%", both in the source's pixel coordinates (C.10.5: the top-left
corner of the top-left pixel is 0\\0, as for the SR's SCOORD; the box outlines its pixels'
outer edges, :func:`~osteoflag.pacs.sr.region_outline`). The source's Modality and
VOI LUT are copied so that applying the state keeps the image's own windowing; a
MONOCHROME1 source gets an INVERSE Presentation LUT so that it keeps its polarity. On a
multi-frame image the box is on frame 1, the one decoded. UIDs are derived from the source
and the model version, like the SR's.
"""

from __future__ import annotations

import logging
from datetime import datetime
from fractions import Fraction
from typing import Final

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import SecondaryCaptureImageStorage

from osteoflag.errors import PermanentError
from osteoflag.inference.region import Region
from osteoflag.inference.voi import number
from osteoflag.pacs import values
from osteoflag.pacs.derived import (
    COPIED,
    DEVICE_MODEL_NAME,
    MANUFACTURER,
    PATIENT_STUDY_TYPE2,
    RESEARCH_PREFIX,
    Kind,
    ModelIdentity,
    contributing_equipment,
    instance_uid,
    local_time,
    mark_research,
    name_software,
    require,
    series_laterality,
    series_uid,
)
from osteoflag.pacs.sr import MULTI_FRAME_CLASSES, decoded_frames, region_outline

logger = logging.getLogger(__name__)

GSPS_SERIES_NUMBER: Final = 9903
CONTENT_LABEL: Final = "OSTEOFLAG"
LAYER: Final = "OSTEOFLAG"
# Red on colour displays (CIELab), light grey on grayscale ones.
_RED: Final = hd.color.CIELabColor(53.24, 80.09, 67.2)
_GREY_VALUE: Final = 0xDDDD
_SOP_CLASS_UID: Final = 0x00080016


def overlay_text(probability: float) -> str:
    """The annotation's text: research-only marking, finding and score."""
    return f"{RESEARCH_PREFIX} - fracture suspected {probability * 100:.0f}%"


def text_box(region: Region, rows: int, columns: int) -> tuple[float, float, float, float]:
    """Where the text goes: a band just above the box (below it when the box touches the
    top), as wide as half the image or the box, kept inside the image."""
    x0, y0, _, y1 = region.box
    height = max(12, rows // 25)
    width = min(columns, max(columns // 2, region.box[2] - x0, 1))  # 1: a one-column image
    left = max(0, min(x0, columns - width))
    top = y0 - height if y0 >= height else min(y1, max(0, rows - height))
    return (float(left), float(top), float(left + width), float(min(rows, top + height)))


def pixel_aspect_ratio(source: Dataset) -> list[int]:
    """Presentation Pixel Aspect Ratio (0070,0102): the source's pixel shape, vertical to
    horizontal size.

    A presentation state's ratio replaces the image's own when it is applied (PS3.3 C.10.4),
    and highdicom writes 1\\1 whatever the image: pixels twice as tall as wide (Imager Pixel
    Spacing 0.2\\0.1) would be shown square, the radiograph squashed under the box. Taken from
    Pixel Spacing (0028,0030), else Imager Pixel Spacing (0018,1164), else Pixel Aspect Ratio
    (0028,0034); a value that is not two positive numbers is left out, like an unusable window
    (:mod:`osteoflag.inference.voi`), and without any the pixels are square (PS3.3 C.7.6.3.1.7).
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio"):
        value = values.copied_value(source, keyword)
        if value is None:
            continue
        try:
            vertical, horizontal = (Fraction(str(number)) for number in value)
            ratio = (vertical / horizontal).limit_denominator(1000)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            continue
        if vertical > 0 and horizontal > 0:
            return [ratio.numerator, ratio.denominator]
    return [1, 1]


def _lut_words(item: Dataset) -> bytes | None:
    """The LUT Data of a VOI LUT item held as numbers (US), as bytes of its entries' size
    (LUT Descriptor's third value, PS3.3 C.11.2.1.1); None when it is bytes already or no
    LUT at all (highdicom refuses that one)."""
    data = item.get("LUTData")
    if not isinstance(data, MultiValue | list | int):
        return None
    try:
        word = np.uint8 if int(item.LUTDescriptor[2]) == 8 else np.uint16
        numbers = np.asarray([data] if isinstance(data, int) else list(data), np.int64)
    except (AttributeError, IndexError, TypeError, ValueError, OverflowError):
        return None
    if numbers.size == 0 or numbers.min() < 0 or numbers.max() > np.iinfo(word).max:
        return None
    return numbers.astype(word).tobytes()


def _with_words(item: Dataset) -> Dataset:
    """``item`` (a VOI or Modality LUT), or a new one whose LUT Data numbers are bytes: a
    changed item is a new one, as :func:`values.cleaned` shares the source's elements."""
    words = _lut_words(item)
    if words is None:
        return item
    copied = Dataset()
    for element in item:  # the source's other elements; LUT Data replaced
        copied.add(element)
    copied.add_new(0x00283006, "OW", words)
    return copied


def _voi_luts_as_words(header: Dataset) -> None:
    """Give ``header`` a VOI LUT Sequence (0028,3010) whose LUT Data (0028,3006) is bytes.

    LUT Data is US or OW: an Explicit VR file may hold it as US values, which pydicom reads
    as a list of numbers, and highdicom copies it to the presentation state only from bytes
    (it fails on the list, and the whole result with it)."""
    if "VOILUTSequence" in header:
        header.VOILUTSequence = [_with_words(item) for item in header.VOILUTSequence]


def _window_as_displayed(header: Dataset) -> None:
    """Leave ``header`` the Window Center/Width the summary image and the model used
    (:mod:`osteoflag.inference.pixels`): all windows when there are as many centers as
    widths; else the first pair; none when either first value is missing or no number.

    highdicom refuses a center without a width, or counts that differ, and the result with
    it, where the pipeline only left the window out (a PixelDataError) or took the first.
    New elements replace the shared ones: :func:`values.cleaned` shares the source's."""
    center, width = number(header, "WindowCenter"), number(header, "WindowWidth")
    if center is None or width is None:
        for keyword in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
            if keyword in header:
                del header[keyword]
        return
    counts = {header[keyword].VM for keyword in ("WindowCenter", "WindowWidth")}
    if len(counts) > 1:
        header.add_new(0x00281050, "DS", center)
        header.add_new(0x00281051, "DS", width)
        if "WindowCenterWidthExplanation" in header:
            del header.WindowCenterWidthExplanation


def _copy_modality_lut(state: Dataset, header: Dataset) -> None:
    """The source's Modality LUT Sequence (0028,3000), which highdicom leaves out (it copies
    Rescale Slope and Intercept only). A presentation state's Modality LUT module replaces
    the image's (PS3.3 A.33.1, C.11.1): without it the state's window, copied from the image
    and meant for the LUT's output, would be applied to the stored values."""
    if "ModalityLUTSequence" in header and "RescaleSlope" not in state:
        state.ModalityLUTSequence = [_with_words(item) for item in header.ModalityLUTSequence]


def _layer() -> hd.pr.GraphicLayer:
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER,
        order=1,
        description=f"{RESEARCH_PREFIX} suspected fracture region",
        display_color=_RED,
    )
    layer.GraphicLayerRecommendedDisplayGrayscaleValue = _GREY_VALUE
    return layer


def _refer_to_frame_1(state: Dataset, sop_class: str, frames: list[int] | None) -> None:
    """Give a multi-frame Secondary Capture source its own SOP Class back in the references,
    and the box its frame (PS3.3 C.10.5: without Referenced Frame Number a graphic annotation
    is on every frame, but the region was found on frame 1 only).

    highdicom reads a multi-frame IOD's rescale and window from functional groups, which
    those images (PS3.3 A.8.3 to A.8.5) do not have: it is given the header as a single-frame
    Secondary Capture, whose Modality and VOI LUT attributes they share."""
    (series,) = state.ReferencedSeriesSequence
    (annotation,) = state.GraphicAnnotationSequence
    for item in (*series.ReferencedImageSequence, *annotation.ReferencedImageSequence):
        item.ReferencedSOPClassUID = sop_class
    if frames is not None:
        annotation.ReferencedImageSequence[0].ReferencedFrameNumber = frames


def build_gsps(
    source: Dataset,
    probability: float,
    region: Region,
    *,
    model: ModelIdentity,
    created: datetime,
) -> Dataset:
    """The presentation state drawing ``region`` and its text over ``source``."""
    source_uid = require(source, "SOPInstanceUID")
    rows, columns = int(require(source, "Rows")), int(require(source, "Columns"))
    if region.box[2] >= columns or region.box[3] >= rows:  # box names its last pixel
        raise PermanentError(
            f"region box {region.box} lies outside source {source_uid} "
            f"(Columns {columns}, Rows {rows})"
        )
    text = overlay_text(probability)
    header = values.cleaned(source)  # highdicom copies its Patient and Study modules
    _voi_luts_as_words(header)
    _window_as_displayed(header)
    for keyword in PATIENT_STUDY_TYPE2:  # Type 2: present, empty when the source lacks them
        if keyword not in header:
            setattr(header, keyword, "")
    sop_class = require(source, "SOPClassUID")
    if sop_class in MULTI_FRAME_CLASSES:
        # see _refer_to_frame_1; a new element, as cleaned() shares the source's elements
        header.add_new(_SOP_CLASS_UID, "UI", SecondaryCaptureImageStorage)
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[header],
        graphic_layer=_layer(),
        graphic_objects=[
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=region_outline(region),
                units=hd.pr.AnnotationUnitsValues.PIXEL,
            )
        ],
        text_objects=[
            hd.pr.TextObject(
                text_value=text,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=text_box(region, rows, columns),
                text_justification=hd.pr.TextJustificationValues.LEFT,
            )
        ],
    )
    inverse = source.get("PhotometricInterpretation") == "MONOCHROME1"
    try:
        state = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=[header],
            series_instance_uid=series_uid(
                require(source, "SeriesInstanceUID"), model.version, Kind.GSPS
            ),
            series_number=GSPS_SERIES_NUMBER,
            sop_instance_uid=instance_uid(source_uid, model.version, Kind.GSPS),
            instance_number=values.instance_number(source),
            manufacturer=MANUFACTURER,
            manufacturer_model_name=DEVICE_MODEL_NAME,
            software_versions=model.software_versions[0],  # highdicom: one value
            device_serial_number="",
            content_label=CONTENT_LABEL,
            content_description=text[:64],
            graphic_annotations=[annotation],
            graphic_layers=[_layer()],
            presentation_lut_transformation=hd.PresentationLUTTransformation(
                presentation_lut_shape="INVERSE" if inverse else "IDENTITY"
            ),
            contributing_equipment=contributing_equipment(),
            content_creator_name=None,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        reason = values.redact(str(exc), source, COPIED)
        raise PermanentError(
            f"cannot build GSPS for source SOPInstanceUID {source_uid}: {reason}"
        ) from exc
    _copy_modality_lut(state, header)
    if sop_class in MULTI_FRAME_CLASSES:
        _refer_to_frame_1(state, sop_class, decoded_frames(source))
    state.DisplayedAreaSelectionSequence[0].PresentationPixelAspectRatio = pixel_aspect_ratio(
        source
    )
    created, utc_offset = local_time(source, created)
    state.PresentationCreationDate = created.strftime("%Y%m%d")
    state.PresentationCreationTime = created.strftime("%H%M%S")
    if utc_offset is not None:
        state.TimezoneOffsetFromUTC = utc_offset
    state.SeriesDate, state.SeriesTime = (
        state.PresentationCreationDate,
        state.PresentationCreationTime,
    )
    if source.get("BodyPartExamined"):
        state.BodyPartExamined = source.BodyPartExamined
    state.Laterality = series_laterality(source)
    name_software(state, model)
    mark_research(state, Kind.GSPS, model)
    logger.debug(
        "GSPS built",
        extra={"action": "build_gsps", "sop_instance_uid": str(state.SOPInstanceUID)},
    )
    return state

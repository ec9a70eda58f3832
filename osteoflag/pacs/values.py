"""Values copied from a received instance into the objects osteoflag produces.

Senders are sloppy: a Patient's Birth Date of ``1945-03-17`` (DA is ``YYYYMMDD``, PS3.5
6.2), a Patient's Weight of ``70kg``, a Patient's Sex of ``U`` (its enumerated values are
M, F and O, PS3.3 C.7.1.1), a Specific Character Set whose first value is empty (the usual
Japanese form, PS3.3 C.12.1.1.2). A result must never be lost to such a value, so each
copied date, time and number is checked against its VR, and a coded value against its
enumerated values, and left out when invalid (the caller writes a Type 2 attribute empty,
omits a Type 3 one), and the character set
becomes one every writer accepts, declared when the text was received as non-ASCII bytes
without one. A descriptive text longer than its VR allows (a 70-character Study
Description in an LO of 64) is cut to that length.

Names, IDs (a keyword ending in ID or IDs), the Accession Number and UIDs are copied as
received, even when too long for their VR: the PACS files the result by them. Cut, an ID
would file the result under another patient or study, or none; left out, the PACS would
see the study's patient without an ID and reconcile or refuse it. The source was accepted
with these values, so copying them keeps the result with its study; such a result, like
its source, does not pass dciodvfy, whose check assumes a source within the VR lengths.

Nothing here puts a value in a message: a value may be a patient's birth date. Callers
name the attribute (:func:`attribute_name`) and pass exception texts through
:func:`redact`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, Final

import highdicom as hd
from pydicom import config as pydicom_config
from pydicom.charset import python_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import validate_value

#: VRs whose syntax is checked before a value is copied (PS3.5 Table 6.2-1).
CHECKED_VRS: Final = frozenset({"AS", "DA", "DS", "DT", "IS", "TM"})
#: Copied attributes with enumerated values (PS3.3 C.7.1.1): highdicom refuses any other.
ENUMERATED: Final = {"PatientSex": frozenset({"M", "F", "O"})}
#: Maximum characters of a value of the descriptive text VRs (PS3.5 Table 6.2-1); names
#: (PN) and codes (CS) are never cut.
MAX_CHARACTERS: Final = {"SH": 16, "LO": 64, "ST": 1024, "LT": 10240}
#: Used when the source's character set is unknown or odd: UTF-8 holds any decoded text.
UTF8: Final = "ISO_IR 192"
#: Latin alphabet No. 1: how pydicom decodes text received without a character set.
LATIN1: Final = "ISO_IR 100"
#: VRs whose values are text in the Specific Character Set (PS3.5 6.1.2.3).
TEXT_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: The default repertoire, meant by an empty first value of Specific Character Set.
DEFAULT_EXTENDED: Final = "ISO 2022 IR 6"
#: Multi-byte character sets that may not be the first of several values (PS3.3 C.12.1.1.2).
_MULTI_BYTE: Final = frozenset(
    {"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"}
)
_REDACTED_MIN: Final = 2
#: Largest value of an IS (PS3.5 Table 6.2-1: -2^31 to 2^31 - 1).
_IS_MAX: Final = 2**31 - 1
PIXEL_DATA: Final = Tag(0x7FE0, 0x0010)
SPECIFIC_CHARACTER_SET: Final = Tag(0x0008, 0x0005)


def attribute_name(keyword: str) -> str:
    """``(0010,0030) PatientBirthDate``: how messages name an attribute, never by value."""
    tag = tag_for_keyword(keyword)
    return keyword if tag is None else f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


def _is_valid(vr: str, value: Any) -> bool:
    values = value if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        for item in values:
            validate_value(vr, str(item), pydicom_config.RAISE)
    except (ValueError, TypeError):
        return False
    return True


def _identifier(keyword: str) -> bool:
    return keyword.endswith(("ID", "IDs")) or keyword == "AccessionNumber"


def _within_length(element: DataElement) -> DataElement:
    """``element``, or a copy cut to its VR's length when it is a descriptive text (not an
    identifier, see the module's docstring) longer than that."""
    limit = MAX_CHARACTERS.get(element.VR)
    if limit is None or _identifier(element.keyword) or element.value in (None, ""):
        return element
    several = isinstance(element.value, MultiValue)
    items = [str(item) for item in (element.value if several else [element.value])]
    if all(len(item) <= limit for item in items):
        return element
    cut = [item[:limit] for item in items]
    return DataElement(element.tag, element.VR, cut if several else cut[0])


def _valid_element(source: Dataset, tag: BaseTag) -> DataElement | None:
    """The element at ``tag``, decoded with the source's character set, descriptive text
    cut to its VR's length; None when its value cannot be read (a DS that is not a number
    fails right here) or is not a valid date, time, number or enumerated value."""
    try:
        element = source[tag]
    except Exception:  # pydicom parses lazily: a malformed element fails on first access
        return None
    if element.value in (None, ""):
        return element
    if element.VR in CHECKED_VRS and not _is_valid(element.VR, element.value):
        return None
    allowed = ENUMERATED.get(element.keyword)
    if allowed is not None and not (isinstance(element.value, str) and element.value in allowed):
        return None
    return _within_length(element)


def copied_value(source: Dataset, keyword: str) -> Any | None:
    """The value of ``keyword`` to copy, or None when it is absent, empty or invalid."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in source:
        return None
    element = _valid_element(source, Tag(tag))
    if element is None or element.value is None or element.value == "":
        return None
    return element.value


def instance_number(source: Dataset) -> int:
    """Instance Number (0020,0013) of an object derived from ``source``: the source's when it
    is one integer from 1 to the largest IS, else 1. A derived object's number need not
    match its source's (an IS that only identifies the instance in its series, PS3.3
    C.7.6.1), and highdicom refuses a negative, multi-valued or non-numeric one, which would
    lose the result."""
    value = copied_value(source, "InstanceNumber")
    return int(value) if isinstance(value, int) and 1 <= value <= _IS_MAX else 1


def cleaned(source: Dataset) -> Dataset:
    """The header of ``source`` for a library that copies whole modules from it (highdicom's
    presentation state copies the Patient and Study modules): unreadable or invalid values
    are empty, the character set is :func:`character_set`'s, and Pixel Data is left out."""
    view = Dataset()
    for tag in source.keys():  # noqa: SIM118 (iterating a Dataset decodes every element)
        if tag in (PIXEL_DATA, SPECIFIC_CHARACTER_SET):
            continue
        element = _valid_element(source, tag)
        if element is not None:
            view[tag] = element
        else:
            vr = source.get_item(tag).VR or "UN"
            view.add(DataElement(tag, vr, None if vr == "SQ" else ""))
    charset = character_set(source)
    if charset is not None:
        view.SpecificCharacterSet = charset
    return view


def invalid_attributes(source: Dataset, keywords: Iterable[str]) -> list[str]:
    """The names (:func:`attribute_name`) of ``keywords`` present in ``source`` with a value
    that :func:`copied_value` leaves out."""
    invalid = []
    for keyword in keywords:
        element = source.get_item(keyword) if keyword in source else None
        present = element is not None and element.value not in (None, b"", "")
        if present and copied_value(source, keyword) is None:
            invalid.append(attribute_name(keyword))
    return invalid


def _values(source: Dataset) -> list[str]:
    try:
        value = source.get("SpecificCharacterSet")
    except (ValueError, TypeError):
        return ["?"]
    if value is None:
        return []
    items = value if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(item).strip() for item in items]


def _known(value: str) -> bool:
    try:
        hd.SpecificCharacterSetValues(value)
    except ValueError:
        return False
    return value in python_encoding


def _text_values(source: Dataset) -> Iterator[str]:
    """Every readable text value of ``source`` and its sequences, Pixel Data left on disk."""
    for tag in source.keys():  # noqa: SIM118 (iterating a Dataset decodes every element)
        if tag.group == PIXEL_DATA.group:
            continue
        element = _valid_element(source, tag)
        if element is None:
            continue
        if element.VR == "SQ":
            for item in element.value or []:
                yield from _text_values(item)
        elif element.VR in TEXT_VRS and element.value is not None:
            items = element.value if isinstance(element.value, MultiValue) else [element.value]
            yield from (str(item) for item in items)


def _undeclared(source: Dataset) -> str | None:
    """The character set for text received without one (or as ISO_IR 6): none when it is
    ASCII. Else ISO_IR 100, since pydicom decoded the bytes as Latin-1 and so writes them
    back unchanged under it: the sender's bytes, now declared, as the PACS stored them
    (ISO_IR 192 would rewrite them). ISO_IR 192 only for text Latin-1 cannot hold."""
    texts = list(_text_values(source))
    if all(text.isascii() for text in texts):
        return None
    try:
        for text in texts:
            text.encode("latin-1")
    except UnicodeEncodeError:
        return UTF8
    return LATIN1


def character_set(source: Dataset) -> str | list[str] | None:
    """Specific Character Set (0008,0005) for a produced object: the source's when it is
    well formed (an empty first value read as ISO 2022 IR 6); for the default repertoire,
    none, or :func:`_undeclared`'s when the text is not ASCII; else ISO_IR 192 (UTF-8),
    which can hold whatever pydicom decoded."""
    values = _values(source)
    if not any(values) or values == ["ISO_IR 6"]:
        return _undeclared(source)
    if len(values) == 1:
        single = values[0]
        return single if _known(single) and not single.startswith("ISO 2022") else UTF8
    if not values[0]:
        values[0] = DEFAULT_EXTENDED
    extensions = all(v.startswith("ISO 2022 IR") and _known(v) for v in values)
    return values if extensions and values[0] not in _MULTI_BYTE else UTF8


def redact(text: str, source: Dataset, keywords: Iterable[str]) -> str:
    """``text`` with every value ``source`` holds for ``keywords`` replaced by the attribute's
    name: for library messages that quote what they could not convert."""
    for keyword in keywords:
        element = source.get_item(keyword) if keyword in source else None
        if element is None:
            continue
        raw = element.value
        candidates = {raw.decode("latin-1").strip(" \x00")} if isinstance(raw, bytes) else set()
        with contextlib.suppress(ValueError, TypeError, OverflowError):
            candidates.add(str(source[keyword].value).strip())
        for candidate in sorted(candidates, key=len, reverse=True):
            if len(candidate) >= _REDACTED_MIN:
                text = text.replace(candidate, f"<{keyword}>")
    return text

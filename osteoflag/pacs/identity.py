"""Does a C-STORE data set name the instance the command names? (PS3.4 B.2.3, status 0xA900)

A peer can send a data set whose own SOP Instance UID (0008,0018) differs from the command's
Affected SOP Instance UID (0000,1000), or whose SOP Class UID (0008,0016) is not the SOP Class
of the command and presentation context (a CT data set in a DX context). Stored under one UID
and classified from the other, the result would be delivered for the wrong image. The Storage
SCP refuses such a data set, and the worker keys every produced object on the stored
instance's UIDs.

Only the first bytes of the data set are parsed (bounded inflation for the deflated syntax):
the listener never decodes a whole data set. When those bytes cannot be parsed, or a UID is
absent, nothing is refused here: the worker fails the instance and says why.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

# (0008,0016) and (0008,0018) sit near the start of any data set: 64 KiB is plenty.
HEAD_BYTES = 64 * 1024
_SOP_INSTANCE_UID = Tag(0x0008, 0x0018)


@dataclass(frozen=True)
class Mismatch:
    """Which attribute of the data set disagrees, and with what (tags only: no values)."""

    tag: int
    comment: str


@dataclass(frozen=True)
class OwnUIDs:
    """The SOP Class UID (0008,0016) and SOP Instance UID (0008,0018) a data set holds."""

    sop_class_uid: str | None
    sop_instance_uid: str | None

    @classmethod
    def of(cls, dataset: Dataset) -> OwnUIDs:
        """Read from ``dataset``; an absent attribute is None."""
        values = (dataset.get(keyword) for keyword in ("SOPClassUID", "SOPInstanceUID"))
        sop_class, sop_instance = (None if v is None else str(v).strip() for v in values)
        return cls(sop_class, sop_instance)

    def mismatch(self, sop_class_uid: str, sop_instance_uid: str) -> Mismatch | None:
        """How these contradict the UIDs the data set was sent (or stored) as, if they do."""
        if self.sop_instance_uid is not None and self.sop_instance_uid != sop_instance_uid:
            return Mismatch(0x00080018, "(0008,0018) SOP Instance UID differs from (0000,1000)")
        if self.sop_class_uid is not None and self.sop_class_uid != sop_class_uid:
            return Mismatch(0x00080016, "(0008,0016) SOP Class UID differs from (0000,0002)")
        return None


def _past_sop_instance_uid(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag > _SOP_INSTANCE_UID)


def read_head(head: bytes, transfer_syntax: UID) -> OwnUIDs | None:
    """The UIDs of a data set whose first ``HEAD_BYTES`` are ``head``, or None when those
    bytes do not parse."""
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head, HEAD_BYTES)
        dataset = read_dataset(
            BytesIO(head),
            transfer_syntax.is_implicit_VR,
            transfer_syntax.is_little_endian,
            stop_when=_past_sop_instance_uid,
        )
        return OwnUIDs.of(dataset)
    except Exception:  # any parse error of hostile bytes: the worker reports it in full
        return None

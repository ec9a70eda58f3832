"""A C-STORE whose data set names another instance or SOP Class is refused (0xA900).

Sent over real loopback associations with pynetdicom's unparsed (chunked) sender, so the
command's UIDs come from the File Meta Information and the data set goes as it is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.db.models import Instance
from osteoflag.pacs import status
from osteoflag.pacs.scp import StorageSCP
from tests.fuzz.send import chunked
from tests.helpers.dicom import radiograph, write_in_syntax


def _send(path: Path, port: int) -> Dataset:
    """C-STORE ``path`` unparsed; the response (Status, ErrorComment, ...)."""
    ae = AE(ae_title="MISMATCH")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(radiograph().SOPClassUID, ExplicitVRLittleEndian)
    ae.add_requested_context(radiograph().SOPClassUID, ImplicitVRLittleEndian)
    ae.add_requested_context(radiograph().SOPClassUID, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="OSTEOFLAG")
    assert assoc.is_established
    try:
        with chunked():
            response: Dataset = assoc.send_c_store(path)
    finally:
        assoc.release()
    return response


def _rewrite_meta(path: Path, **meta: str) -> None:
    """Change File Meta Information (so the command's UIDs) without touching the data set."""
    ds = dcmread(path)
    for keyword, value in meta.items():
        setattr(ds.file_meta, keyword, value)
    ds.save_as(path, enforce_file_format=False)  # the default would restore the meta UIDs


def _queued(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(Instance.sop_instance_uid)))


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian],
    ids=lambda ts: ts.keyword,
)
def test_instance_uid_differing_from_the_command_is_refused(
    tmp_path: Path, scp: StorageSCP, sessions: sessionmaker[Session], syntax: UID
) -> None:
    genuine = radiograph()
    lying_path = write_in_syntax(genuine, syntax, tmp_path / "lying.dcm")
    _rewrite_meta(lying_path, MediaStorageSOPInstanceUID=generate_uid())

    response = _send(lying_path, scp.port)
    assert response.Status == status.DATASET_MISMATCH
    assert response.ErrorComment == "(0008,0018) SOP Instance UID differs from (0000,1000)"
    assert _queued(sessions) == []
    assert not any(p.is_file() for p in (tmp_path / "var" / "incoming").rglob("*"))

    # The genuine instance later gets its own result.
    response = _send(write_in_syntax(genuine, syntax, tmp_path / "genuine.dcm"), scp.port)
    assert response.Status == status.SUCCESS
    assert _queued(sessions) == [genuine.SOPInstanceUID]


def test_ct_data_set_in_a_dx_context_is_refused(
    tmp_path: Path, scp: StorageSCP, sessions: sessionmaker[Session]
) -> None:
    ct = radiograph()
    dx = ct.SOPClassUID
    ct.SOPClassUID = CTImageStorage
    path = write_in_syntax(ct, ExplicitVRLittleEndian, tmp_path / "ct.dcm")
    _rewrite_meta(path, MediaStorageSOPClassUID=dx)  # the command and context say DX
    response = _send(path, scp.port)
    assert response.Status == status.DATASET_MISMATCH
    assert response.ErrorComment == "(0008,0016) SOP Class UID differs from (0000,0002)"
    assert response.OffendingElement == 0x00080016
    assert _queued(sessions) == []

"""Send files over DICOM exactly as they are, for hostile-input tests of the listener.

pynetdicom's chunked C-STORE (``STORE_SEND_CHUNKED_DATASET``) reads only the File Meta
Information and streams the rest of the file unparsed, so a data set that pydicom itself
could not decode still reaches the Storage SCP byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset


@dataclass
class SendReport:
    """Per file: the C-STORE status, or why it could not be sent."""

    statuses: dict[Path, int] = field(default_factory=dict)
    unsendable: dict[Path, str] = field(default_factory=dict)
    aborted: int = 0


@contextmanager
def chunked() -> Iterator[None]:
    """pynetdicom sends files unparsed while this is active."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def _context(path: Path) -> tuple[str, str] | str:
    try:
        meta, _ = split_dataset(path)
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    except Exception as exc:  # whatever pydicom raises on a broken meta: not sendable
        return f"File Meta Information unreadable: {type(exc).__name__}: {exc}"


def send_raw(
    paths: list[Path], port: int, called_ae: str, calling_ae: str = "FUZZER"
) -> SendReport:
    """C-STORE each file unparsed to 127.0.0.1:``port``, associating again after an abort."""
    report = SendReport()
    contexts: dict[Path, tuple[str, str]] = {}
    for path in paths:
        found = _context(path)
        if isinstance(found, str):
            report.unsendable[path] = found
        else:
            contexts[path] = found
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntax in sorted(set(contexts.values())):
        ae.add_requested_context(sop_class, syntax)
    assoc: Association | None = None
    with chunked():
        for path in contexts:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
                if not assoc.is_established:
                    raise AssertionError(f"listener on port {port} refused the association")
            try:
                response = assoc.send_c_store(path)
            except (ValueError, RuntimeError, OSError) as exc:
                report.unsendable[path] = f"{type(exc).__name__}: {exc}"
                continue
            if "Status" in response:
                report.statuses[path] = int(response.Status)
            else:
                report.aborted += 1
                report.unsendable[path] = "no response: association aborted"
        if assoc is not None and assoc.is_established:
            assoc.release()
    return report

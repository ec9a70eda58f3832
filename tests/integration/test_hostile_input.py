"""Hostile and broken files (issue 6) through the listener, the worker and ``infer``.

Each must end as a DICOM failure status or a ``failed`` row with a reason (or a result,
when the file is odd but usable), never as a crash, a hang or a memory blow-up.
"""

from __future__ import annotations

import io
import json
import resource
from pathlib import Path

import pytest
from pynetdicom.dsutils import split_dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.db.models import Instance, InstanceState
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.infer import classify_files
from osteoflag.inference.predictor import Predictor
from osteoflag.inference.worker import InferenceWorker
from osteoflag.pacs import status
from osteoflag.pacs.scp import StorageSCP
from osteoflag.pacs.scu import Peer, send_c_echo
from tests.fuzz.cases import write_cases
from tests.fuzz.send import send_raw

#: What the worker must record for each case: state and a piece of the reason.
EXPECTED: dict[str, tuple[InstanceState, str]] = {
    "truncated-half": (InstanceState.FAILED, "(7FE0,0010) Pixel Data has"),
    "meta-only": (InstanceState.FAILED, "no (7FE0,0010) Pixel Data"),
    "garbage-body": (InstanceState.FAILED, ""),
    "wrong-us-length": (InstanceState.FAILED, ""),
    "wrong-pn-length": (InstanceState.FAILED, ""),
    "implicit-huge-length": (InstanceState.FAILED, ""),
    "deflate-bomb": (InstanceState.FAILED, "inflates to more than 1073741824 bytes"),
    "short-pixel-data": (InstanceState.FAILED, "fewer than the 7680 declared"),
    "zero-rows": (InstanceState.FAILED, "(0028,0010) Rows is 0"),
    "zero-columns-and-rows": (InstanceState.FAILED, "(0028,0010) Rows is 0"),
    "max-columns": (InstanceState.DONE, ""),
    "max-columns-and-rows-declared": (InstanceState.FAILED, "image too large: 65535x65535"),
    "huge-multi-frame-declared": (InstanceState.FAILED, "2147483647 frame(s)"),
    "many-frames": (InstanceState.DONE, ""),
    "frames-missing": (InstanceState.FAILED, "fewer than the 7680000 declared"),
    "bits-allocated-garbage": (InstanceState.FAILED, "(0028,0100) Bits Allocated is 65535"),
    "private-garbage": (InstanceState.DONE, ""),
}
#: Peak-RSS growth allowed while handling the whole set (the bomb alone inflates to 1 GiB).
RSS_GROWTH_LIMIT_MB = 600


def _peak_rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_cases(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor(load_bundle(tiny_bundle), threads=1, batch_size=4)


@pytest.mark.timeout(240)
def test_listener_then_worker(
    cases: dict[str, Path],
    scp: StorageSCP,
    settings: Settings,
    sessions: sessionmaker[Session],
    predictor: Predictor,
) -> None:
    rss_before = _peak_rss_mb()
    report = send_raw(list(cases.values()), scp.port, settings.listener.ae_title)
    by_name = {path.stem: code for path, code in report.statuses.items()}
    # Only a file whose own File Meta Information is broken cannot be put on the wire.
    assert {path.stem for path in report.unsendable} == {"truncated-in-meta"}
    assert report.aborted == 0
    # The listener stores bytes; it never inflates or decodes, so all are accepted.
    assert by_name == {name: status.SUCCESS for name in EXPECTED}
    assert send_c_echo(Peer("127.0.0.1", scp.port, settings.listener.ae_title), "CHECK") == 0

    worker = InferenceWorker(settings, sessions, predictor=predictor)
    assert worker.drain() == len(EXPECTED)
    with sessions() as session:
        rows = {Path(row.file_path).stem: row for row in session.scalars(select(Instance)).all()}
    by_uid = {_uid(path): name for name, path in cases.items() if name in EXPECTED}
    outcomes = {by_uid[uid]: (row.state, row.error or "") for uid, row in rows.items()}
    for name, (state, reason) in EXPECTED.items():
        got_state, got_reason = outcomes[name]
        assert got_state is state, f"{name}: {got_state} {got_reason}"
        assert reason in got_reason, f"{name}: {got_reason}"
        if state is InstanceState.FAILED:
            assert got_reason, f"{name} failed without a reason"
    growth = _peak_rss_mb() - rss_before
    print(f"\nhostile cases: {len(cases)}; peak RSS growth {growth} MB")
    assert growth < RSS_GROWTH_LIMIT_MB


def _uid(path: Path) -> str:
    meta, _ = split_dataset(path)
    return str(meta.MediaStorageSOPInstanceUID)


@pytest.mark.timeout(120)
def test_infer_gives_a_result_or_a_reason_for_each(
    cases: dict[str, Path], predictor: Predictor
) -> None:
    out = io.StringIO()
    failures = classify_files(predictor, list(cases.values()), out)
    lines = {Path(line["file"]).stem: line for line in map(json.loads, out.getvalue().splitlines())}
    assert set(lines) == set(cases)
    usable = {name for name, (state, _) in EXPECTED.items() if state is InstanceState.DONE}
    for name, line in lines.items():
        if name in usable:
            assert 0.0 <= line["probability"] <= 1.0, line
        else:
            assert line["error"].startswith(str(cases[name])), line
    assert failures == len(cases) - len(usable)
    assert "inflates to more than" in lines["deflate-bomb"]["error"]

"""Seeded fuzzing: mutated DX files through the listener, the worker and ``infer``,
and pydicom's own test files through ``infer``.

No crash, no hang (pytest-timeout), and every file accounted for: a DICOM status from the
listener, a final queue state (a ``failed`` one with its reason) from the worker, and a
result or an error line from ``infer``. The figures are printed (``pytest -s``).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from pydicom.data import get_testdata_files
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import Settings
from osteoflag.daemon.worker import InferenceWorker
from osteoflag.db.models import Instance, InstanceState
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.infer import classify_files
from osteoflag.inference.predictor import Predictor
from osteoflag.pacs import status
from osteoflag.pacs.scp import StorageSCP
from osteoflag.pacs.scu import Peer, send_c_echo
from tests.fuzz.corpus import base_datasets, write_mutants
from tests.fuzz.send import send_raw

SEED = 20261125
MUTANTS = 330
_FINAL = {InstanceState.DONE, InstanceState.SKIPPED, InstanceState.FAILED}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fuzz")
    return write_mutants(folder / "mutants", base_datasets(folder / "bases", SEED), MUTANTS, SEED)


@pytest.fixture(scope="module")
def predictor(tiny_bundle: Path) -> Predictor:
    return Predictor(load_bundle(tiny_bundle), threads=1, batch_size=8)


def _infer_lines(predictor: Predictor, files: list[Path]) -> tuple[int, list[dict[str, object]]]:
    out = io.StringIO()
    failures = classify_files(predictor, files, out)
    return failures, [json.loads(line) for line in out.getvalue().splitlines()]


def _check_lines(files: list[Path], lines: list[dict[str, object]]) -> Counter[str]:
    assert [line["file"] for line in lines] == [str(path) for path in files]
    kinds: Counter[str] = Counter()
    for line in lines:
        if "error" in line:
            assert isinstance(line["error"], str) and len(line["error"]) > len(str(line["file"]))
            kinds["error"] += 1
        else:
            probability = line["probability"]
            assert isinstance(probability, float) and 0.0 <= probability <= 1.0, line
            kinds["result"] += 1
    return kinds


@pytest.mark.timeout(300)
def test_mutants_through_listener_and_worker(
    corpus: list[Path],
    scp: StorageSCP,
    settings: Settings,
    sessions: sessionmaker[Session],
    predictor: Predictor,
) -> None:
    report = send_raw(corpus, scp.port, settings.listener.ae_title)
    assert len(report.statuses) + len(report.unsendable) == len(corpus)
    assert report.aborted == 0
    codes = Counter(f"0x{code:04X}" for code in report.statuses.values())
    assert send_c_echo(Peer("127.0.0.1", scp.port, settings.listener.ae_title), "CHECK") == 0

    worker = InferenceWorker(settings, sessions, predictor=predictor)
    stored = codes[f"0x{status.SUCCESS:04X}"]
    assert worker.drain() == stored
    with sessions() as session:
        rows = session.scalars(select(Instance)).all()
        outcomes = Counter(row.state.value for row in rows)
        assert len(rows) == stored
        for row in rows:
            assert row.state in _FINAL, row.state
            if row.state is not InstanceState.DONE:
                assert row.error, f"{row.sop_instance_uid} {row.state} without a reason"
    print(
        f"\nfuzz listener: {len(corpus)} mutants (seed {SEED}), sent {len(report.statuses)}, "
        f"unsendable {len(report.unsendable)}, statuses {dict(codes)}; "
        f"worker outcomes {dict(outcomes)}"
    )


@pytest.mark.timeout(300)
def test_mutants_through_infer(corpus: list[Path], predictor: Predictor) -> None:
    failures, lines = _infer_lines(predictor, corpus)
    kinds = _check_lines(corpus, lines)
    assert kinds["error"] == failures
    assert kinds["result"] > 0 and kinds["error"] > 0
    print(f"\nfuzz infer: {len(corpus)} mutants, {dict(kinds)}")


@pytest.mark.timeout(300)
def test_pydicom_test_files_through_infer(predictor: Predictor) -> None:
    files = sorted(Path(name) for name in get_testdata_files())
    assert len(files) > 100
    failures, lines = _infer_lines(predictor, files)
    kinds = _check_lines(files, lines)
    assert kinds["error"] == failures
    print(f"\npydicom test files through infer: {len(files)}, {dict(kinds)}")

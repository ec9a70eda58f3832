"""Drift watch's window read from a real queue database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import DriftSettings
from osteoflag.db.engine import MIGRATIONS, make_engine, migrate, session_factory
from osteoflag.db.models import Instance, InstanceState
from osteoflag.drift.reference import Inputs, Reference
from osteoflag.drift.watch import DriftWatch


def _done(sessions: sessionmaker[Session], model: str, scores: list[float], first: int) -> None:
    with sessions() as session:
        for k, probability in enumerate(scores):
            session.add(
                Instance(
                    sop_instance_uid=f"1.2.3.{first + k}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    calling_ae="MODALITY",
                    peer_address="127.0.0.1",
                    file_path="/nonexistent",
                    state=InstanceState.DONE,
                    probability=probability,
                    model=model,
                    body_part="HAND",
                    rows=2048,
                    columns=1664,
                )
            )
        session.commit()


def test_window_holds_only_the_served_models_results(
    sessions: sessionmaker[Session],
) -> None:
    """After ``model.bundle`` is switched, the previous bundle's scores (another scale, here all
    above 0.9) are not compared with the new bundle's reference."""
    spread = [(k % 10) / 10 + 0.05 for k in range(100)]
    _done(sessions, "old@1.0.0", [0.95] * 400, 0)
    _done(sessions, "new@2.0.0", spread, 1000)
    reference = Reference.build(
        [Inputs(p, "HAND", rows=2048, columns=1664) for p in spread], "validation images"
    )
    report = DriftWatch(reference, DriftSettings(), "new@2.0.0").report(sessions)
    assert report.n == 100
    assert report.score_psi is not None and report.score_psi < 0.01
    assert not report.alert


def test_results_from_before_the_input_statistics_compare_only_their_scores(
    tmp_path: Path,
) -> None:
    """Results classified before schema 0004 have no size, photometric or manufacturer: giving
    the same bundle a reference after upgrading must not read them as every input changed."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    command.upgrade(config, "0003")
    spread = [(k % 10) / 10 + 0.05 for k in range(200)]
    with engine.begin() as connection:
        for k, probability in enumerate(spread):
            connection.execute(
                text(
                    "INSERT INTO instances (sop_instance_uid, sop_class_uid, transfer_syntax_uid,"
                    " calling_ae, peer_address, received_at, file_path, state, attempts,"
                    " next_attempt_at, probability, model, finished_at, body_part) VALUES"
                    " (:uid, '1.2.4', '1.2.840.10008.1.2.1', 'MOD', '127.0.0.1',"
                    " CURRENT_TIMESTAMP, '/x.dcm', 'done', 1, CURRENT_TIMESTAMP, :p, 'm@1',"
                    " CURRENT_TIMESTAMP, 'HAND')"
                ),
                {"uid": f"1.2.3.{k}", "p": probability},
            )
    migrate(engine)
    reference = Reference.build(
        [Inputs(p, "HAND", "MONOCHROME2", "ACME", 2048, 1664) for p in spread], "validation"
    )
    try:
        report = DriftWatch(reference, DriftSettings(), "m@1").report(session_factory(engine))
    finally:
        engine.dispose()
    assert report.n == 200
    assert report.score_psi is not None and report.score_psi < 0.01
    assert report.share_changes == {}
    assert not report.alert

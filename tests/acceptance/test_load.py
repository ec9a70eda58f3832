"""Crash safety under load: SIGKILLs mid-traffic lose nothing, repeat nothing, report once.

The short run (200 instances, 2 kills) is part of ``make test``; the long one (1,000
instances, at least 5 kills, optionally the real default bundle) is ``make soak``.
Figures are printed (``-s``) for the README's crash-safety figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit.tiny_bundle import build_bundle
from tests.helpers.load import FINAL_STATES, LoadRun, run_load
from tests.helpers.privacy import loose_modes, private_identifier_lines

REPOSITORY = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(900)  # the module's load run is set up by its first test


def check_no_loss_no_repeat(run: LoadRun) -> None:
    """The crash-safety guarantees (README, Guarantees), on one run's rows and receptions."""
    figures = run.figures
    assert figures.acknowledged == figures.sent
    assert figures.lost == 0
    assert figures.unexpected == 0
    for uid, (state, error) in run.instances.items():
        assert state in FINAL_STATES, uid
        if state != "done":
            assert error, f"{uid} is {state} without a reason"
    done = [uid for uid, (state, _) in run.instances.items() if state == "done"]
    assert done, "nothing was classified"
    assert {run.classified_events[uid] for uid in done} == {1}
    assert max(run.classified_events.values()) == 1
    for uid in done:
        assert run.received[run.expected_sr[uid]] >= 1, f"no SR for {uid}"
        assert run.results_per_source[uid] == 1, f"{uid} got more than one result UID"
    assert set(run.results_per_source) == set(done)
    assert figures.second_results == 0
    assert figures.delivered == len(done)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> LoadRun:
    run = run_load(tmp_path_factory.mktemp("load"), tiny_bundle, count=200, kills=2, seed=6)
    print("\nshort load run\n" + run.figures.lines())
    return run


def test_acknowledged_instances_survive_sigkills_once_each(short_run: LoadRun) -> None:
    check_no_loss_no_repeat(short_run)
    assert short_run.figures.kills == 2


def test_daemon_logs_of_the_load_run_name_no_patient(short_run: LoadRun) -> None:
    log = short_run.daemon.log_path.read_text()
    assert '"instance classified"' in log
    assert private_identifier_lines(log) == []


def test_received_and_produced_files_are_owner_only(short_run: LoadRun) -> None:
    storage = short_run.storage
    assert any((storage / "incoming").rglob("*.dcm"))
    assert any((storage / "outgoing").rglob("*.dcm"))
    assert (storage / "osteoflag.db").exists()
    assert loose_modes(storage) == []


def _soak_bundle(tiny_bundle: Path, work: Path) -> Path:
    """``$OSTEOFLAG_SOAK_BUNDLE`` (a folder, or ``vgg16`` for a generated VGG16-sized
    stand-in), else ``models/default`` when present, else the tiny test bundle."""
    chosen = os.environ.get("OSTEOFLAG_SOAK_BUNDLE")
    if chosen == "vgg16":
        return build_bundle(work / "vgg16", architecture="vgg16", size=(224, 224), name="soak")
    if chosen:
        return Path(chosen)
    default = REPOSITORY / "models" / "default"
    return default if (default / "manifest.json").exists() else tiny_bundle


@pytest.mark.soak
@pytest.mark.timeout(7200)
def test_soak(tmp_path: Path, tiny_bundle: Path) -> None:
    count = int(os.environ.get("OSTEOFLAG_SOAK_COUNT", "1000"))
    kills = int(os.environ.get("OSTEOFLAG_SOAK_KILLS", "6"))
    bundle = _soak_bundle(tiny_bundle, tmp_path)
    run = run_load(tmp_path / "run", bundle, count=count, kills=kills, seed=1006)
    print(f"\nsoak run with bundle {bundle}\n" + run.figures.lines())
    check_no_loss_no_repeat(run)
    assert private_identifier_lines(run.daemon.log_path.read_text()) == []
    assert loose_modes(run.storage) == []

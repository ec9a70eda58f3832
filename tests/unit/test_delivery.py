"""The sender thread runs when woken, and results announce themselves only once committed."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from pydicom import Dataset

from osteoflag.daemon.delivery import SenderLoop, announcing
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Event, Instance
from osteoflag.db.queue import Result
from osteoflag.inference.pixels import GreyArray
from osteoflag.inference.worker import Record
from tests.helpers.wait import wait_for


def test_a_wake_runs_the_sender_without_waiting_for_the_interval() -> None:
    runs: list[int] = []
    ran = threading.Event()

    def send() -> bool:
        runs.append(1)
        ran.set()
        return False

    loop = SenderLoop(send, interval=600.0)
    loop.start()
    try:
        loop.wake()
        wait_for(ran.is_set, timeout=10)
    finally:
        loop.stop(timeout=10)
    assert runs == [1]


def test_a_failing_run_does_not_stop_the_loop() -> None:
    calls: list[int] = []

    def send() -> bool:
        calls.append(1)
        raise RuntimeError("destination exploded")

    loop = SenderLoop(send, interval=600.0)
    loop.start()
    try:
        loop.wake()
        wait_for(lambda: len(calls) == 1, timeout=10)
        loop.wake()
        wait_for(lambda: len(calls) == 2, timeout=10)
    finally:
        loop.stop(timeout=10)


def test_runs_repeat_while_they_deliver_something() -> None:
    batches = [True, True, False]
    runs: list[bool] = []

    def send() -> bool:
        runs.append(batches.pop(0) if batches else False)
        return runs[-1]

    loop = SenderLoop(send, interval=600.0)
    loop.start()
    try:
        loop.wake()
        wait_for(lambda: len(runs) == 3, timeout=10)
    finally:
        loop.stop(timeout=10)
    assert runs == [True, True, False]


def test_announcements_follow_the_commit_not_the_hook(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    seen: list[str] = []

    def hook(instance: Instance, source: Dataset, grey: GreyArray, result: Result) -> Record:
        seen.append("hook")
        return lambda session: session.add(Event(action="hooked"))

    on_done = announcing(hook, [lambda: seen.append("announced")])
    result = Result(0.9, "fracture", 0.5, "m@1", 1.0)
    grey = np.zeros((4, 4), np.uint8)
    with sessions() as session:
        on_done(Instance(), Dataset(), grey, result)(session)
        assert seen == ["hook"]
        session.commit()
    assert seen == ["hook", "announced"]
    with sessions() as session:
        on_done(Instance(), Dataset(), grey, result)(session)
        session.rollback()
        session.commit()
    assert seen == ["hook", "announced", "hook"]
    engine.dispose()

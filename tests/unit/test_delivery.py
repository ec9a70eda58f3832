"""The sender thread runs at start and when woken, once at a time, and survives a failing run."""

from __future__ import annotations

import threading

from osteoflag.daemon.delivery import SenderLoop
from testkit.wait import wait_for


def test_the_start_and_each_wake_run_the_sender_without_waiting_for_the_interval() -> None:
    runs: list[int] = []

    def send(stop: threading.Event) -> bool:
        runs.append(1)
        return False

    loop = SenderLoop(send, interval=600.0)
    loop.start()
    try:
        wait_for(lambda: len(runs) == 1, timeout=10)
        loop.wake()
        wait_for(lambda: len(runs) == 2, timeout=10)
    finally:
        loop.stop(timeout=10)
    assert runs == [1, 1]


def test_a_failing_run_does_not_stop_the_loop() -> None:
    calls: list[int] = []

    def send(stop: threading.Event) -> bool:
        calls.append(1)
        raise RuntimeError("destination exploded")

    loop = SenderLoop(send, interval=600.0)
    loop.start()
    try:
        wait_for(lambda: len(calls) == 1, timeout=10)
        loop.wake()
        wait_for(lambda: len(calls) == 2, timeout=10)
    finally:
        loop.stop(timeout=10)


def test_runs_repeat_while_they_deliver_something() -> None:
    batches = [True, True, False]
    runs: list[bool] = []

    def send(stop: threading.Event) -> bool:
        runs.append(batches.pop(0) if batches else False)
        return runs[-1]

    loop = SenderLoop(send, interval=600.0)
    loop.start()
    try:
        wait_for(lambda: len(runs) == 3, timeout=10)
    finally:
        loop.stop(timeout=10)
    assert runs == [True, True, False]


def test_stop_reaches_the_run_in_progress() -> None:
    """SIGTERM during a run: the run is told (its stop event) and ends, so the stop does not
    wait out the run's budget, nor return while the run goes on sending."""
    started = threading.Event()

    def send(stop: threading.Event) -> bool:
        started.set()
        return not stop.wait(timeout=20)  # a run with objects left until it is told to stop

    loop = SenderLoop(send, interval=600.0)
    loop.start()
    wait_for(started.is_set, timeout=10)
    loop.stop(timeout=10)
    assert not loop.running

"""The delivery retry policy: exponential backoff, cap, deadline, permanent failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from osteoflag.config import SenderSettings
from osteoflag.pacs.retry import GiveUp, RetryAt, RetryPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(
    base=timedelta(seconds=30), cap=timedelta(minutes=10), deadline=timedelta(hours=1)
)


def test_delay_doubles_then_caps() -> None:
    delays = [POLICY.delay(n).total_seconds() for n in range(1, 8)]
    assert delays == [30, 60, 120, 240, 480, 600, 600]
    assert POLICY.delay(10_000) == timedelta(minutes=10)


def test_retry_is_scheduled_after_the_backoff() -> None:
    decision = POLICY.decide(attempts=2, created_at=T0, now=T0, error="refused", permanent=False)
    assert decision == RetryAt(T0 + timedelta(seconds=60))


def test_retry_never_scheduled_past_the_deadline() -> None:
    now = T0 + timedelta(minutes=55)
    decision = POLICY.decide(attempts=9, created_at=T0, now=now, error="x", permanent=False)
    assert decision == RetryAt(T0 + timedelta(hours=1))


def test_gives_up_at_the_deadline_with_the_last_error() -> None:
    now = T0 + timedelta(hours=1)
    decision = POLICY.decide(attempts=9, created_at=T0, now=now, error="refused", permanent=False)
    assert isinstance(decision, GiveUp)
    assert "deadline" in decision.reason and "refused" in decision.reason


def test_gives_up_at_once_on_a_permanent_failure() -> None:
    decision = POLICY.decide(attempts=1, created_at=T0, now=T0, error="0xA900", permanent=True)
    assert decision == GiveUp("permanent failure: 0xA900")


def test_from_settings_and_validation() -> None:
    policy = RetryPolicy.from_settings(
        SenderSettings(backoff_base_seconds=1, backoff_cap_seconds=4, deadline_seconds=9)
    )
    assert policy.delay(5) == timedelta(seconds=4)
    with pytest.raises(ValueError, match="cap"):
        RetryPolicy(base=timedelta(seconds=5), cap=timedelta(seconds=1), deadline=timedelta(1))
    with pytest.raises(ValueError, match="attempts"):
        POLICY.delay(0)

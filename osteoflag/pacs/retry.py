"""When to try delivering an object again: a small pure policy, unit-tested without a clock.

Exponential backoff with a cap (``base * 2**(attempts-1)``, at most ``cap``) until a
deadline counted from the object's creation; past the deadline, or on a permanent
failure, the object is given up (outbound state ``failed``), never retried forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from osteoflag.config import SenderSettings


@dataclass(frozen=True)
class RetryAt:
    """Try again at ``when``."""

    when: datetime


@dataclass(frozen=True)
class GiveUp:
    """Stop trying; ``reason`` goes to the row's ``last_error``."""

    reason: str


Decision = RetryAt | GiveUp


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with a cap and a deadline."""

    base: timedelta
    cap: timedelta
    deadline: timedelta

    def __post_init__(self) -> None:
        if self.base <= timedelta(0):
            raise ValueError(f"backoff base {self.base} must be positive")
        if self.cap < self.base:
            raise ValueError(f"backoff cap {self.cap} is below the base {self.base}")
        if self.deadline <= timedelta(0):
            raise ValueError(f"delivery deadline {self.deadline} must be positive")

    @classmethod
    def from_settings(cls, settings: SenderSettings) -> RetryPolicy:
        """The policy configured in ``[sender]``."""
        return cls(
            base=timedelta(seconds=settings.backoff_base_seconds),
            cap=timedelta(seconds=settings.backoff_cap_seconds),
            deadline=timedelta(seconds=settings.deadline_seconds),
        )

    def delay(self, attempts: int) -> timedelta:
        """Wait after the ``attempts``-th failed attempt (1-based)."""
        if attempts < 1:
            raise ValueError(f"attempts {attempts} must be at least 1")
        # Compare exponents, not products, so a huge attempt count cannot overflow.
        doublings = attempts - 1
        if doublings >= 62 or self.base * (1 << doublings) >= self.cap:
            return self.cap
        return self.base * (1 << doublings)

    def decide(
        self, *, attempts: int, created_at: datetime, now: datetime, error: str, permanent: bool
    ) -> Decision:
        """After a failed attempt: retry later, or give up (permanent or past the deadline)."""
        if permanent:
            return GiveUp(f"permanent failure: {error}")
        expires = created_at + self.deadline
        if now >= expires:
            return GiveUp(f"delivery deadline of {self.deadline} passed; last error: {error}")
        return RetryAt(min(now + self.delay(attempts), expires))

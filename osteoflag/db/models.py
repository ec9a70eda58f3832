"""SQLAlchemy models: the instance queue, outbound objects, an append-only event log and the
radiologists' feedback on results.

The queue is explicit (state, attempts, next attempt, lease owner and expiry) so a
crashed or killed process leaves rows that can be recognised and recovered.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the queue uses."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Store UTC, return aware datetimes, on SQLite (naive text) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        # PostgreSQL answers in the session's TimeZone (Etc/UTC, Europe/Paris...): same
        # instant, but callers are promised datetime.UTC.
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class InstanceState(enum.StrEnum):
    """Life of a received instance (the states of ``status --json``)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class OutboundState(enum.StrEnum):
    """Life of a produced object on its way to one destination."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class FeedbackLabel(enum.StrEnum):
    """A radiologist's reading of an image, recorded beside the model's result."""

    FRACTURE = "fracture"
    NO_FRACTURE = "no_fracture"
    UNSURE = "unsure"


def _enum(kind: type[enum.StrEnum], name: str) -> Enum:
    return Enum(
        kind,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda e: [m.value for m in e],
    )


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is what migrations must reproduce."""


class Instance(Base):
    """One received SOP instance and what became of it."""

    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_state_next", "state", "next_attempt_at"),
        # Drift watch's window: one model's latest results, without sorting every finished row.
        Index("ix_instances_model_finished", "model", "finished_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer_address: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    file_path: Mapped[str] = mapped_column(Text)
    state: Mapped[InstanceState] = mapped_column(
        _enum(InstanceState, "instance_state"), default=InstanceState.QUEUED
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[str | None] = mapped_column(Text)
    body_part: Mapped[str | None] = mapped_column(String(64))
    probability: Mapped[float | None] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(16))
    threshold: Mapped[float | None] = mapped_column(Float)
    model: Mapped[str | None] = mapped_column(String(128))
    inference_ms: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # file gone (retention)
    # Input statistics for drift watch (device and geometry, no patient data).
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    photometric: Mapped[str | None] = mapped_column(String(16))
    manufacturer: Mapped[str | None] = mapped_column(String(64))


class Outbound(Base):
    """One produced object (SR or summary image) owed to one destination."""

    __tablename__ = "outbound"
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination", name="uq_outbound_sop_destination"),
        Index("ix_outbound_destination_state_next", "destination", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(16))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    file_path: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(128))
    state: Mapped[OutboundState] = mapped_column(
        _enum(OutboundState, "outbound_state"), default=OutboundState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))  # the claiming process
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # file gone (retention)


class Event(Base):
    """Append-only log of what happened to an instance, for audits and the operator page."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)


class Feedback(Base):
    """A reference label an authenticated user recorded for a result: who (the page's user
    name) and when, never a patient's data. Rows are only added; an instance's latest row is
    its current label."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    label: Mapped[FeedbackLabel] = mapped_column(_enum(FeedbackLabel, "feedback_label"))
    note: Mapped[str | None] = mapped_column(Text)
    recorded_by: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Process(Base):
    """A running ``osteoflag serve`` process, as far as its heartbeats say.

    Claims (``lease_owner`` on instances and outbound objects) name the process holding
    them; once its heartbeat is stale the process is taken for dead and its claims are
    released, in seconds rather than at the end of their lease.
    """

    __tablename__ = "processes"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

"""Prometheus ``/metrics``: queue and delivery state read from the database at each scrape.

The database is the source of truth shared by every process (and survives restarts), so
the collector asks it instead of keeping in-process counters: a scrape always agrees
with ``osteoflag status --json``. The registry belongs to one web app; nothing is global.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.db import queue
from osteoflag.db.engine import reading
from osteoflag.db.models import utcnow
from osteoflag.drift.watch import DriftWatch
from osteoflag.web import queries

logger = logging.getLogger(__name__)

Liveness = Callable[[], dict[str, bool]]


class QueueCollector(Collector):
    """Instances and outbound objects per state, queue age, inference latency, liveness."""

    def __init__(self, sessions: sessionmaker[Session], liveness: Liveness) -> None:
        self._sessions = sessions
        self._liveness = liveness

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "osteoflag_component_up", "1 when the component is alive", labels=["component"]
        )
        for component, alive in sorted(self._liveness().items()):
            up.add_metric([component], 1.0 if alive else 0.0)
        try:
            families = list(self._from_database())
        except SQLAlchemyError as exc:
            logger.warning(
                "metrics: database unavailable", extra={"action": "metrics", "error": str(exc)}
            )
            up.add_metric(["database"], 0.0)
            yield up
            return
        up.add_metric(["database"], 1.0)
        yield up
        yield from families

    def _from_database(self) -> Iterator[Metric]:
        counts = queue.counts(self._sessions)
        received = CounterMetricFamily(
            "osteoflag_instances_received", "Instances accepted by the Storage SCP (rows kept)"
        )
        received.add_metric([], float(sum(counts["instances"].values())))
        yield received
        instances = GaugeMetricFamily(
            "osteoflag_instances", "Received instances per queue state", labels=["state"]
        )
        for state, count in counts["instances"].items():
            instances.add_metric([state], float(count))
        yield instances
        outbound = GaugeMetricFamily(
            "osteoflag_outbound", "Produced objects per delivery state", labels=["state"]
        )
        for state, count in counts["outbound"].items():
            outbound.add_metric([state], float(count))
        yield outbound
        with reading(self._sessions) as session:
            age = queries.oldest_queued_age(session, utcnow())
            conflicts = queue.conflicting_copies(session)
        copies = CounterMetricFamily(
            "osteoflag_conflicting_copies",
            "Copies with an accepted SOP Instance UID but another data set, kept beside it",
        )
        copies.add_metric([], float(conflicts))
        yield copies
        oldest = GaugeMetricFamily(
            "osteoflag_queue_oldest_age_seconds",
            "Age of the oldest queued instance (0 when the queue is empty)",
        )
        oldest.add_metric([], age or 0.0)
        yield oldest
        latency = queries.latency(self._sessions)
        histogram = HistogramMetricFamily(
            "osteoflag_inference_seconds",
            "Decode plus model time per classified instance (instances.inference_ms)",
        )
        histogram.add_metric(
            [],
            buckets=[(str(bound), float(n)) for bound, n in latency.buckets]
            + [("+Inf", float(latency.count))],
            sum_value=latency.total_seconds,
        )
        yield histogram


class DriftCollector(Collector):
    """Drift watch against the bundle's reference, computed from the database at each scrape."""

    def __init__(self, sessions: sessionmaker[Session], drift: DriftWatch) -> None:
        self._sessions = sessions
        self._drift = drift

    def collect(self) -> Iterator[Metric]:
        try:
            report = self._drift.report(self._sessions)
        except SQLAlchemyError as exc:
            logger.warning(
                "metrics: drift unavailable", extra={"action": "metrics", "error": str(exc)}
            )
            return
        window = GaugeMetricFamily(
            "osteoflag_drift_window_results", "Classified instances in the drift window"
        )
        window.add_metric([], float(report.n))
        yield window
        if report.score_psi is not None:
            score = GaugeMetricFamily(
                "osteoflag_drift_score_psi", "Population stability index of the window's scores"
            )
            score.add_metric([], report.score_psi)
            yield score
        shares = GaugeMetricFamily(
            "osteoflag_drift_share_change",
            "Share change of an input statistic against the reference (0 same, 1 disjoint)",
            labels=["statistic"],
        )
        for name, value in report.share_changes.items():
            shares.add_metric([name], value)
        yield shares
        alert = GaugeMetricFamily("osteoflag_drift_alert", "1 when the drift alert rule fires")
        alert.add_metric([], 1.0 if report.alert else 0.0)
        yield alert


def metrics_registry(
    sessions: sessionmaker[Session], liveness: Liveness, drift: DriftWatch | None = None
) -> CollectorRegistry:
    """A private registry: the queue collector, and drift watch when the bundle has a
    reference."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(sessions, liveness))
    if drift is not None:
        registry.register(DriftCollector(sessions, drift))
    return registry

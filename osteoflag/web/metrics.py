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


def metrics_registry(sessions: sessionmaker[Session], liveness: Liveness) -> CollectorRegistry:
    """A private registry holding only the queue collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(sessions, liveness))
    return registry

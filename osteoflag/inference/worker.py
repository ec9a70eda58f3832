"""The inference worker: claim queued instances, classify them, record the outcome.

One worker thread owns the predictor. It sleeps on a :class:`threading.Event` that the
Storage SCP sets after each committed store (:meth:`InferenceWorker.wake`), and that a
periodic APScheduler sweep also sets as a safety net (:meth:`InferenceWorker.sweep`), so
an instance is picked up at once but never forgotten. Each wake-up drains the queue batch
by batch; a claim is one atomic statement with a lease (``osteoflag.db.queue``).

Per instance the outcome is ``done`` (probability, label, threshold, model, time),
``skipped`` (outside the model's domain: BodyPartExamined allowlist, minimum size) or
``failed`` with the reason; one bad instance never stops the others in its batch.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from apscheduler.schedulers.base import BaseScheduler
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import ModelSettings, Settings
from osteoflag.db import queue
from osteoflag.db.models import Instance
from osteoflag.errors import OsteoflagError
from osteoflag.inference.bundle import Bundle, load_bundle
from osteoflag.inference.dicomfile import read_instance
from osteoflag.inference.pixels import (
    FloatArray,
    GreyArray,
    display_from_dataset,
    model_input,
)
from osteoflag.inference.predictor import Predictor

logger = logging.getLogger(__name__)

#: What :data:`OnDone` returns: run in the transaction that marks the instance ``done``.
Record = Callable[[Session], None]
#: Called before that transaction, with the instance, its dataset, the image the model saw (as
#: 8-bit grey) and the result (e.g. to build and write the SR and summary, which takes tens of
#: ms and must not hold a database lock); returns what to record in the transaction (e.g.
#: their outbound rows). An :class:`OsteoflagError` from either fails the instance instead.
OnDone = Callable[[Instance, Dataset, GreyArray, queue.Result], Record]
#: Called in the transaction that marks a readable instance ``skipped`` or ``failed``, with the
#: reason (e.g. for an "undetermined" SR); an :class:`OsteoflagError` is noted in the reason.
OnRefused = Callable[[Session, Instance, Dataset, str], None]


@dataclass(frozen=True)
class _Ready:
    """An instance whose pixels are decoded and waiting for the batch's forward pass; its
    display, in 8 bits, is kept for the summary, which would otherwise decode it again."""

    instance: Instance
    source: Dataset
    grey: GreyArray
    tensor: FloatArray
    prepare_ms: float


def domain_refusal(ds: Dataset, model: ModelSettings) -> str | None:
    """Why ``ds`` is outside the model's domain, or None when it may be classified."""
    if model.body_parts:
        body_part = str(ds.get("BodyPartExamined", "")).strip().upper()
        allowed = {part.strip().upper() for part in model.body_parts}
        if body_part not in allowed:
            return (
                f"(0018,0015) Body Part Examined {body_part or '<absent>'!r} is not in the "
                f"allowlist {sorted(allowed)}"
            )
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        return None  # not small but broken: the pixel checks fail it, naming the tag
    if rows < model.min_rows or columns < model.min_columns:
        return (
            f"image {rows}x{columns} is smaller than the minimum "
            f"{model.min_rows}x{model.min_columns} (Rows x Columns)"
        )
    return None


class InferenceWorker:
    """Classifies queued instances with one predictor, on one thread."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        predictor: Predictor | None = None,
        on_done: OnDone | None = None,
        on_refused: OnRefused | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._predictor = predictor or Predictor(
            load_bundle(settings.model.bundle),
            threads=settings.model.threads,
            batch_size=settings.model.batch_size,
        )
        self._on_done = on_done
        self._on_refused = on_refused
        self._owner = f"infer:{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._lease = timedelta(seconds=settings.worker.lease_seconds)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def bundle(self) -> Bundle:
        """The served bundle (for the model identity stated in produced objects)."""
        return self._predictor.bundle

    @property
    def running(self) -> bool:
        """True while the worker thread is alive (``/healthz``)."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Ask the worker thread to look at the queue now (the SCP calls this after a store)."""
        self._wake.set()

    def sweep(self) -> None:
        """The periodic safety net: same as :meth:`wake`, scheduled every ``sweep_seconds``."""
        self._wake.set()

    def schedule(self, scheduler: BaseScheduler) -> None:
        """Add the periodic sweep (every ``[worker] sweep_seconds``) to the daemon's scheduler."""
        scheduler.add_job(
            self.sweep,
            "interval",
            seconds=self._settings.worker.sweep_seconds,
            id="inference-sweep",
            max_instances=1,
            coalesce=True,
        )

    def start(self) -> None:
        """Start the worker thread; it drains the queue once at start-up."""
        if self._thread is not None:
            raise RuntimeError("inference worker already started")
        self._stop.clear()
        self._wake.set()
        self._thread = threading.Thread(target=self._loop, name="osteoflag-infer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the batch in hand, then stop; unclaimed instances stay queued."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.drain()
            except Exception:  # keep the thread alive; the sweep will retry
                logger.exception("inference worker pass failed", extra={"action": "infer_pass"})

    def drain(self) -> int:
        """Process batches until the queue has nothing due (or a stop); return the count."""
        total = 0
        while not self._stop.is_set():
            done = self.run_once()
            total += done
            if done == 0:
                break
        return total

    def run_once(self) -> int:
        """Claim and process one batch; return how many instances it held."""
        claimed = queue.claim_instances(
            self._sessions, self._owner, self._predictor.batch_size, self._lease
        )
        ready: list[_Ready] = []
        for instance in claimed:
            item = self._prepare(instance)
            if item is not None:
                ready.append(item)
        if ready:
            self._classify(ready)
        return len(claimed)

    def _prepare(self, instance: Instance) -> _Ready | None:
        """Read, check the domain, decode; record skip/fail and return None when not usable."""
        started = time.perf_counter()
        try:
            ds = read_instance(Path(instance.file_path))
        except OsteoflagError as exc:
            self._record(instance, queue.fail, str(exc), "failed")
            return None
        try:
            refusal = domain_refusal(ds, self._settings.model)
            if refusal is not None:
                self._record(instance, queue.skip, refusal, "skipped", ds)
                return None
            display = display_from_dataset(ds)
            tensor = model_input(display, self._predictor.bundle.input_spec)
        except OsteoflagError as exc:
            self._record(instance, queue.fail, str(exc), "failed", ds)
            return None
        except Exception as exc:  # an unforeseen decoder error must not block the batch
            reason = f"unexpected {type(exc).__name__} while decoding: {exc}"
            self._record(instance, queue.fail, reason, "failed", ds)
            return None
        return _Ready(
            instance, ds, display.grey8(), tensor, (time.perf_counter() - started) * 1000.0
        )

    def _classify(self, ready: list[_Ready]) -> None:
        started = time.perf_counter()
        try:
            predictions = self._predictor.predict_inputs([item.tensor for item in ready])
        except OsteoflagError as exc:
            for item in ready:
                reason = f"inference failed: {exc}"
                self._record(item.instance, queue.fail, reason, "failed", item.source)
            return
        model_ms = (time.perf_counter() - started) * 1000.0 / len(ready)
        for item, prediction in zip(ready, predictions, strict=True):
            result = queue.Result(
                probability=prediction.probability,
                label=prediction.label.value,
                threshold=prediction.threshold,
                model=prediction.model,
                inference_ms=item.prepare_ms + model_ms,
            )
            self._store(item, result)

    def _store(self, item: _Ready, result: queue.Result) -> None:
        """``on_done``'s work, then ``done`` plus what it records; ``failed`` if either fails."""
        instance = item.instance
        try:
            record = (
                self._on_done(instance, item.source, item.grey, result)
                if self._on_done is not None
                else None
            )
            if not self._commit_done(instance, result, record):
                return
        except OsteoflagError as exc:
            self._record(instance, queue.fail, f"result not recorded: {exc}", "failed")
            return
        logger.info(
            "instance classified",
            extra={
                "action": "classified",
                "sop_instance_uid": instance.sop_instance_uid,
                "probability": round(result.probability, 6),
                "label": result.label,
                "model": result.model,
                "inference_ms": round(result.inference_ms, 1),
            },
        )

    def _commit_done(self, instance: Instance, result: queue.Result, record: Record | None) -> bool:
        """``done`` plus what ``record`` adds, in one transaction; False if the lease was lost."""
        with self._sessions() as session:
            try:
                if not queue.complete(session, instance.id, self._owner, result):
                    session.rollback()
                    self._lease_lost(instance)
                    return False
                if record is not None:
                    record(session)
                session.commit()
            except OsteoflagError:
                session.rollback()
                raise
        return True

    def _record(
        self,
        instance: Instance,
        outcome: Callable[[Session, int, str, str], bool],
        reason: str,
        action: str,
        source: Dataset | None = None,
    ) -> None:
        """Mark ``skipped``/``failed`` with ``reason``; ``on_refused`` joins the transaction."""
        hook_error: OsteoflagError | None = None
        with self._sessions() as session:
            try:
                if not outcome(session, instance.id, self._owner, reason):
                    session.rollback()
                    self._lease_lost(instance)
                    return
                if source is not None and self._on_refused is not None:
                    self._on_refused(session, instance, source, reason)
                session.commit()
            except OsteoflagError as exc:
                session.rollback()
                hook_error = exc
        if hook_error is not None:
            self._record(instance, outcome, f"{reason}; no report produced: {hook_error}", action)
            return
        logger.warning(
            "instance %s",
            action,
            extra={
                "action": action,
                "sop_instance_uid": instance.sop_instance_uid,
                "reason": reason,
            },
        )

    def _lease_lost(self, instance: Instance) -> None:
        logger.warning(
            "lease lost before the outcome was recorded",
            extra={"action": "lease_lost", "sop_instance_uid": instance.sop_instance_uid},
        )

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

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import ModelSettings, Settings
from osteoflag.db import queue
from osteoflag.db.models import Instance
from osteoflag.errors import OsteoflagError, PixelDataError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.pixels import FloatArray, display_from_dataset, model_input
from osteoflag.inference.predictor import Predictor

logger = logging.getLogger(__name__)

#: Called in the same transaction as ``complete`` (e.g. to create the SR's outbound rows).
OnDone = Callable[[Session, Instance, queue.Result], None]


@dataclass(frozen=True)
class _Ready:
    """An instance whose pixels are decoded and waiting for the batch's forward pass."""

    instance: Instance
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
    if rows < model.min_rows or columns < model.min_columns:
        return (
            f"image {rows}x{columns} is smaller than the minimum "
            f"{model.min_rows}x{model.min_columns} (Rows x Columns)"
        )
    return None


def read_dataset(path: Path) -> Dataset:
    """Read a stored instance; unreadable files are a permanent failure."""
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise PixelDataError(f"{path}: cannot be read as DICOM: {exc}") from exc


class InferenceWorker:
    """Classifies queued instances with one predictor, on one thread."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        predictor: Predictor | None = None,
        on_done: OnDone | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._predictor = predictor or Predictor(
            load_bundle(settings.model.bundle),
            threads=settings.model.threads,
            batch_size=settings.model.batch_size,
        )
        self._on_done = on_done
        self._owner = f"infer:{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._lease = timedelta(seconds=settings.worker.lease_seconds)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def model_id(self) -> str:
        return self._predictor.model_id

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
            ds = read_dataset(Path(instance.file_path))
            refusal = domain_refusal(ds, self._settings.model)
            if refusal is not None:
                self._record(instance, queue.skip, refusal, "skipped")
                return None
            tensor = model_input(display_from_dataset(ds), self._predictor.bundle.input_spec)
        except OsteoflagError as exc:
            self._record(instance, queue.fail, str(exc), "failed")
            return None
        except Exception as exc:  # an unforeseen decoder error must not block the batch
            reason = f"unexpected {type(exc).__name__} while decoding: {exc}"
            self._record(instance, queue.fail, reason, "failed")
            return None
        return _Ready(instance, tensor, (time.perf_counter() - started) * 1000.0)

    def _classify(self, ready: list[_Ready]) -> None:
        started = time.perf_counter()
        try:
            predictions = self._predictor.predict_inputs([item.tensor for item in ready])
        except OsteoflagError as exc:
            for item in ready:
                self._record(item.instance, queue.fail, f"inference failed: {exc}", "failed")
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
            with self._sessions() as session:
                if queue.complete(session, item.instance.id, self._owner, result):
                    if self._on_done is not None:
                        self._on_done(session, item.instance, result)
                    session.commit()
                    logger.info(
                        "instance classified",
                        extra={
                            "action": "classified",
                            "sop_instance_uid": item.instance.sop_instance_uid,
                            "probability": round(result.probability, 6),
                            "label": result.label,
                            "model": result.model,
                            "inference_ms": round(result.inference_ms, 1),
                        },
                    )
                else:
                    session.rollback()
                    self._lease_lost(item.instance)

    def _record(
        self,
        instance: Instance,
        outcome: Callable[[Session, int, str, str], bool],
        reason: str,
        action: str,
    ) -> None:
        with self._sessions() as session:
            if outcome(session, instance.id, self._owner, reason):
                session.commit()
                logger.warning(
                    "instance %s",
                    action,
                    extra={
                        "action": action,
                        "sop_instance_uid": instance.sop_instance_uid,
                        "reason": reason,
                    },
                )
            else:
                session.rollback()
                self._lease_lost(instance)

    def _lease_lost(self, instance: Instance) -> None:
        logger.warning(
            "lease lost before the outcome was recorded",
            extra={"action": "lease_lost", "sop_instance_uid": instance.sop_instance_uid},
        )

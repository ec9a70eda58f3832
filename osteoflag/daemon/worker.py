"""The inference worker: claim queued instances, classify them, record the outcome.

One worker thread owns the predictor. It sleeps on a :class:`threading.Event` that the
Storage SCP sets after each committed store (:meth:`InferenceWorker.wake`), and that the
periodic sweep the worker adds to the daemon's scheduler (:meth:`InferenceWorker.schedule`)
sets too, so an instance is picked up at once but never forgotten. Each wake-up drains the
queue batch by batch; a claim is one atomic statement with a lease (``osteoflag.db.queue``).

Per instance the outcome is ``done`` (probability, label, threshold, model, time),
``skipped`` (outside the model's domain: BodyPartExamined allowlist, minimum size, or features
far from the training images' when the bundle has an out-of-distribution guard) or
``failed`` with the reason, recorded by :class:`~osteoflag.daemon.outcomes.Outcomes`: one bad
instance never stops the others in its batch. What finishing an instance produces (the SR, the
summary image, their outbound rows) is the :class:`~osteoflag.daemon.finishing.Finishing`
hook's business (``osteoflag.daemon.results``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from apscheduler.schedulers.base import BaseScheduler
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import ModelSettings, Settings
from osteoflag.daemon.finishing import Finishing, Silent
from osteoflag.daemon.outcomes import Outcomes, unexpected
from osteoflag.db import queue
from osteoflag.db.models import Instance, InstanceState
from osteoflag.db.processes import owner_name
from osteoflag.errors import OsteoflagError, TransientError
from osteoflag.inference.budget import DecodeBudget
from osteoflag.inference.dicomfile import read_instance
from osteoflag.inference.pixels import (
    DisplayImage,
    FloatArray,
    GreyArray,
    display_from_dataset,
    model_input,
)
from osteoflag.inference.predictor import Predictor
from osteoflag.pacs.derived import COPIED
from osteoflag.pacs.identity import OwnUIDs
from osteoflag.pacs.values import redact

logger = logging.getLogger(__name__)


def _key_on_stored(ds: Dataset, instance: Instance) -> None:
    """Give ``ds`` the stored instance's SOP Class and Instance UIDs, which every produced
    object references and derives its UIDs from. The Storage SCP refuses a data set naming
    another instance; a file queued before that check (or by hand) may still do so."""
    mismatch = OwnUIDs.of(ds).mismatch(instance.sop_class_uid, instance.sop_instance_uid)
    if mismatch is None:
        return
    logger.info(
        "source keyed on the stored instance: %s",
        mismatch.comment,
        extra={"action": "key_source", "sop_instance_uid": instance.sop_instance_uid},
    )
    ds.SOPInstanceUID = instance.sop_instance_uid
    ds.SOPClassUID = instance.sop_class_uid


@dataclass(frozen=True)
class _Ready:
    """An instance whose pixels are decoded and waiting for the batch's forward pass; its
    display, in 8 bits, is kept for the summary, which would otherwise decode it again."""

    instance: Instance
    source: Dataset
    grey: GreyArray
    tensor: FloatArray
    prepare_ms: float


def _size(grey: GreyArray) -> tuple[int, int]:
    rows, columns = grey.shape
    return rows, columns


def _display(grey: GreyArray) -> DisplayImage:
    """The kept 8-bit grey as a display image again, for the localiser's enlarged input."""
    return DisplayImage(np.asarray(grey, dtype=np.float32) / np.float32(255.0))


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
        predictor: Predictor,
        finishing: Finishing | None = None,
        owner: str | None = None,
    ) -> None:
        """``owner`` names this process on its claims (``osteoflag.db.processes``)."""
        self._settings = settings
        self._sessions = sessions
        self._predictor = predictor
        self._owner = owner or owner_name("worker")
        self._lease = timedelta(seconds=settings.worker.lease_seconds)
        self._budget = DecodeBudget(settings.worker.decode_budget_mb)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outcomes = Outcomes(sessions, self._owner, finishing or Silent())

    @property
    def running(self) -> bool:
        """True while the worker thread is alive (``/healthz``)."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Ask the worker thread to look at the queue now: after a store, and every sweep."""
        self._wake.set()

    def schedule(self, scheduler: BaseScheduler) -> None:
        """Add the periodic sweep (every ``[worker] sweep_seconds``): the safety net for a
        lost wake-up, and what picks up retries whose ``next_attempt_at`` has come."""
        scheduler.add_job(
            self.wake,
            "interval",
            seconds=self._settings.worker.sweep_seconds,
            id="sweep",
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
        """Claim and process one batch; return how many instances it held.

        Whatever happens to one instance stays with it (:meth:`Outcomes.isolated`), and what
        the batch still holds at its end, its outcome not taken by the database, is handed
        back (:meth:`Outcomes.hand_back`). An error no instance contained leaves the claims to
        their lease, so the attempt counts and ``worker.max_attempts`` stops a poison pill.
        """
        claimed = queue.claim_instances(
            self._sessions, self._owner, self._predictor.batch_size, self._lease
        )
        outcomes = self._outcomes
        outcomes.hold(claimed)
        try:
            ready: list[_Ready] = []
            for instance in claimed:
                with outcomes.isolated(instance):
                    item = self._prepare(instance)
                    if item is not None:
                        ready.append(item)
            if ready:
                self._classify(ready)
        except TransientError:
            outcomes.hand_back()
            raise
        except Exception:
            outcomes.hold(())
            raise
        outcomes.hand_back()
        return len(claimed)

    def _prepare(self, instance: Instance) -> _Ready | None:
        """Read, check the domain, decode; record skip/fail and return None when not usable."""
        started = time.perf_counter()
        try:
            ds = read_instance(Path(instance.file_path), limit=self._budget.max_dataset_bytes)
        except OsteoflagError as exc:
            self._outcomes.refuse(instance, InstanceState.FAILED, str(exc))
            return None
        try:
            _key_on_stored(ds, instance)
            refusal = domain_refusal(ds, self._settings.model)
            if refusal is not None:
                self._outcomes.refuse(instance, InstanceState.SKIPPED, refusal, ds)
                return None
            display = display_from_dataset(ds, self._budget)
            tensor = model_input(display, self._predictor.bundle.input_spec)
        except OsteoflagError as exc:  # a library's message inside may quote a value
            reason = redact(str(exc), ds, COPIED)
            self._outcomes.refuse(instance, InstanceState.FAILED, reason, ds)
            return None
        except Exception as exc:  # an unforeseen error must not block the batch
            detail = redact(str(exc), ds, COPIED)
            reason = f"unexpected {type(exc).__name__} while decoding: {detail}"
            self._outcomes.refuse(instance, InstanceState.FAILED, reason, ds)
            return None
        return _Ready(
            instance, ds, display.grey8(), tensor, (time.perf_counter() - started) * 1000.0
        )

    def _classify(self, ready: list[_Ready]) -> None:
        started = time.perf_counter()
        try:
            displays = (
                [_display(item.grey) for item in ready]
                if self._predictor.localiser is not None
                else None
            )
            predictions = self._predictor.predict_inputs(
                [item.tensor for item in ready], [_size(item.grey) for item in ready], displays
            )
        except Exception as exc:  # onnxruntime and LightGBM raise their own kinds
            for item in ready:
                with self._outcomes.isolated(item.instance, item.source):
                    reason = f"inference failed: {unexpected(exc, item.source)}"
                    self._outcomes.refuse(item.instance, InstanceState.FAILED, reason, item.source)
            return
        model_ms = (time.perf_counter() - started) * 1000.0 / len(ready)
        for item, prediction in zip(ready, predictions, strict=True):
            with self._outcomes.isolated(item.instance, item.source):
                if prediction.outside is not None:
                    self._outcomes.refuse(
                        item.instance, InstanceState.SKIPPED, prediction.outside, item.source
                    )
                    continue
                result = queue.Result(
                    probability=prediction.probability,
                    label=prediction.label.value,
                    threshold=prediction.threshold,
                    model=prediction.model,
                    inference_ms=item.prepare_ms + model_ms,
                    region=prediction.region,
                )
                self._outcomes.store(item.instance, item.source, item.grey, result)

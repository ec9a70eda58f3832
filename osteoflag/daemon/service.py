"""``osteoflag serve``: wire the listener, the queue and the scheduled jobs together.

Lifecycle: load the model bundle, migrate the schema, bind the web and DICOM ports, recover
work a crash left claimed, start the inference worker, the sender thread and the scheduler
(heartbeat, worker sweep, lease recovery, retention), then wait for SIGTERM/SIGINT/SIGHUP.
Shutdown refuses new associations first, lets in-flight ones finish, then stops the
jobs; whatever is not finished stays safely queued for the next start.

A :class:`~osteoflag.daemon.roles.Role` picks the parts one process runs, so listeners,
workers and senders can be spread over machines sharing one PostgreSQL database. Only
the worker loads the model bundle.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from osteoflag.config import Settings
from osteoflag.daemon import retention
from osteoflag.daemon.delivery import SenderLoop
from osteoflag.daemon.results import Reporting
from osteoflag.daemon.roles import Role
from osteoflag.daemon.worker import InferenceWorker
from osteoflag.db import notify, outbound, queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Outbound
from osteoflag.db.processes import HEARTBEAT_SECONDS, Heartbeat, owner_name
from osteoflag.errors import ConfigError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.pacs.derived import ModelIdentity
from osteoflag.pacs.outbound import kinds_taken
from osteoflag.pacs.scp import StorageSCP
from osteoflag.pacs.sender import check_trust, send_pending
from osteoflag.web.app import create_app, create_probe_app
from osteoflag.web.server import WebServer

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Model:
    """The loaded bundle's predictor and identity: only a worker process has one."""

    predictor: Predictor
    identity: ModelIdentity


class Daemon:
    """One osteoflag process: the parts its role runs, sharing one database.

    Built in steps, each returning what the next one needs: the sender loop, the model,
    the worker (which announces its results to that sender), the listener (which wakes that
    worker), the notification subscribers, the web server (which classifies uploads with
    that model).
    """

    def __init__(self, settings: Settings, role: Role = Role.ALL) -> None:
        self.settings = settings
        self.role = role
        self.engine = make_engine(settings.storage.database_url)
        self.sessions = session_factory(self.engine)
        self.stopping = threading.Event()
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.heartbeat = Heartbeat(
            self.sessions, owner_name(role.value), role.value, settings.worker.max_attempts
        )
        self.sender = self._build_sender()
        model = self._load_model()
        self.worker = None if model is None else self._build_worker(model, self.sender)
        self.listener = self._build_listener(self.worker)
        self.subscribers = self._build_subscribers(self.worker, self.sender)
        self.web = self._build_web(model, self.worker)

    def _build_sender(self) -> SenderLoop | None:
        if not self.role.runs(Role.SENDER):
            return None
        check_trust(self.settings)
        return SenderLoop(self._send, self.settings.sender.interval_seconds)

    def _load_model(self) -> Model | None:
        if not self.role.runs(Role.WORKER):
            return None
        bundle = load_bundle(self.settings.model.bundle)
        predictor = Predictor(
            bundle, threads=self.settings.model.threads, batch_size=self.settings.model.batch_size
        )
        return Model(predictor, ModelIdentity.from_bundle(bundle))

    def _build_worker(self, model: Model, sender: SenderLoop | None) -> InferenceWorker:
        """The worker, whose committed results wake ``sender`` and, on PostgreSQL, others."""
        announce: list[Callable[[], None]] = []
        if sender is not None:
            announce.append(sender.wake)
        if notify.supported(self.engine):
            announce.append(notify.notifier(self.engine, notify.OUTBOUND))
        if not kinds_taken(self.settings):
            logger.warning(
                "no destination and shadow mode off: results are recorded and shown on the "
                "operator page, no object is built or sent",
                extra={"action": "start"},
            )
        reporting = Reporting(self.settings, model.identity, announce)
        return InferenceWorker(
            self.settings, self.sessions, model.predictor, reporting, self.heartbeat.owner
        )

    def _build_listener(self, worker: InferenceWorker | None) -> StorageSCP | None:
        """The Storage SCP; after each committed store it wakes ``worker`` and, on
        PostgreSQL, every worker process."""
        if not self.role.runs(Role.LISTENER):
            return None
        hooks: list[Callable[[], None]] = []
        if worker is not None:
            hooks.append(worker.wake)
        if notify.supported(self.engine):
            hooks.append(notify.notifier(self.engine))

        def queued() -> None:
            for hook in hooks:
                hook()

        return StorageSCP(self.settings, self.sessions, on_queued=queued)

    def _build_subscribers(
        self, worker: InferenceWorker | None, sender: SenderLoop | None
    ) -> list[notify.Subscriber]:
        """On PostgreSQL: ``LISTEN`` for stores (worker) and results (sender) of other processes."""
        if not notify.supported(self.engine):
            return []
        subscribers = []
        if worker is not None:
            subscribers.append(notify.Subscriber(self.engine, worker.wake))
        if sender is not None:
            subscribers.append(notify.Subscriber(self.engine, sender.wake, notify.OUTBOUND))
        return subscribers

    def _build_web(self, model: Model | None, worker: InferenceWorker | None) -> WebServer | None:
        """The operator page where the model is loaded (it classifies uploads); elsewhere
        only ``/healthz`` and ``/metrics``."""
        if not self.settings.web.enabled:
            return None
        if model is None or worker is None:
            probes = create_probe_app(self.settings, self.sessions, liveness=self.liveness)
            return WebServer(probes, self.settings.web)
        app = create_app(
            self.settings,
            self.sessions,
            model.predictor,
            liveness=self.liveness,
            wake_worker=worker.wake,
        )
        return WebServer(app, self.settings.web)

    def liveness(self) -> dict[str, bool]:
        """What ``/healthz`` checks besides the database: the parts this process runs."""
        parts: dict[str, bool] = {}
        if self.listener is not None:
            parts["listener"] = self.listener.running
        if self.worker is not None:
            parts["worker"] = self.worker.running
        if self.sender is not None:
            parts["sender"] = self.sender.running
        return parts

    def _send(self, stop: threading.Event) -> bool:
        report = send_pending(self.sessions, self.settings, owner=self.heartbeat.owner, stop=stop)
        return report.sent > 0

    def _retain(self) -> None:
        retention.remove_expired(self.sessions, self.settings.retention)
        retention.remove_orphans(self.sessions, self.settings.incoming_path)
        retention.remove_unrecorded(self.sessions, self.settings.outgoing_path)

    def _recover(self) -> None:
        recovered = queue.recover_expired(self.sessions, self.settings.worker.max_attempts)
        if recovered and self.worker is not None:
            self.worker.wake()

    def _recover_at_start(self) -> None:
        """Take back what a crash left claimed, without stealing live claims.

        Only the all-in-one process on SQLite can be sure no other process is alive, so
        only it re-queues every ``processing`` row and releases every outbound claim. Any
        other process releases the claims of processes whose heartbeat has stopped (its own
        predecessor's, after a crash), and a worker re-queues expired leases.
        """
        if self.role is Role.ALL and self.engine.dialect.name == "sqlite":
            queue.recover_all(self.sessions, self.settings.worker.max_attempts)
            outbound.release_claims(self.sessions, Outbound.lease_owner.is_not(None))
        elif self.worker is not None:
            queue.recover_expired(self.sessions, self.settings.worker.max_attempts)
        self.heartbeat.beat()

    def start(self) -> None:
        """Prepare storage and schema, bind the ports, recover a crash's leftovers, serve.

        The ports come first: a second ``serve`` started by mistake beside a running one
        fails on them before its recovery can take the running daemon's claims. A part that
        cannot start stops the parts already started, so the error ends the process with its
        one line instead of leaving threads behind.
        """
        self._refuse_split_roles_on_sqlite()
        self._prepare_storage()
        migrate(self.engine)
        jobs = [(self.heartbeat.beat, HEARTBEAT_SECONDS, "heartbeat")]
        if self.worker is not None:
            self.worker.schedule(self.scheduler)
            jobs.append((self._recover, self.settings.worker.lease_seconds / 4, "recover"))
        if self.sender is not None and self.settings.retention.enabled:
            jobs.append((self._retain, self.settings.retention.interval_seconds, "retention"))
        for job, seconds, name in jobs:
            self.scheduler.add_job(
                job, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True
            )
        started: list[Callable[[], None]] = []
        try:
            if self.web is not None:  # first: a port clash must fail before anything runs
                self.web.start()
                started.append(self.web.stop)
            if self.listener is not None:  # stores only queue until the worker starts
                started.append(partial(self.listener.stop, SHUTDOWN_GRACE_SECONDS))
                self.listener.start()
            self._recover_at_start()
            for part in (self.worker, self.sender, *self.subscribers):
                if part is not None:
                    part.start()
                    started.append(partial(part.stop, SHUTDOWN_GRACE_SECONDS))
            self.scheduler.start()
            started.append(partial(self.scheduler.shutdown, wait=True))
        except BaseException:
            for stop in reversed(started):
                stop()
            raise
        logger.info("daemon started", extra={"action": "start", "role": self.role.value})

    def _refuse_split_roles_on_sqlite(self) -> None:
        """Roles are separate processes joined by the queue: on SQLite none would wake the
        others (no NOTIFY), and an all-in-one process starting beside them would re-queue
        their live claims, since on SQLite it takes itself to be the only process."""
        if self.role is not Role.ALL and self.engine.dialect.name == "sqlite":
            raise ConfigError(
                f"serve --role {self.role.value}: storage.database_url is SQLite, which serves "
                "one process only (--role all); split roles need a shared PostgreSQL database"
            )

    def _prepare_storage(self) -> None:
        """Create the storage folders; one that cannot be created or written is a config error."""
        storage = self.settings.storage.path
        for folder in (storage, self.settings.incoming_path, self.settings.outgoing_path):
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"storage.path: cannot create {folder}: {exc.strerror}") from exc
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError(f"storage.path: {folder} is not writable")

    def stop(self) -> None:
        """Graceful stop: no new associations, in-flight ones finished, jobs drained."""
        if self.listener is not None:
            self.listener.stop(SHUTDOWN_GRACE_SECONDS)
        for subscriber in self.subscribers:
            subscriber.stop(SHUTDOWN_GRACE_SECONDS)
        if self.worker is not None:
            self.worker.stop(SHUTDOWN_GRACE_SECONDS)
        if self.sender is not None:
            self.sender.stop(SHUTDOWN_GRACE_SECONDS)
        self.scheduler.shutdown(wait=True)
        if self.web is not None:
            self.web.stop()
        self.heartbeat.stop()
        self.engine.dispose()
        logger.info("daemon stopped", extra={"action": "stop"})

    def run(self) -> int:
        """Serve until SIGTERM, SIGINT or SIGHUP; return the exit status. SIGHUP (the terminal
        of a foreground ``serve`` closed) would otherwise end the process at once, leaving its
        claims to the next start's recovery."""

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("stop requested", extra={"action": "signal", "signal": signum})
            self.stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGHUP, request_stop)
        self.start()
        try:
            while not self.stopping.wait(timeout=3600):
                pass
        finally:
            self.stop()
        return 0

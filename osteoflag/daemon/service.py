"""``osteoflag serve``: wire the listener, the queue and the scheduled jobs together.

Lifecycle: load the model bundle, migrate the schema, recover work a crash left
``processing``, start the inference worker, the sender thread, the scheduler (worker
sweep, lease recovery, retention) and the Storage SCP, then wait for SIGTERM/SIGINT.
Shutdown refuses new associations first, lets in-flight ones finish, then stops the
jobs; whatever is not finished stays safely queued for the next start.

A :class:`~osteoflag.daemon.roles.Role` picks the parts one process runs, so listeners,
workers and senders can be spread over machines sharing one PostgreSQL database. Only
the worker loads the model bundle.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from osteoflag.config import Settings
from osteoflag.daemon import retention
from osteoflag.daemon.delivery import SenderLoop, announcing
from osteoflag.daemon.results import outbound_hook, refused_hook
from osteoflag.daemon.roles import Role
from osteoflag.db import notify, queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.inference.worker import InferenceWorker, OnDone
from osteoflag.pacs.derived import ModelIdentity
from osteoflag.pacs.scp import StorageSCP
from osteoflag.pacs.sender import send_pending
from osteoflag.web.app import create_app, create_probe_app
from osteoflag.web.server import WebServer

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 30.0


class Daemon:
    """One osteoflag process: the parts its role runs, sharing one database."""

    def __init__(self, settings: Settings, role: Role = Role.ALL) -> None:
        self.settings = settings
        self.role = role
        self.engine = make_engine(settings.storage.database_url)
        self.sessions = session_factory(self.engine)
        self.stopping = threading.Event()
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.predictor: Predictor | None = None
        self.worker = self._build_worker() if role.runs(Role.WORKER) else None
        self.listener: StorageSCP | None = None
        if role.runs(Role.LISTENER):
            self.listener = StorageSCP(settings, self.sessions, on_queued=self._queued_hook())
        self.subscriber: notify.Subscriber | None = None
        if self.worker is not None and notify.supported(self.engine):
            self.subscriber = notify.Subscriber(self.engine, self.worker.wake)
        self.sender: SenderLoop | None = None
        self.outbound_subscriber: notify.Subscriber | None = None
        if role.runs(Role.SENDER):
            self.sender = SenderLoop(self._send, settings.sender.interval_seconds)
            if notify.supported(self.engine):
                self.outbound_subscriber = notify.Subscriber(
                    self.engine, self.sender.wake, notify.OUTBOUND
                )
        self.web = self._build_web()

    def _build_web(self) -> WebServer | None:
        """The operator page where the model is loaded (it classifies uploads); elsewhere
        only ``/healthz`` and ``/metrics``."""
        if not self.settings.web.enabled:
            return None
        if self.predictor is None or self.worker is None:
            probes = create_probe_app(self.settings, self.sessions, liveness=self.liveness)
            return WebServer(probes, self.settings.web)
        app = create_app(
            self.settings,
            self.sessions,
            self.predictor,
            liveness=self.liveness,
            wake_worker=self.worker.wake,
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

    def _queued_hook(self) -> Callable[[], None]:
        """After each committed store: wake our worker, and on PostgreSQL everyone's."""
        local = self.worker.wake if self.worker is not None else None
        remote = notify.notifier(self.engine) if notify.supported(self.engine) else None
        hooks = [hook for hook in (local, remote) if hook is not None]

        def queued() -> None:
            for hook in hooks:
                hook()

        return queued

    def _build_worker(self) -> InferenceWorker:
        bundle = load_bundle(self.settings.model.bundle)
        self.predictor = Predictor(
            bundle, threads=self.settings.model.threads, batch_size=self.settings.model.batch_size
        )
        identity = ModelIdentity.from_bundle(bundle)
        return InferenceWorker(
            self.settings,
            self.sessions,
            predictor=self.predictor,
            on_done=self._announcing(outbound_hook(self.settings, identity)),
            on_refused=refused_hook(self.settings, identity),
        )

    def _announcing(self, hook: OnDone) -> OnDone:
        """``hook``, then once its transaction commits: wake the sender(s) for the new objects."""
        calls: list[Callable[[], None]] = []
        if self.role.runs(Role.SENDER):
            calls.append(lambda: self.sender.wake() if self.sender is not None else None)
        if notify.supported(self.engine):
            calls.append(notify.notifier(self.engine, notify.OUTBOUND))
        return announcing(hook, calls)

    def _send(self) -> bool:
        return send_pending(self.sessions, self.settings).sent > 0

    def _retain(self) -> None:
        retention.remove_expired(self.sessions, self.settings.retention)

    def _recover(self) -> None:
        recovered = queue.recover_expired(self.sessions, self.settings.worker.max_attempts)
        if recovered and self.worker is not None:
            self.worker.wake()

    def _recover_at_start(self) -> None:
        """Take back what a crash left ``processing``, without stealing live leases.

        Only the all-in-one process on SQLite can be sure no other worker is alive, so only
        it re-queues every ``processing`` row; any other worker re-queues expired leases.
        """
        if self.worker is None:
            return
        if self.role is Role.ALL and self.engine.dialect.name == "sqlite":
            queue.recover_all(self.sessions, self.settings.worker.max_attempts)
        else:
            queue.recover_expired(self.sessions, self.settings.worker.max_attempts)

    def start(self) -> None:
        """Prepare storage and schema, recover a crash's leftovers, start serving."""
        storage = self.settings.storage.path
        for folder in (storage, self.settings.incoming_path, self.settings.outgoing_path):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        migrate(self.engine)
        self._recover_at_start()
        jobs = []
        if self.worker is not None:
            jobs.append((self._recover, self.settings.worker.lease_seconds / 4, "recover"))
            jobs.append((self.worker.sweep, self.settings.worker.sweep_seconds, "sweep"))
        if self.role.runs(Role.SENDER) and self.settings.retention.enabled:
            jobs.append((self._retain, self.settings.retention.interval_seconds, "retention"))
        for job, seconds, name in jobs:
            self.scheduler.add_job(
                job, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True
            )
        if self.web is not None:  # first: a port clash must fail before anything runs
            self.web.start()
        if self.worker is not None:
            self.worker.start()
        if self.subscriber is not None:
            self.subscriber.start()
        for loop in (self.sender, self.outbound_subscriber):
            if loop is not None:
                loop.start()
        self.scheduler.start()
        if self.listener is not None:
            self.listener.start()
        logger.info("daemon started", extra={"action": "start", "role": self.role.value})

    def stop(self) -> None:
        """Graceful stop: no new associations, in-flight ones finished, jobs drained."""
        if self.listener is not None:
            self.listener.stop(SHUTDOWN_GRACE_SECONDS)
        if self.subscriber is not None:
            self.subscriber.stop(SHUTDOWN_GRACE_SECONDS)
        if self.worker is not None:
            self.worker.stop(SHUTDOWN_GRACE_SECONDS)
        for loop in (self.outbound_subscriber, self.sender):
            if loop is not None:
                loop.stop(SHUTDOWN_GRACE_SECONDS)
        self.scheduler.shutdown(wait=True)
        if self.web is not None:
            self.web.stop()
        self.engine.dispose()
        logger.info("daemon stopped", extra={"action": "stop"})

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; return the exit status."""

        def request_stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("stop requested", extra={"action": "signal", "signal": signum})
            self.stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        self.start()
        try:
            while not self.stopping.wait(timeout=3600):
                pass
        finally:
            self.stop()
        return 0

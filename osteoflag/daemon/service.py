"""``osteoflag serve``: wire the listener, the queue and the scheduled jobs together.

Lifecycle: load the model bundle, migrate the schema, recover work a crash left
``processing``, start the inference worker, the scheduler (worker sweep, sender, lease
recovery) and the Storage SCP, then wait for SIGTERM/SIGINT. Shutdown refuses new
associations first, lets in-flight ones finish, then stops the jobs; whatever is
not finished stays safely queued for the next start.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from osteoflag.config import Settings
from osteoflag.daemon import retention
from osteoflag.daemon.results import outbound_hook, refused_hook
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.inference.worker import InferenceWorker
from osteoflag.pacs.derived import ModelIdentity
from osteoflag.pacs.scp import StorageSCP
from osteoflag.pacs.sender import send_pending
from osteoflag.web.app import create_app
from osteoflag.web.server import WebServer

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 30.0


class Daemon:
    """One osteoflag process: listener plus scheduled jobs, sharing one database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.storage.database_url)
        self.sessions = session_factory(self.engine)
        self.stopping = threading.Event()
        self.scheduler = BackgroundScheduler(timezone="UTC")
        bundle = load_bundle(settings.model.bundle)
        predictor = Predictor(
            bundle, threads=settings.model.threads, batch_size=settings.model.batch_size
        )
        identity = ModelIdentity.from_bundle(bundle)
        self.worker = InferenceWorker(
            settings,
            self.sessions,
            predictor=predictor,
            on_done=outbound_hook(settings, identity),
            on_refused=refused_hook(settings, identity),
        )
        self.listener = StorageSCP(settings, self.sessions, on_queued=self.worker.wake)
        self.web = (
            WebServer(
                create_app(
                    settings,
                    self.sessions,
                    predictor,
                    liveness=self.liveness,
                    wake_worker=self.worker.wake,
                ),
                settings.web,
            )
            if settings.web.enabled
            else None
        )

    def liveness(self) -> dict[str, bool]:
        """What ``/healthz`` checks besides the database."""
        return {"listener": self.listener.running, "worker": self.worker.running}

    def _send(self) -> None:
        send_pending(self.sessions, self.settings)

    def _retain(self) -> None:
        retention.remove_expired(self.sessions, self.settings.retention)

    def _schedule_retention(self) -> None:
        """Add the retention job (it first runs once the scheduler starts)."""
        if self.settings.retention.enabled:
            self.scheduler.add_job(
                self._retain,
                "interval",
                seconds=self.settings.retention.interval_seconds,
                id="retention",
                max_instances=1,
                coalesce=True,
            )

    def _recover(self) -> None:
        queue.recover_expired(self.sessions, self.settings.worker.max_attempts)

    def start(self) -> None:
        """Prepare storage and schema, recover a crash's leftovers, start serving."""
        storage = self.settings.storage.path
        for folder in (storage, self.settings.incoming_path, self.settings.outgoing_path):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._schedule_retention()
        migrate(self.engine)
        queue.recover_all(self.sessions, self.settings.worker.max_attempts)
        jobs = (
            (self._recover, self.settings.worker.lease_seconds / 4, "recover"),
            (self.worker.sweep, self.settings.worker.sweep_seconds, "sweep"),
            (self._send, self.settings.sender.interval_seconds, "send"),
        )
        for job, seconds, name in jobs:
            self.scheduler.add_job(
                job, "interval", seconds=seconds, id=name, max_instances=1, coalesce=True
            )
        if self.web is not None:  # first: a port clash must fail before anything runs
            self.web.start()
        self.worker.start()
        self.scheduler.start()
        self.listener.start()
        logger.info("daemon started", extra={"action": "start"})

    def stop(self) -> None:
        """Graceful stop: no new associations, in-flight ones finished, jobs drained."""
        if self.web is not None:
            self.web.stop()
        self.listener.stop(SHUTDOWN_GRACE_SECONDS)
        self.worker.stop(SHUTDOWN_GRACE_SECONDS)
        self.scheduler.shutdown(wait=True)
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

"""Crash-safety load run: PACS-like senders, a daemon killed with SIGKILL, a recording PACS.

Four Storage SCUs (one thread each) send their share of synthetic radiographs in
study-sized associations and, like a PACS, resend whatever was not acknowledged
(aborted association, no response, failure status) until everything is. Meanwhile the
daemon (``osteoflag serve`` subprocess) is killed with SIGKILL at seeded random moments
of the run's progress and restarted at once. The destination is a real pynetdicom
Storage SCP in the test process that records every C-STORE it gets, duplicates included.

:func:`run_load` returns the figures and the raw material (database rows, received UIDs)
the tests check: every acknowledged instance finished, none classified twice, exactly
one SR UID per source (resent copies of the same UID are duplicates, never new results).
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt

from osteoflag.inference.bundle import load_bundle
from osteoflag.pacs.derived import Kind, ModelIdentity, instance_uid
from testkit.daemon import DaemonProcess, base_sections, write_config
from testkit.wait import wait_for
from tests.helpers.dicom import MODALITIES, radiograph

SENDERS = 4
STUDY_SIZE = 20
FINAL_STATES = {"done", "skipped", "failed"}
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
# Start-up (imports, bundle, migration) can take minutes on a loaded 2-core machine.
RESTART_SECONDS = 300.0


@dataclass
class Acknowledged:
    """What the senders have had acknowledged, shared between their threads."""

    uids: set[str] = field(default_factory=set)
    store_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, uid: str | None) -> None:
        with self.lock:
            self.store_requests += 1
            if uid is not None:
                self.uids.add(uid)

    def __len__(self) -> int:
        with self.lock:
            return len(self.uids)


@dataclass(frozen=True)
class LoadFigures:
    """The figures a load run reports."""

    sent: int
    store_requests: int
    acknowledged: int
    kills: int
    delivered: int
    duplicates: int
    lost: int
    unexpected: int
    second_results: int
    states: dict[str, int]
    peak_rss_mb: float
    seconds: float

    def lines(self) -> str:
        return "\n".join(f"{name}: {value}" for name, value in vars(self).items())


@dataclass(frozen=True)
class LoadRun:
    """Figures plus what they were computed from."""

    figures: LoadFigures
    instances: dict[str, tuple[str, str | None]]  # SOP Instance UID -> (state, error)
    classified_events: Counter[str]  # SOP Instance UID -> count of "done" events
    received: Counter[str]  # UID at the destination -> C-STORE requests
    results_per_source: Counter[str]  # source UID -> distinct SR UIDs reporting on it
    expected_sr: dict[str, str]  # source SOP Instance UID -> its SR SOP Instance UID
    daemon: DaemonProcess
    storage: Path


class ResultsPACS:
    """The destination: a real Storage SCP recording every C-STORE, duplicates included.

    For each SR it also decodes which source instance the report is about (its
    Current Requested Procedure Evidence), so "one result per source" is checked
    from what arrived, independently of how osteoflag derives its UIDs.
    """

    def __init__(self) -> None:
        self.received: list[str] = []
        self.sources: dict[str, set[str]] = defaultdict(set)  # SR UID -> sources it reports on
        self._lock = threading.Lock()
        self.ae = AE(ae_title="PACS")
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        references: set[str] = set()
        if str(event.request.AffectedSOPClassUID).startswith(SR_CLASS_PREFIX):
            for study in event.dataset.get("CurrentRequestedProcedureEvidenceSequence", []):
                for series in study.get("ReferencedSeriesSequence", []):
                    for item in series.get("ReferencedSOPSequence", []):
                        references.add(str(item.ReferencedSOPInstanceUID))
        with self._lock:
            self.received.append(uid)
            self.sources[uid] |= references
        return 0x0000

    def delivered_srs(self) -> set[str]:
        with self._lock:
            return {uid for uid, sources in self.sources.items() if sources}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sender(
    port: int, calling_ae: str, datasets: list[Dataset], acked: Acknowledged, deadline: float
) -> None:
    """One PACS-like SCU: study-sized associations, resend until all acknowledged."""
    ae = AE(ae_title=calling_ae)
    for sop_class in MODALITIES.values():
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.connection_timeout = 2
    waiting = list(datasets)
    while waiting and time.monotonic() < deadline:
        assoc = ae.associate("127.0.0.1", port, ae_title="OSTEOFLAG")
        if not assoc.is_established:
            time.sleep(0.2)  # a PACS's retry interval, not synchronisation
            continue
        for dataset in waiting[:STUDY_SIZE]:
            try:
                response = assoc.send_c_store(dataset)
            except (RuntimeError, ValueError):
                break
            ok = int(response.get("Status", -1)) == 0x0000
            acked.add(str(dataset.SOPInstanceUID) if ok else None)
            if not assoc.is_established:
                break
        if assoc.is_established:
            assoc.release()
        with acked.lock:
            waiting = [ds for ds in waiting if str(ds.SOPInstanceUID) not in acked.uids]


def _peak_rss_kb(pid: int) -> int:
    """VmHWM: the process's peak resident set size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _query(database: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as db:
        return list(db.execute(sql))


def _settled(database: Path) -> bool:
    busy = _query(
        database,
        "SELECT (SELECT count(*) FROM instances WHERE state IN ('queued', 'processing'))"
        " + (SELECT count(*) FROM outbound WHERE state = 'pending')",
    )
    return int(busy[0][0]) == 0


def run_load(folder: Path, bundle: Path, count: int, kills: int, seed: int) -> LoadRun:
    """Send ``count`` instances while killing the daemon ``kills`` times; collect the figures."""
    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pacs = ResultsPACS()
    sections = base_sections(folder, bundle)
    sections["worker"].update({"sweep_seconds": 0.5, "max_attempts": 2 + kills})
    # Objects a killed sender had claimed wait out its claim lease (run_seconds + 3 x
    # timeout_seconds) before they are retried: keep both short so the run stays short.
    sections["sender"] = {
        "interval_seconds": 0.5,
        "batch_size": 50,
        "run_seconds": 5.0,
        "timeout_seconds": 3.0,
        "backoff_base_seconds": 0.5,
        "backoff_cap_seconds": 2.0,
    }
    sections["destinations"] = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
    daemon = DaemonProcess(write_config(folder, sections), sections["listener"]["port"])
    database = folder / "var" / "osteoflag.db"
    modalities = list(MODALITIES)
    datasets = [radiograph(modalities[i % 3], seed=seed * 100_000 + i) for i in range(count)]
    version = ModelIdentity.from_bundle(load_bundle(bundle)).version
    expected_sr = {
        str(ds.SOPInstanceUID): str(instance_uid(str(ds.SOPInstanceUID), version, Kind.SR))
        for ds in datasets
    }
    sr_uids = set(expected_sr.values())
    summary_uids = {
        str(instance_uid(str(ds.SOPInstanceUID), version, Kind.SUMMARY)) for ds in datasets
    }
    acked = Acknowledged()
    peak_kb = 0
    try:
        daemon.start(timeout=RESTART_SECONDS)
        deadline = time.monotonic() + 120 + count * 6.0
        senders = [
            threading.Thread(
                target=_sender,
                args=(daemon.port, f"PACS{n}", datasets[n::SENDERS], acked, deadline),
                name=f"load-scu-{n}",
            )
            for n in range(SENDERS)
        ]
        for thread in senders:
            thread.start()

        def progress() -> int:
            # Receipt and delivery both count, so kills land in either phase.
            return len(acked) + len(pacs.delivered_srs())

        # One kill per equal slice of the run, at a seeded random point within it.
        span = 0.85 * 2 * count / max(kills, 1)
        for k in range(kills):
            threshold = (0.05 * 2 * count) + span * (k + rng.random())
            wait_for(lambda t=threshold: progress() >= t, timeout=deadline - time.monotonic())
            assert daemon.process is not None
            peak_kb = max(peak_kb, _peak_rss_kb(daemon.process.pid))
            daemon.kill()
            daemon.start(timeout=RESTART_SECONDS)
        for thread in senders:
            thread.join(max(0.0, deadline - time.monotonic()))
        wait_for(lambda: _settled(database), timeout=max(1.0, deadline - time.monotonic()))
        assert daemon.process is not None
        peak_kb = max(peak_kb, _peak_rss_kb(daemon.process.pid))
        assert daemon.terminate() == 0, "graceful stop after the load"
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)
        pacs.stop()

    instances = {
        uid: (state, error)
        for uid, state, error in _query(
            database, "SELECT sop_instance_uid, state, error FROM instances"
        )
    }
    classified = Counter(
        uid
        for (uid,) in _query(
            database,
            "SELECT i.sop_instance_uid FROM events e JOIN instances i ON i.id = e.instance_id"
            " WHERE e.action = 'done'",
        )
    )
    received = Counter(pacs.received)
    done = {uid for uid, (state, _) in instances.items() if state == "done"}
    lost = {
        uid for uid in acked.uids if instances.get(uid, ("missing", None))[0] not in FINAL_STATES
    }
    results = Counter(source for sources in pacs.sources.values() for source in sources)
    lost |= {uid for uid in done if received[expected_sr[uid]] == 0 or results[uid] == 0}
    figures = LoadFigures(
        sent=count,
        store_requests=acked.store_requests,
        acknowledged=len(acked.uids),
        kills=kills,
        delivered=len(sr_uids.intersection(received)),
        duplicates=sum(n - 1 for n in received.values() if n > 1),
        lost=len(lost),
        unexpected=len(set(received) - sr_uids - summary_uids),
        second_results=sum(n - 1 for n in results.values() if n > 1),
        states=dict(Counter(state for state, _ in instances.values())),
        peak_rss_mb=round(peak_kb / 1024, 1),
        seconds=round(time.monotonic() - started, 1),
    )
    return LoadRun(
        figures=figures,
        instances=instances,
        classified_events=classified,
        received=received,
        results_per_source=results,
        expected_sr=expected_sr,
        daemon=daemon,
        storage=folder / "var",
    )

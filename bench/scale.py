"""``make bench``: worker processes on PostgreSQL, float32 vs INT8, and end-to-end latency.

0. Throughput of the predictor alone, float32 vs INT8 (:mod:`bench.precision`): the INT8
   speed-up the README reports.
1. Throughput of 1, 2 and 3 ``osteoflag serve --role worker`` processes sharing one private
   PostgreSQL server, with the float32 bundle and its INT8 version: N instances (2048x1664
   12-bit DX files) are queued at once and timed from the commit to the last result,
   each result including decode, inference and the SR + summary objects.
2. End-to-end latency of one ``serve`` (the single-machine default, SQLite) at steady loads
   of a third and a half of one worker process's throughput: from each C-STORE
   acknowledgement to the moment a pynetdicom Storage SCP, as destination, has received and
   acknowledged that image's SR; and the C-STORE round trip itself, as the PACS sees it.

The bundle is ``models/default`` (its INT8 copy quantised afresh, calibrated on
``/work/shared/data/osteoai/train`` when present), else a generated random-weight VGG16 of the
same compute, with a notice.
Run with ``python -m bench.scale`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime as ort
from pydicom import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import func, select

from bench import precision
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.db.models import Instance
from osteoflag.errors import BundleError
from osteoflag.inference.bundle import Bundle, load_bundle, write_manifest
from osteoflag.inference.pixels import FloatArray, display_from_dataset, model_input
from osteoflag.inference.quantize import CALIBRATION_IMAGES, calibration_inputs, int8_copy
from osteoflag.pacs.scu import Peer, send_c_store
from testkit.daemon import DaemonProcess, write_config
from testkit.inference_data import dataset, radiograph, save
from testkit.net import free_port
from testkit.postgres import PostgresServer
from testkit.tiny_bundle import CAFFE_MEAN, backbone
from testkit.wait import wait_for

DEFAULT_BUNDLE = Path("models/default")
TRAINING_IMAGES = Path("/work/shared/data/osteoai/train")
CACHE = Path("artifacts/bench")
DX = "1.2.840.10008.5.1.4.1.1.1.1"


def generated_vgg16(folder: Path) -> Path:
    """VGG16 convolutions with random weights at 224x224, LightGBM on a few of its features."""
    if (folder / "manifest.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(backbone("vgg16"), folder / "backbone.onnx")
    session = ort.InferenceSession(
        str(folder / "backbone.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (12, 3, 224, 224)).astype(np.float32)
    images -= np.asarray(CAFFE_MEAN, np.float32).reshape(1, 3, 1, 1)
    features = session.run(["features"], {"image": images})[0]
    labels = np.arange(len(features)) % 2
    params = {"objective": "binary", "num_leaves": 4, "min_data_in_leaf": 1, "verbose": -1}
    lgb.train(params, lgb.Dataset(features, labels), num_boost_round=5).save_model(
        str(folder / "classifier.txt")
    )
    (folder / "MODEL_CARD.md").write_text("# bench\n\nRandom weights, for timing only.\n")
    write_manifest(
        folder,
        name="bench-vgg16",
        version="0.0.0",
        created=datetime.now(UTC).isoformat(),
        training_data={"source": "none"},
        input={"size": [224, 224], "resize_mode": "letterbox", "colour_order": "BGR",
               "mean": list(CAFFE_MEAN), "std": [1.0, 1.0, 1.0], "scale": 255.0},
        backbone={"file": "backbone.onnx", "architecture": "vgg16", "init": "random"},
        features={"count": int(features.shape[1]), "layout": "global average pool"},
        classifier={"file": "classifier.txt", "kind": "lightgbm"},
        threshold={"value": 0.5, "method": "fixed"},
        metrics={},
    )  # fmt: skip
    return folder


def bundles(work: Path) -> tuple[Bundle, Bundle, list[FloatArray]]:
    """(float32, int8) bundles and the calibration inputs (real training images when present),
    which also feed the timings. The INT8 copy is made afresh under ``work`` on every run
    (12 s): a cached one outlived changes to the quantiser and timed an older recipe."""
    try:
        float32 = load_bundle(DEFAULT_BUNDLE)
    except BundleError as exc:
        print(f"NOTICE: {exc}")
        print("NOTICE: timing a generated random-weight VGG16 bundle (224x224) instead.\n")
        float32 = load_bundle(generated_vgg16(CACHE / "vgg16"))
    spec = float32.input_spec
    if TRAINING_IMAGES.is_dir() and float32.path == DEFAULT_BUNDLE:
        calibration = calibration_inputs(TRAINING_IMAGES, spec, CALIBRATION_IMAGES)
    else:
        calibration = [
            model_input(display_from_dataset(dataset(radiograph(512, 416, seed=i))), spec)
            for i in range(16)
        ]
    int8_copy(float32, work / "int8", calibration)  # no AUC gate here: timing only
    return float32, load_bundle(work / "int8"), calibration


def _sections(work: Path, url: str, bundle: Path, threads: int, port: int) -> dict[str, Any]:
    return {
        "listener": {"port": port},
        "storage": {"path": str(work / "var"), "database_url": url, "min_free_mb": 1},
        "model": {"bundle": str(bundle.resolve()), "threads": threads, "batch_size": 4},
        "worker": {"sweep_seconds": 0.2, "lease_seconds": 600.0},
    }


def worker_throughput(
    server: PostgresServer, bundle: Bundle, processes: int, files: list[Path], count: int
) -> float:
    """Images/s of ``processes`` worker processes draining ``count`` queued instances."""
    url = server.database()
    engine = make_engine(url)
    migrate(engine)
    sessions = session_factory(engine)
    threads = max(1, (os.cpu_count() or 1) // processes)
    with tempfile.TemporaryDirectory(prefix="osteoflag-bench-") as folder:
        work = Path(folder)
        daemons = []
        for index in range(processes):
            (work / f"w{index}").mkdir()
            sections = _sections(work, url, bundle.path, threads, free_port())
            # Taken by a destination, the SR and summary are built; a worker never sends.
            sections["destinations"] = [{"ae_title": "PACS", "host": "127.0.0.1", "port": 104}]
            config = write_config(work / f"w{index}", sections)
            daemons.append(DaemonProcess(config, sections["listener"]["port"], role="worker"))
        try:
            for daemon in daemons:
                daemon.start(timeout=300)
            with sessions() as session:
                for index in range(count):
                    session.add(
                        Instance(
                            sop_instance_uid=generate_uid(), sop_class_uid=DX,
                            transfer_syntax_uid="1.2.840.10008.1.2.1", calling_ae="BENCH",
                            peer_address="127.0.0.1", file_path=str(files[index % len(files)]),
                        )
                    )  # fmt: skip
                session.commit()
            queued = datetime.now(UTC)
            wait_for(lambda: queue.counts(sessions)["instances"]["done"] == count, timeout=900)
        finally:
            for daemon in daemons:
                daemon.terminate()
        with sessions() as session:
            last = session.scalar(select(func.max(Instance.finished_at)))
    engine.dispose()
    assert last is not None
    return float(count / (last - queued).total_seconds())


class Destination:
    """A Storage SCP that notes when each study's SR arrived (monotonic clock)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.ae = AE(ae_title="PACS")
        self.ae.supported_contexts = AllStoragePresentationContexts
        server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None
        self.server = server
        self.port = int(server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds: Dataset = event.dataset
        if ds.Modality == "SR":
            self.arrived[str(ds.StudyInstanceUID)] = time.monotonic()
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@dataclass(frozen=True)
class Latencies:
    """Per image, in seconds: the C-STORE round trip, and C-STORE ack to SR ack."""

    store: list[float]
    result: list[float]


def end_to_end(bundle: Bundle, rate: float, count: int) -> Latencies:
    """``count`` images sent at ``rate``/s to one ``serve``; see :class:`Latencies`."""
    destination = Destination()
    with tempfile.TemporaryDirectory(prefix="osteoflag-bench-") as folder:
        work = Path(folder)
        port = free_port()
        sections = _sections(work, f"sqlite:///{work / 'q.db'}", bundle.path, 0, port)
        sections["destinations"] = [
            {"ae_title": "PACS", "host": "127.0.0.1", "port": destination.port}
        ]
        daemon = DaemonProcess(write_config(work, sections), port)
        acknowledged: dict[str, float] = {}
        round_trips: list[float] = []
        studies = []
        for index in range(count):  # one study each: the SR says which image it is about
            ds = dataset(radiograph(2048, 1664, seed=index % 4), bits_stored=12)
            ds.StudyInstanceUID = generate_uid()
            studies.append((str(ds.StudyInstanceUID), save(ds, work / f"{index}.dcm")))
        try:
            daemon.start(timeout=300)
            start = time.monotonic()
            for index, (study, path) in enumerate(studies):
                time.sleep(max(0.0, start + index / rate - time.monotonic()))  # the load's pace
                sent = time.monotonic()
                [outcome] = send_c_store([path], Peer("127.0.0.1", port, "OSTEOFLAG"), "BENCH")
                acknowledged[study] = time.monotonic()
                round_trips.append(acknowledged[study] - sent)
                assert outcome.ok, outcome.error
            wait_for(lambda: len(destination.arrived) == count, timeout=600)
        finally:
            daemon.terminate()
            destination.stop()
    return Latencies(
        store=round_trips,
        result=[destination.arrived[study] - acknowledged[study] for study in acknowledged],
    )


def _p50_p95(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.2f} s  p95 {float(np.percentile(values, 95)):.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=96, help="instances per throughput run")
    parser.add_argument("--latency-count", type=int, default=40, help="images for latency")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load > cores:
        print(f"NOTICE: load average {load:.1f} on {cores} cores: figures below are noisy.\n")
    with tempfile.TemporaryDirectory(prefix="osteoflag-bench-") as folder:
        float32, int8, inputs = bundles(Path(folder))
        print(f"bundle     {float32.model_id} / {int8.model_id}  cores {cores}")
        precision.print_rates(float32, int8, inputs)
        files = [
            save(dataset(radiograph(2048, 1664, seed=i), bits_stored=12), Path(folder) / f"{i}.dcm")
            for i in range(4)
        ]
        results: dict[tuple[str, int], float] = {}
        with PostgresServer() as server:
            print("\nworker processes on PostgreSQL (decode 2048x1664 DX, infer, SR + summary):")
            print(f"  {'processes':>9} {'float32 img/s':>14} {'int8 img/s':>11} {'int8/fp32':>9}")
            for processes in (1, 2, 3):
                for name, bundle in (("float32", float32), ("int8", int8)):
                    results[name, processes] = worker_throughput(
                        server, bundle, processes, files, args.count
                    )
                ratio = results["int8", processes] / results["float32", processes]
                print(
                    f"  {processes:>9} {results['float32', processes]:>14.2f} "
                    f"{results['int8', processes]:>11.2f} {ratio:>8.2f}x"
                )
        print(
            "\nend to end, one `serve` on SQLite (default sender settings), pynetdicom destination:"
        )
        for name, bundle in (("float32", float32), ("int8", int8)):
            for share, share_name in ((1 / 3, "a third"), (1 / 2, "half")):
                rate = results[name, 1] * share
                latencies = end_to_end(bundle, rate, args.latency_count)
                print(
                    f"  {name:>7} at {rate:.2f} img/s ({share_name} of 1 worker process), "
                    f"n={len(latencies.result)}:\n"
                    f"          C-STORE ack -> SR ack {_p50_p95(latencies.result)};  "
                    f"C-STORE round trip {_p50_p95(latencies.store)}"
                )
    print(f"\ntook {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

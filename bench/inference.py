"""``make bench``: inference latency and throughput against the hardware floor.

Prints, for the default bundle (``models/default``; a generated random-weight VGG16 bundle
of the same compute when it is absent, with a notice), single-image latency p50/p95 and
batch throughput of the predictor alone and of the whole worker path (read + decode +
resize + predict + record in SQLite), next to the floor: backbone FLOPs (Conv/MatMul/Gemm
MACs x 2, from the ONNX graph) divided by the measured peak of a large float32 matrix
product on the same cores. Run with ``python -m bench.inference`` from the repository root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from osteoflag.config import parse_settings
from osteoflag.daemon.worker import InferenceWorker
from osteoflag.db import queue
from osteoflag.db.engine import make_engine, migrate, session_factory
from osteoflag.errors import BundleError
from osteoflag.inference.bundle import Bundle, load_bundle
from osteoflag.inference.dicomfile import read_instance
from osteoflag.inference.pixels import display_from_dataset, model_input
from osteoflag.inference.predictor import Predictor, session_options
from testkit.inference_data import dataset, radiograph, save
from testkit.tiny_bundle import build_bundle

DEFAULT_BUNDLE = Path("models/default")


def backbone_flops(model_path: Path, height: int, width: int) -> float:
    """FLOPs of one image: 2 x MACs of every Conv, MatMul and Gemm. Their shapes are read off
    one run of a zero image with every such node's tensors exposed as outputs: static shape
    inference cannot follow a Resize inside the graph (a two-view backbone), and it would
    count the convolutions behind it as zero."""
    model = onnx.load(str(model_path))
    counted = [node for node in model.graph.node if node.op_type in ("Conv", "MatMul", "Gemm")]
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    exposed = {output.name for output in model.graph.output}
    for node in counted:
        for name in (*node.input[:2], node.output[0]):
            if name not in exposed and name not in weights:
                model.graph.output.append(helper.make_empty_tensor_value_info(name))
                exposed.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    image = np.zeros((1, 3, height, width), dtype=np.float32)
    values = session.run(names, {session.get_inputs()[0].name: image})
    shapes = weights | {name: list(value.shape) for name, value in zip(names, values, strict=True)}
    macs = 0
    for node in counted:
        if node.op_type == "Conv":
            weight, out = shapes[node.input[1]], shapes[node.output[0]]
            # weight is (Cout, Cin / group, kH, kW): MACs per output value = its last 3 dims
            macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        else:
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            transposed = any(x.name == "transA" and x.i for x in node.attribute)
            inner = a[-2] if transposed else a[-1]
            macs += int(np.prod(out)) * inner
    return 2.0 * macs


def _timed(call: Callable[[], Any], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(threads: int, size: int = 2048) -> tuple[float, str]:
    """Best FLOP/s of a float32 (size x size) product: numpy BLAS and onnxruntime MatMul."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    flops = 2.0 * size**3
    numpy_best = flops / min(_timed(lambda: a @ b, 10))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [size, size])],
        initializer=[numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(
        model.SerializeToString(), session_options(threads), providers=["CPUExecutionProvider"]
    )
    ort_best = flops / min(_timed(lambda: session.run(None, {"a": a}), 10))
    if ort_best >= numpy_best:
        return ort_best, "onnxruntime MatMul"
    return numpy_best, "numpy matmul"


def choose_bundle(work: Path, requested: Path) -> Bundle:
    """The requested (default) bundle, or a generated VGG16 of the same compute with a notice."""
    try:
        return load_bundle(requested)
    except BundleError as exc:
        print(f"NOTICE: {exc}")
        print("NOTICE: benchmarking a generated random-weight VGG16 bundle (224x224) instead;")
        print("        same compute as the real backbone, probabilities are meaningless.\n")
        folder = build_bundle(
            work / "vgg16", architecture="vgg16", size=(224, 224), name="bench", training_images=12
        )
        return load_bundle(folder)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_predictor(bundle: Bundle, threads: int, batch: int, budget: float) -> dict[str, float]:
    predictor = Predictor(bundle, threads=threads, batch_size=batch)
    height, width = bundle.input_spec.size
    one = [np.random.default_rng(1).standard_normal((3, height, width), dtype=np.float32)]
    predictor.probabilities(one)
    single = _timed(lambda: predictor.probabilities(one), 3)
    repeat = max(5, min(30, int(budget / max(statistics.median(single), 1e-3))))
    single += _timed(lambda: predictor.probabilities(one), repeat)
    inputs = one * batch
    batched = _timed(lambda: predictor.probabilities(inputs), max(2, repeat // batch))
    return {
        "p50": percentile(single, 50),
        "p95": percentile(single, 95),
        "throughput": batch / statistics.median(batched),
    }


def bench_worker(
    bundle: Bundle, work: Path, threads: int, batch: int, count: int
) -> dict[str, float]:
    """Whole path on 2048x1664 12-bit DX files: read, decode, resize, predict, record."""
    settings = parse_settings(
        {
            "storage": {"path": str(work / "var"), "database_url": f"sqlite:///{work / 'q.db'}"},
            "model": {"bundle": str(bundle.path), "threads": threads, "batch_size": batch},
        },
        work,
    )
    engine = make_engine(settings.storage.database_url)
    migrate(engine)
    sessions = session_factory(engine)
    files = [
        save(dataset(radiograph(2048, 1664, seed=i), bits_stored=12), work / f"dx{i}.dcm")
        for i in range(4)
    ]
    predictor = Predictor(bundle, threads=threads, batch_size=batch)
    worker = InferenceWorker(settings, sessions, predictor=predictor)
    serial = iter(range(10**6))

    def enqueue(n: int) -> None:
        for _ in range(n):
            index = next(serial)
            received = queue.Received(
                f"2.25.{index + 1}",
                "1.2.840.10008.5.1.4.1.1.1.1",
                "1.2.840.10008.1.2.1",
                "BENCH",
                "127.0.0.1",
                str(files[index % len(files)]),
            )
            queue.enqueue(sessions, received)

    spec = bundle.input_spec
    decode = _timed(
        lambda: model_input(display_from_dataset(read_instance(files[0])), spec), max(5, count // 2)
    )
    single: list[float] = []
    for _ in range(max(5, count // 2)):
        enqueue(1)
        start = time.perf_counter()
        worker.drain()
        single.append(time.perf_counter() - start)
    enqueue(count)
    start = time.perf_counter()
    done = worker.drain()
    elapsed = time.perf_counter() - start
    engine.dispose()
    return {
        "p50": percentile(single, 50),
        "p95": percentile(single, 95),
        "throughput": done / elapsed,
        "decode_p50": percentile(decode, 50),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per latency series")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle to measure")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="osteoflag-bench-") as folder:
        work = Path(folder)
        bundle = choose_bundle(work, args.bundle)
        height, width = bundle.input_spec.size
        flops = backbone_flops(bundle.backbone_path, height, width)
        peak, source = matmul_peak(0)
        load = os.getloadavg()[0]
        if load > cores:
            print(f"NOTICE: load average {load:.1f} on {cores} cores: other work shares the CPU,")
            print("        so every figure below is noisy (the floor is measured under it too).\n")
        floor_throughput = peak / flops
        print(f"bundle     {bundle.model_id}  input {height}x{width}  cores {cores}")
        print(f"backbone   {flops / 1e9:.2f} GFLOP/image (Conv/MatMul/Gemm MACs x 2)")
        print(f"peak       {peak / 1e9:.1f} GFLOP/s float32 ({source}, {cores} cores)")
        print(
            f"floor      {1000 / floor_throughput:.1f} ms/image, {floor_throughput:.2f} images/s\n"
        )
        print("predictor alone (session options tried; 0 threads = one per core):")
        print(
            f"  {'threads':>7} {'batch':>5} {'p50 ms':>8} {'p95 ms':>8} {'img/s':>7} {'floor':>6}"
        )
        best: dict[str, float] = {}
        best_config = (0, 1)
        for threads, batch in ((0, 1), (0, 4), (1, 1)):
            result = bench_predictor(bundle, threads, batch, args.budget)
            ratio = result["throughput"] / floor_throughput
            print(
                f"  {threads:>7} {batch:>5} {1000 * result['p50']:>8.1f} "
                f"{1000 * result['p95']:>8.1f} {result['throughput']:>7.2f} {ratio:>6.0%}"
            )
            if result["throughput"] > best.get("throughput", 0.0):
                best, best_config = result, (threads, batch)
        threads, batch = best_config
        again, again_source = matmul_peak(0)
        if again > peak:
            peak, source, floor_throughput = again, again_source, again / flops
            print(f"  (peak re-measured higher after the runs: {peak / 1e9:.1f} GFLOP/s, {source};")
            print(f"   floor now {floor_throughput:.2f} images/s, ratios below use it)")
        worker = bench_worker(bundle, work, threads, batch, count=4 * batch)
        ratio = worker["throughput"] / floor_throughput
        print(f"\nworker path (decode 2048x1664 DX, resize, predict, SQLite) {threads=} {batch=}:")
        print(
            f"  p50 {1000 * worker['p50']:.1f} ms  p95 {1000 * worker['p95']:.1f} ms  "
            f"{worker['throughput']:.2f} images/s  {ratio:.0%} of floor  "
            f"(read+decode+resize alone p50 {1000 * worker['decode_p50']:.1f} ms)"
        )
        print("\nsummary:")
        share = best["throughput"] / floor_throughput
        print(
            f"  predictor  p50 {1000 * best['p50']:.1f} ms  p95 {1000 * best['p95']:.1f} ms  "
            f"{best['throughput']:.2f} img/s = {share:.0%} of floor (target >= 70%)"
        )
        print(f"  worker     {worker['throughput']:.2f} img/s = {ratio:.0%} of floor")
        print(f"  took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Predictor throughput, float32 vs INT8, each measurement in fresh processes.

Two sessions alive in one process disturb each other (the idle one's thread pool still
spins), and one long run per precision follows a shared CPU's drift, so every figure here
comes from processes that hold one predictor only, with float32 and INT8 taking turns.
Layouts: one process on all cores at batch 1, 4 and the daemon's default, and one
single-threaded process per core at the default batch (the whole machine, as separate
``serve --role worker`` processes would use it). Inputs are real model inputs, cycled so
each batch is new to the caches, as in the daemon.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from osteoflag.config import ModelSettings
from osteoflag.inference.bundle import Bundle, load_bundle
from osteoflag.inference.pixels import FloatArray
from osteoflag.inference.predictor import Predictor

REPEATS = 2
SECONDS = 3.0
#: Inputs cycled through: 128 x 0.6 MB is more than the last-level cache holds, so each batch
#: comes from memory as it does in the daemon.
CYCLED = 128


@dataclass(frozen=True)
class Layout:
    """How the cores are used: ``processes`` predictors of ``threads`` threads (0 = all)."""

    processes: int
    threads: int
    batch: int

    def describe(self) -> str:
        threads = "all cores" if self.threads == 0 else f"{self.threads} thread"
        processes = "1 process" if self.processes == 1 else f"{self.processes} processes"
        return f"{processes} x {threads}, batch {self.batch}"


def _rate(bundle: str, inputs: str, layout: Layout, barrier: Any) -> float:
    """Images/s of one predictor process (runs in a child)."""
    images = np.load(inputs, mmap_mode="r")
    predictor = Predictor(
        load_bundle(Path(bundle)), threads=layout.threads, batch_size=layout.batch
    )
    starts = range(0, len(images) - layout.batch + 1, layout.batch)
    batches: list[list[FloatArray]] = [list(images[i : i + layout.batch]) for i in starts]
    predictor.probabilities(batches[0])
    barrier.wait()  # the processes of one layout start together
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        predictor.probabilities(batches[(done // layout.batch) % len(batches)])
        done += layout.batch
    return done / (time.perf_counter() - started)


def machine_rate(bundle: Bundle, inputs: Path, layout: Layout) -> float:
    """Images/s of ``layout``'s processes together, measured at the same time."""
    context = get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(layout.processes, context) as pool:
        barrier = manager.Barrier(layout.processes)
        futures = [
            pool.submit(_rate, str(bundle.path), str(inputs), layout, barrier)
            for _ in range(layout.processes)
        ]
        return sum(future.result() for future in futures)


def print_rates(float32: Bundle, int8: Bundle, inputs: list[FloatArray]) -> None:
    """float32 vs INT8 figures per layout: medians of ``REPEATS`` alternating runs."""
    cores = os.cpu_count() or 1
    default = ModelSettings().batch_size
    layouts = [Layout(1, 0, batch) for batch in sorted({1, 4, default})]
    layouts.append(Layout(cores, 1, default))
    print(
        f"predictor alone (backbone + LightGBM) on {min(len(inputs), CYCLED)} real inputs; "
        f"fresh processes, float32 and int8 alternating, median of {REPEATS} runs of "
        f"{SECONDS:.0f} s:"
    )
    print(f"  {'layout':<34} {'float32 img/s':>14} {'int8 img/s':>11} {'int8/fp32':>9}")
    with tempfile.TemporaryDirectory(prefix="osteoflag-bench-inputs-") as folder:
        stored = Path(folder) / "inputs.npy"
        np.save(stored, np.stack(inputs[:CYCLED]))
        for layout in layouts:
            rates: dict[str, list[float]] = {"float32": [], "int8": []}
            for _ in range(REPEATS):
                rates["float32"].append(machine_rate(float32, stored, layout))
                rates["int8"].append(machine_rate(int8, stored, layout))
            fp32, i8 = statistics.median(rates["float32"]), statistics.median(rates["int8"])
            note = " (daemon default)" if layout == Layout(1, 0, default) else ""
            print(f"  {layout.describe():<34} {fp32:>14.1f} {i8:>11.1f} {i8 / fp32:>8.2f}x{note}")

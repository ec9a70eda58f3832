"""Predictor throughput, float32 vs INT8, measured as interleaved pairs.

This shared virtual CPU drifts by up to 40 % over seconds to minutes, so two precisions
timed one after the other compare the drift as much as the models. Here both precisions'
processes are alive together and take turns in short slices (float32 first in even slices,
INT8 first in odd ones), so each sees the same conditions; a precision's rate is its images
over its own slices' time. Every process holds one predictor only (two sessions in one
process disturb each other: the idle one's thread pool still spins), and waits on a pipe,
with no session running, while the other precision has the CPU.

Layouts: one process on all cores at batch 1, 4 and the daemon's default, and one
single-threaded process per core at the default batch (the whole machine, as separate
``serve --role worker`` processes would use it). Inputs are real model inputs, cycled so
each batch is new to the caches, as in the daemon.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from osteoflag.config import ModelSettings
from osteoflag.inference.bundle import Bundle, load_bundle
from osteoflag.inference.pixels import FloatArray
from osteoflag.inference.predictor import Predictor

#: Turns per precision, and the length of one turn: 12 x 0.5 s per precision and layout.
SLICES = 12
SLICE_SECONDS = 0.5
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


def _serve_slices(bundle: str, inputs: str, layout: Layout, commands: Connection) -> None:
    """A child: load one predictor, then run for each slice length received; report counts."""
    images = np.load(inputs, mmap_mode="r")
    predictor = Predictor(
        load_bundle(Path(bundle)), threads=layout.threads, batch_size=layout.batch
    )
    starts = range(0, len(images) - layout.batch + 1, layout.batch)
    batches: list[list[FloatArray]] = [list(images[i : i + layout.batch]) for i in starts]
    predictor.probabilities(batches[0])
    commands.send("ready")
    done = 0
    while (seconds := commands.recv()) is not None:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            predictor.probabilities(batches[done % len(batches)])
            done += 1
            count += layout.batch
        commands.send((count, time.perf_counter() - started))


def paired_rates(
    float32: Bundle, int8: Bundle, inputs: Path, layout: Layout
) -> tuple[float, float]:
    """Images/s of ``layout`` with the float32 and with the INT8 bundle, interleaved."""
    context = get_context("spawn")
    groups: dict[str, list[Connection]] = {"float32": [], "int8": []}
    children = []
    try:
        for name, bundle in (("float32", float32), ("int8", int8)):
            for _ in range(layout.processes):
                ours, theirs = context.Pipe()
                child = context.Process(
                    target=_serve_slices, args=(str(bundle.path), str(inputs), layout, theirs)
                )
                child.start()
                children.append(child)
                groups[name].append(ours)
        for pipe in groups["float32"] + groups["int8"]:
            if pipe.recv() != "ready":
                raise RuntimeError("a predictor process did not start")
        images = dict.fromkeys(groups, 0)
        seconds = dict.fromkeys(groups, 0.0)
        for turn in range(SLICES):
            for name in ("float32", "int8") if turn % 2 == 0 else ("int8", "float32"):
                for pipe in groups[name]:
                    pipe.send(SLICE_SECONDS)
                results = [pipe.recv() for pipe in groups[name]]
                images[name] += sum(count for count, _ in results)
                seconds[name] += max(elapsed for _, elapsed in results)
        for pipe in groups["float32"] + groups["int8"]:
            pipe.send(None)
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    return images["float32"] / seconds["float32"], images["int8"] / seconds["int8"]


def print_rates(float32: Bundle, int8: Bundle, inputs: list[FloatArray]) -> None:
    """float32 vs INT8 figures per layout, from interleaved slices."""
    cores = os.cpu_count() or 1
    default = ModelSettings().batch_size
    layouts = [Layout(1, 0, batch) for batch in sorted({1, 4, default})]
    layouts.append(Layout(cores, 1, default))
    print(
        f"predictor alone (backbone + LightGBM) on {min(len(inputs), CYCLED)} real inputs; "
        f"float32 and int8 processes alive together, taking {SLICES} turns each of "
        f"{SLICE_SECONDS} s:"
    )
    print(f"  {'layout':<34} {'float32 img/s':>14} {'int8 img/s':>11} {'int8/fp32':>9}")
    with tempfile.TemporaryDirectory(prefix="osteoflag-bench-inputs-") as folder:
        stored = Path(folder) / "inputs.npy"
        np.save(stored, np.stack(inputs[:CYCLED]))
        for layout in layouts:
            fp32, i8 = paired_rates(float32, int8, stored, layout)
            note = " (daemon default)" if layout == Layout(1, 0, default) else ""
            print(f"  {layout.describe():<34} {fp32:>14.1f} {i8:>11.1f} {i8 / fp32:>8.2f}x{note}")

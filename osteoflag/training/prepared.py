"""What every protocol of a training run shares: its options and its prepared data.

:func:`prepare` runs hygiene on each source and the frozen trunk over every image once
(through onnxruntime, cached), so the protocols (:mod:`osteoflag.training.protocols`)
only fit heads and boosters on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch

from osteoflag.inference.pixels import ColourOrder, InputSpec, ResizeMode, load_display
from osteoflag.training import classifier, export, features, hygiene
from osteoflag.training.backbones import FeatureLayout, Init, normalisation_for
from osteoflag.training.calibrate import Calibration
from osteoflag.training.dataset import Sample, discover
from osteoflag.training.finetune import FinetuneConfig
from osteoflag.training.model import TrunkOutputs, head_onnx_outputs
from osteoflag.training.networks import FINETUNE, HEAD_TEXT, Architecture, layout_text, view_starts


class Sources(StrEnum):
    """What the bundle (and each CV fold) is trained on: the primary source alone, or both."""

    PRIMARY = "primary"
    BOTH = "both"


@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run depends on (recorded in the model card)."""

    data: Path
    out: Path
    work: Path
    other: Path | None = None
    architecture: Architecture = Architecture.EFFICIENTNET_LITE0
    init: Init = Init.IMAGENET
    weights: Path | None = None
    size: int = 224
    small_view: int = 0  # also pool every level of the image resized to this size (0: off)
    resize_mode: ResizeMode = ResizeMode.STRETCH
    head_convs: int = 1
    layout: FeatureLayout = FeatureLayout.B5
    finetune: FinetuneConfig | None = None  # None: the architecture's defaults (FINETUNE)
    booster: classifier.BoosterConfig = field(default_factory=classifier.BoosterConfig)
    cells: bool = False  # the bundle's fits add a cell probe on the head's map (classifier)
    protocols: tuple[str, ...] = ("published", "cv", "cross")
    folds: int = 5
    seed: int = 0
    target_sensitivity: float | None = None
    name: str = "osteoflag-effnetlite0-imagenet"
    version: str = "2.0.0"
    threads: int = 2
    compare_layouts: bool = True
    int8: bool = False  # also score INT8 versions of the published and CV models
    notes: tuple[str, ...] = ()  # provenance lines for the model card ("Notes on this run")
    width_divisor: int = 1
    cache: Path | None = None  # default: WORK/cache; shareable between runs and processes
    calibration: Calibration = Calibration.PLATT  # fitted on each fit's validation groups
    train_on: Sources = Sources.PRIMARY
    recipes: Path | None = None  # recipe results (``recipes`` command) for the card's table
    copies: int = 0  # fixed augmented copies of every image whose trunk outputs train each fit

    @property
    def cache_dir(self) -> Path:
        """Where per-image graph outputs are cached (keyed by the graph's hash)."""
        return self.cache or self.work / "cache"

    @property
    def tuning(self) -> FinetuneConfig:
        """The fine-tuning settings in force: the given ones, else the architecture's own
        (``networks.FINETUNE``) with this run's seed."""
        if self.finetune is not None:
            return self.finetune
        return replace(FINETUNE[self.architecture], seed=self.seed)

    @property
    def bundle_booster(self) -> classifier.BoosterConfig:
        """The LightGBM settings of the bundle's own fits: ``booster`` with the view starts of
        the bundle's features (:func:`networks.view_starts`; none without ``small_view``) and
        the cell probe when ``cells``."""
        starts = view_starts(self.architecture, self.small_view, self.width_divisor)
        return replace(self.booster, view_starts=starts, cells=self.cells)


@dataclass
class Prepared:
    """Hygiene-checked samples of both sources and their trunk outputs (primary first)."""

    samples: list[Sample]
    groups: np.ndarray
    labels: np.ndarray
    primary: np.ndarray
    other: np.ndarray
    trunk: TrunkOutputs
    hygiene: dict[str, object]
    copies: list[TrunkOutputs] = field(default_factory=list)  # augmented copies 1..K
    _untuned: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)

    def untuned(
        self, head: torch.nn.Module, path: Path, threads: int, spatial: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The untuned head's output for every image and, when ``spatial``, its last maps;
        computed once (frozen fits share them)."""
        if self._untuned is None or (spatial and self._untuned[1] is None):
            self._untuned = head_onnx_outputs(head, self.trunk.maps, path, threads, spatial)
        return self._untuned


def input_spec(options: TrainOptions) -> InputSpec:
    """The bundle's input contract for these options."""
    norm = normalisation_for(options.architecture.value, options.init)
    return InputSpec(
        size=(options.size, options.size),
        resize_mode=options.resize_mode,
        colour_order=ColourOrder(norm.colour_order),
        mean=norm.mean,
        std=norm.std,
    )


def _load_grey(sample: Sample) -> np.ndarray:
    return load_display(sample.path).pixels


def graph_outputs(
    model: torch.nn.Module,
    samples: list[Sample],
    spec: InputSpec,
    path: Path,
    options: TrainOptions,
    desc: str,
    output_names: tuple[str, ...] = ("features",),
) -> tuple[dict[str, np.ndarray], int]:
    """Export ``model`` to ``path``, check torch against onnxruntime on the first images, then
    run every sample through onnxruntime, cached by the graph's hash; also how many cache
    entries were rejected."""
    inputs = np.stack([features.prepare(s, spec) for s in samples[: export.PARITY_IMAGES]])
    export.export_onnx(model, torch.from_numpy(inputs[:1]), path, output_names=output_names)
    export.check_parity(model, path, inputs, options.threads)
    return cached_outputs(path, samples, spec, options, desc)


def cached_outputs(
    path: Path, samples: list[Sample], spec: InputSpec, options: TrainOptions, desc: str
) -> tuple[dict[str, np.ndarray], int]:
    """Every sample through the ONNX graph at ``path`` with onnxruntime, cached under
    ``options.cache_dir`` by the graph's hash; also how many cache entries were rejected."""
    cache = features.FeatureCache(options.cache_dir, features.sha256_bytes(path.read_bytes()))
    sess = export.session(path, options.threads)
    out = features.run_images(sess, samples, spec, cache, desc=desc)
    return out, cache.rejected


def prepare(options: TrainOptions, trunk_model: torch.nn.Module) -> Prepared:
    """Hygiene on every source, then the trunk through onnxruntime (cached)."""
    sources = [discover(options.data, "primary")]
    if options.other is not None:
        sources.append(discover(options.other, "other", representatives_only=True))
    checked = [hygiene.check(s, _load_grey) for s in sources]
    samples = [s for c in checked for s in c.kept]
    groups = np.array(
        [f"{s.source}/{g}" for c in checked for s, g in zip(c.kept, c.groups, strict=True)]
    )
    labels = np.array([s.label for s in samples], dtype=int)
    names = ("b3", "b4", "map")
    spec = input_spec(options)
    out, rejected = graph_outputs(
        trunk_model,
        samples,
        spec,
        options.work / "trunk.onnx",
        options,
        desc="trunk (onnxruntime)",
        output_names=names,
    )
    copies = []
    for copy in range(1, options.copies + 1):
        cache = features.FeatureCache(
            options.cache_dir, features.sha256_bytes((options.work / "trunk.onnx").read_bytes())
        )
        sess = export.session(options.work / "trunk.onnx", options.threads)
        more = features.run_images(sess, samples, spec, cache, desc=f"copy {copy}", copy=copy)
        copies.append(TrunkOutputs(*(more[name] for name in names)))
        rejected += cache.rejected
    n_primary = len(checked[0].kept)
    return Prepared(
        samples=samples,
        groups=groups,
        labels=labels,
        primary=np.arange(n_primary),
        other=np.arange(n_primary, len(samples)),
        trunk=TrunkOutputs(*(out[name] for name in names)),
        hygiene={name: c.summary() for name, c in zip(("primary", "other"), checked, strict=False)}
        | {"cache_entries_rejected": rejected},
        copies=copies,
    )


def run_facts(options: TrainOptions) -> dict[str, object]:
    """The settings the model card states (kept in the results so a card can be re-rendered)."""
    spec = input_spec(options)
    rule = options.target_sensitivity
    return {
        "name": options.name,
        "version": options.version,
        "architecture": options.architecture.value,
        "init": options.init.value,
        "head": HEAD_TEXT[options.architecture].format(head_convs=options.head_convs),
        "layout": layout_text(options.architecture, options.layout, options.small_view),
        "finetune": str(options.tuning),
        "booster": str(options.bundle_booster),
        "linear": options.booster.linear,
        "cells": options.cells,
        "threshold_rule": "Youden's J" if rule is None else f"sensitivity >= {rule}",
        "calibration": options.calibration.value,
        "train_on": options.train_on.value,
        "copies": options.copies,
        "input": f"{spec.size[0]}x{spec.size[1]} {spec.resize_mode.value}, grey in 3 channels, "
        f"{spec.colour_order.value} mean {list(spec.mean)} std {list(spec.std)} on 0-255 values",
    }


def split_indices(prep: Prepared, split: str) -> np.ndarray:
    return np.array([i for i in prep.primary if prep.samples[i].split == split], dtype=int)

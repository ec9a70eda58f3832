"""Recipe experiments on frozen features: each training change measured on its own.

A *recipe* is a frozen feature extractor (or two), the training data around it (augmented
copies, conflicting-label policy, one or both sources) and test-time augmentation; LightGBM is
fitted on cached features, so a recipe costs seconds once its trunk outputs are cached. Each
recipe is scored on the protocols that stand in for other hospitals:

- ``osteoai_to_multiregion``: fit on all OsteoAI, score the 354 multiregion representatives;
- ``multiregion_to_osteoai``: fit on the multiregion representatives, score every OsteoAI
  image;
- ``cv_osteoai``: grouped 5-fold CV over OsteoAI (mean fold AUC); with ``both_sources`` all of
  multiregion joins each fold's training data;
- ``cv_multiregion``: grouped 5-fold CV over multiregion groups, pooled out-of-fold AUC (its
  folds are too small for a mean of fold AUCs); with ``both_sources`` all of OsteoAI joins each
  fold's training data (computed for the baseline and the two-source recipes only).

Early stopping always uses a grouped hold-out of the fit's own training groups. Multiregion
enters as one representative per near-duplicate cluster (354 radiographs): its other files are
the publisher's augmented copies (up to 97 of one radiograph), which would outweigh everything
else, and the fixed augmented copies here play their part.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch

from osteoflag.inference.pixels import ColourOrder, InputSpec, ResizeMode, load_display
from osteoflag.training import classifier, export, features, hygiene, metrics
from osteoflag.training.augment import FLIP
from osteoflag.training.backbones import FeatureLayout, Init, normalisation_for
from osteoflag.training.dataset import Sample, discover
from osteoflag.training.efficientnet import VARIANTS
from osteoflag.training.networks import (
    Architecture,
    FeatureGraph,
    build_network,
    view_starts,
    with_small_view,
)
from osteoflag.training.splits import group_folds, group_holdout

logger = logging.getLogger(__name__)


class Conflicts(StrEnum):
    """What training does with a group whose images carry both labels."""

    KEEP = "keep"
    DROP = "drop"
    MAJORITY = "majority"
    DOWNWEIGHT = "downweight"


#: Weight of an image of a conflicting-label group under ``Conflicts.DOWNWEIGHT``.
CONFLICT_WEIGHT = 0.25


@dataclass(frozen=True)
class Trunk:
    """One frozen feature extractor with its input geometry."""

    architecture: Architecture = Architecture.EFFICIENTNET_LITE0
    size: int = 224
    resize_mode: ResizeMode = ResizeMode.STRETCH
    layout: FeatureLayout = FeatureLayout.B5
    small_view: int = 0  # networks.TwoViewTrunk: also every level at this size (0: off)

    @property
    def tag(self) -> str:
        tag = f"{self.architecture.value}_{self.size}_{self.resize_mode.value}_{self.layout.value}"
        return tag + (f"_view{self.small_view}" if self.small_view else "")

    def spec(self) -> InputSpec:
        norm = normalisation_for(self.architecture.value, Init.IMAGENET)
        return InputSpec(
            size=(self.size, self.size),
            resize_mode=self.resize_mode,
            colour_order=ColourOrder(norm.colour_order),
            mean=norm.mean,
            std=norm.std,
        )


@dataclass(frozen=True)
class Recipe:
    """Everything one row of the recipe table varies."""

    name: str
    trunks: tuple[Trunk, ...] = (Trunk(),)
    average_scores: bool = False  # two trunks: average their boosters' scores, else concatenate
    copies: int = 0  # fixed augmented copies of every training image
    conflicts: Conflicts = Conflicts.KEEP
    both_sources: bool = False
    tta_flip: bool = False
    linear: bool = False  # a logistic probe's log-odds averaged with LightGBM's (classifier)


@dataclass
class RecipeData:
    """Both sources' samples with labels, groups and per-file weights (primary first)."""

    samples: list[Sample]
    labels: np.ndarray
    groups: np.ndarray
    osteoai: np.ndarray
    multiregion: np.ndarray
    weights: np.ndarray  # per-file training weight (1 unless a conflict policy lowers it)
    conflicting: np.ndarray  # bool: the file's group carries both labels


def load_data(osteoai: Path, multiregion: Path, work: Path) -> RecipeData:
    """OsteoAI grouped by hygiene (stems + near-duplicates), multiregion by its groups.csv."""
    o_check = hygiene.check(discover(osteoai, "osteoai"), lambda s: load_display(s.path).pixels)
    m_samples = discover(multiregion, "multiregion", representatives_only=True)
    samples = [*o_check.kept, *m_samples]
    groups = np.array(
        [f"osteoai/{g}" for g in o_check.groups] + [f"multiregion/{s.group}" for s in m_samples]
    )
    labels = np.array([s.label for s in samples], dtype=int)
    n = len(o_check.kept)
    conflicted = {g for g in set(groups.tolist()) if len(set(labels[groups == g].tolist())) > 1}
    (work / "hygiene.json").write_text(json.dumps(o_check.summary(), default=str))
    return RecipeData(
        samples=samples,
        labels=labels,
        groups=groups,
        osteoai=np.arange(n),
        multiregion=np.arange(n, len(samples)),
        weights=np.ones(len(samples)),
        conflicting=np.array([g in conflicted for g in groups.tolist()]),
    )


class FeatureStore:
    """Frozen features of every sample per (trunk, copy), through onnxruntime and cached."""

    def __init__(self, data: RecipeData, work: Path, threads: int) -> None:
        self.data = data
        self.work = work
        self.threads = threads
        self._memo: dict[tuple[str, int], np.ndarray] = {}

    def _graph(self, trunk: Trunk) -> Path:
        path = self.work / f"{trunk.tag}.onnx"
        if not path.is_file():
            network = with_small_view(
                build_network(trunk.architecture, Init.IMAGENET), trunk.small_view
            )
            graph = FeatureGraph(network.trunk, network.head, trunk.layout).eval()
            inputs = np.stack([features.prepare(s, trunk.spec()) for s in self.data.samples[:4]])
            export.export_onnx(graph, torch.from_numpy(inputs[:1]), path)
            export.check_parity(graph, path, inputs, self.threads)
        return path

    def get(self, trunk: Trunk, copy: int, rows: np.ndarray) -> np.ndarray:
        """Features of ``copy`` for ``rows`` (an index array; the memo holds all computed rows)."""
        key = (trunk.tag, copy)
        if key not in self._memo:
            self._memo[key] = np.full((len(self.data.samples), 0), np.nan, np.float32)
        table = self._memo[key]
        missing = rows if table.shape[1] == 0 else rows[np.isnan(table[rows, 0])]
        if len(missing):
            path = self._graph(trunk)
            cache = features.FeatureCache(
                self.work / "cache", features.sha256_bytes(path.read_bytes())
            )
            out = features.run_images(
                export.session(path, self.threads),
                [self.data.samples[i] for i in missing],
                trunk.spec(),
                cache,
                desc=f"{trunk.tag} copy {copy}",
                copy=copy,
            )["features"]
            if table.shape[1] == 0:
                table = np.full((len(self.data.samples), out.shape[1]), np.nan, np.float32)
            table[missing] = out
            self._memo[key] = table
        return table[rows]


@dataclass
class _Fit:
    """The rows one LightGBM fit trains on."""

    rows: np.ndarray
    labels: np.ndarray
    weights: np.ndarray


def _training_rows(data: RecipeData, idx: np.ndarray, conflicts: Conflicts) -> _Fit:
    labels = data.labels[idx].copy()
    weights = data.weights[idx].copy()
    hit = data.conflicting[idx]
    if conflicts is Conflicts.DROP:
        idx, labels, weights = idx[~hit], labels[~hit], weights[~hit]
    elif conflicts is Conflicts.DOWNWEIGHT:
        weights[hit] *= CONFLICT_WEIGHT
    elif conflicts is Conflicts.MAJORITY:
        for g in set(data.groups[idx[hit]].tolist()):
            members = data.groups[idx] == g
            labels[members] = int(data.labels[data.groups == g].mean() >= 0.5)
    return _Fit(idx, labels, weights)


Scorer = Callable[[np.ndarray], np.ndarray]


def _fit_scorer(
    store: FeatureStore,
    recipe: Recipe,
    train: np.ndarray,
    booster_config: classifier.BoosterConfig,
    seed: int,
) -> Scorer:
    """Fit the recipe on ``train`` (original indices) and return its scoring function."""
    data = store.data
    a, b = group_holdout(data.labels[train], data.groups[train], 0.15, seed)
    fit, stop = _training_rows(data, train[a], recipe.conflicts), train[b]
    copies = [0, *range(1, recipe.copies + 1)]
    per_trunk = [t for t in recipe.trunks] if recipe.average_scores else [recipe.trunks]

    def matrix(trunks: Trunk | tuple[Trunk, ...], copy: int, rows: np.ndarray) -> np.ndarray:
        group = trunks if isinstance(trunks, tuple) else (trunks,)
        return np.hstack([store.get(t, copy, rows) for t in group])

    boosters = []
    for trunks in per_trunk:
        # A two-view trunk, alone, is boosted per view as the bundle does.
        group = trunks if isinstance(trunks, tuple) else (trunks,)
        views = view_starts(group[0].architecture, group[0].small_view) if len(group) == 1 else ()
        xs, ys, ws = [], [], []
        for copy in copies:
            xs.append(matrix(trunks, copy, fit.rows))
            ys.append(fit.labels)
            ws.append(fit.weights / len(copies))
        boosters.append(
            (
                trunks,
                classifier.train_classifier(
                    np.vstack(xs),
                    np.concatenate(ys),
                    matrix(trunks, 0, stop),
                    data.labels[stop],
                    replace(booster_config, view_starts=views, linear=recipe.linear),
                    weight=np.concatenate(ws),
                ),
            )
        )

    def score(rows: np.ndarray) -> np.ndarray:
        views = [0, FLIP] if recipe.tta_flip else [0]
        out = [
            fitted.predict(matrix(trunks, copy, rows))
            for trunks, fitted in boosters
            for copy in views
        ]
        return np.mean(out, axis=0)

    return score


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(metrics.binary_metrics(y, p, 0.5)["auc"])


def run_recipe(
    store: FeatureStore,
    recipe: Recipe,
    booster_config: classifier.BoosterConfig,
    folds: int = 5,
    seed: int = 0,
) -> dict[str, object]:
    """The recipe's AUC on every protocol of the module docstring."""
    data = store.data
    o, m = data.osteoai, data.multiregion
    result: dict[str, object] = {"recipe": _describe(recipe)}
    score = _fit_scorer(store, recipe, o, booster_config, seed)
    result["osteoai_to_multiregion"] = _auc(data.labels[m], score(m))
    score = _fit_scorer(store, recipe, m, booster_config, seed)
    result["multiregion_to_osteoai"] = _auc(data.labels[o], score(o))
    fold_aucs = []
    for k, (tr, te) in enumerate(group_folds(data.labels[o], data.groups[o], folds, seed)):
        train = np.concatenate([o[tr], m]) if recipe.both_sources else o[tr]
        score = _fit_scorer(store, recipe, train, booster_config, seed + k)
        fold_aucs.append(_auc(data.labels[o[te]], score(o[te])))
    result["cv_osteoai_folds"] = fold_aucs
    result["cv_osteoai"] = float(np.mean(fold_aucs))
    if not (recipe.both_sources or recipe.name == BASELINE):
        return result  # beside the baseline, it only tells something when OsteoAI joins it
    pooled = np.full(len(data.samples), np.nan)
    for k, (tr, te) in enumerate(group_folds(data.labels[m], data.groups[m], folds, seed)):
        train = np.concatenate([m[tr], o]) if recipe.both_sources else m[tr]
        pooled[m[te]] = _fit_scorer(store, recipe, train, booster_config, seed + k)(m[te])
    result["cv_multiregion"] = _auc(data.labels[m], pooled[m])
    logger.info("recipe scored", extra={"action": "recipe", **_flat(result)})
    return result


def _describe(recipe: Recipe) -> dict[str, object]:
    document = asdict(recipe)
    document["trunks"] = [t.tag for t in recipe.trunks]
    return document


def _flat(result: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in result.items() if isinstance(v, float)}


BASELINE = "base"
_VGG16 = Trunk(Architecture.VGG16, 224, ResizeMode.STRETCH, FeatureLayout.B345)
#: The larger EfficientNet-Lite sizes at their native input sizes (240 and 260 px).
_LITE1 = Trunk(Architecture.EFFICIENTNET_LITE1, VARIANTS["efficientnet_lite1"].native_size)
_LITE2 = Trunk(Architecture.EFFICIENTNET_LITE2, VARIANTS["efficientnet_lite2"].native_size)
#: The default bundle's trunk: Lite0 at 384 px.
_LITE0_384 = Trunk(size=384)
_LITE0_512 = Trunk(size=512)
#: Lite0 at 224 px with stages 4 and 5 pooled beside the head convolution.
_LEVELS = Trunk(layout=FeatureLayout.B345)
#: ``levels_average_384`` as one graph (the default bundle's): the 224 px view resized inside it.
_TWO_VIEW = Trunk(size=384, layout=FeatureLayout.B345, small_view=224)
#: The recipes of the model card's table, each one change from the baseline (frozen
#: EfficientNet-Lite0, 224 px stretched, head conv average + max pool, OsteoAI only), except
#: ``size320_copies2``, which combines the two changes that raised grouped CV most,
#: ``size384_levels``, the rows that average or join two trunks (``multiscale*``,
#: ``levels_average_384``, ``two_view``), and ``size384_linear`` / ``two_view_linear``, the
#: logistic probe added to those rows' trunks.
RECIPES = {
    r.name: r
    for r in (
        Recipe(BASELINE),
        Recipe("both_sources", both_sources=True),
        Recipe("copies2", copies=2),
        Recipe("letterbox", trunks=(Trunk(resize_mode=ResizeMode.LETTERBOX),)),
        Recipe("size320", trunks=(Trunk(size=320),)),
        Recipe("size384", trunks=(_LITE0_384,)),
        Recipe("size448", trunks=(Trunk(size=448),)),
        Recipe("size512", trunks=(_LITE0_512,)),
        Recipe("size320_copies2", trunks=(Trunk(size=320),), copies=2),
        Recipe("conflicts_drop", conflicts=Conflicts.DROP),
        Recipe("conflicts_majority", conflicts=Conflicts.MAJORITY),
        Recipe("conflicts_downweight", conflicts=Conflicts.DOWNWEIGHT),
        Recipe("tta_flip", tta_flip=True),
        Recipe("vgg16", trunks=(_VGG16,)),
        Recipe("vgg16_concat_lite0", trunks=(_VGG16, Trunk())),
        Recipe("vgg16_average_lite0", trunks=(_VGG16, Trunk()), average_scores=True),
        Recipe("lite1", trunks=(_LITE1,)),
        Recipe("lite2", trunks=(_LITE2,)),
        Recipe("multiscale_concat", trunks=(Trunk(), _LITE0_384)),
        Recipe("multiscale_average", trunks=(Trunk(), _LITE0_384), average_scores=True),
        Recipe("multiscale512_average", trunks=(Trunk(), _LITE0_512), average_scores=True),
        Recipe("multiscale384_512_average", trunks=(_LITE0_384, _LITE0_512), average_scores=True),
        Recipe("levels", trunks=(_LEVELS,)),
        Recipe("size384_levels", trunks=(Trunk(size=384, layout=FeatureLayout.B345),)),
        Recipe("levels_average_384", trunks=(_LEVELS, _LITE0_384), average_scores=True),
        Recipe("two_view", trunks=(_TWO_VIEW,)),
        Recipe("linear", linear=True),
        Recipe("size384_linear", trunks=(_LITE0_384,), linear=True),
        Recipe("two_view_linear", trunks=(_TWO_VIEW,), linear=True),
    )
}


def run_all(
    data: RecipeData,
    recipes: list[Recipe],
    work: Path,
    booster_config: classifier.BoosterConfig,
    folds: int = 5,
) -> list[dict[str, object]]:
    """Score every recipe, rewriting ``work/recipes.json`` after each one."""
    store = FeatureStore(data, work, booster_config.threads)
    out: list[dict[str, object]] = []
    for recipe in recipes:
        out.append(run_recipe(store, recipe, booster_config, folds))
        (work / "recipes.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out

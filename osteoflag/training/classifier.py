"""The classifier on backbone features: LightGBM (one booster per view, averaged) and, when asked,
a logistic probe averaged with it, or a logistic probe and a cell probe on the backbone's map
mixed with it; early-stopped on validation groups, fixed seeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import lightgbm as lgb
import numpy as np
from scipy.special import expit

from osteoflag.errors import TrainingError
from osteoflag.inference.cellterm import CellTerm
from osteoflag.inference.linear import LinearTerm
from osteoflag.inference.terms import Terms
from osteoflag.training import ensemble
from osteoflag.training.cellfit import fit_cells
from osteoflag.training.probe import fit_views

logger = logging.getLogger(__name__)

#: The bundle's files for the booster, the linear term and the cell term.
BOOSTER_FILE: Final = "classifier.txt"
LINEAR_FILE: Final = "linear.json"
CELLS_FILE: Final = "cells.json"
#: Weights of the members' log-odds when the cell probe joins (trees, probe, cells), each
#: member's log-odds first standardised on the validation rows: the mix measured best across
#: sources without giving up the trees (README).
MEMBER_WEIGHTS: Final = (1.0, 1.0, 2.0)


@dataclass(frozen=True)
class BoosterConfig:
    """LightGBM settings; deterministic so a rebuild gives the same model."""

    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 20
    feature_fraction: float = 0.3
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 2000
    early_stopping: int = 50
    seed: int = 0
    threads: int = 2
    #: Columns where each separately boosted view of the features starts (``ensemble``); empty:
    #: one booster on all columns.
    view_starts: tuple[int, ...] = ()
    #: Also fit a logistic probe (per view) and average its log-odds with the booster's
    #: (:mod:`osteoflag.inference.linear`).
    linear: bool = False
    #: Also fit a cell probe on the backbone's map (:mod:`osteoflag.inference.cellterm`) and
    #: mix every member's standardised log-odds by :data:`MEMBER_WEIGHTS`.
    cells: bool = False


@dataclass(frozen=True)
class Classifier:
    """A booster and, when the config asked for them, the linear and cell terms added to its
    raw score."""

    booster: lgb.Booster
    linear: LinearTerm | None = None
    cells: CellTerm | None = None

    def predict(self, x: np.ndarray, maps: np.ndarray | None = None) -> np.ndarray:
        """Fracture probabilities at the early-stopped iteration, as the daemon computes them
        (``maps``, each row's backbone map, for the cell term)."""
        rounds = self.booster.best_iteration
        terms = Terms(self.linear, self.cells)
        if terms.empty:
            return np.asarray(self.booster.predict(x, num_iteration=rounds), dtype=float)
        raw = self.booster.predict(x, num_iteration=rounds, raw_score=True)
        return np.asarray(expit(terms.log_odds(np.asarray(raw), x, maps)), dtype=float)

    def save(self, folder: Path) -> dict[str, str]:
        """Write the booster (its scoring rounds) and its terms into a bundle folder;
        returns the manifest's ``classifier`` section."""
        self.booster.save_model(
            str(folder / BOOSTER_FILE), num_iteration=self.booster.best_iteration
        )
        section = {"file": BOOSTER_FILE, "kind": "lightgbm"}
        if self.linear is not None:
            self.linear.write(folder / LINEAR_FILE)
            section["linear"] = LINEAR_FILE
        if self.cells is not None:
            self.cells.write(folder / CELLS_FILE)
            section["cells"] = CELLS_FILE
        return section


def train_classifier(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: BoosterConfig,
    weight: np.ndarray | None = None,
    maps: tuple[np.ndarray, np.ndarray] | None = None,
) -> Classifier:
    """Fit on ``fit`` (rows weighted by ``weight`` if given), early-stopped on validation AUC.

    One booster per view of ``config.view_starts`` (all columns without views), each stopped
    on its own; with ``config.linear`` also one logistic probe per view. The boosters are merged
    into one whose raw score is their mean, halved when the probes' mean (halved too) is added,
    so the served log-odds average the two models; the merge is checked on the validation rows
    (:mod:`ensemble`). With ``config.cells`` a cell probe is fitted on ``maps`` (the fit and
    validation rows' backbone maps) and the members mixed by :func:`_mixed`."""
    starts = config.view_starts or (0,)
    members = [
        _fit_one(x_fit[:, view], y_fit, x_val[:, view], y_val, config, weight)
        for view in ensemble.view_columns(starts, x_fit.shape[1])
    ]
    if config.cells:
        if maps is None or len(maps[0]) != len(x_fit) or len(maps[1]) != len(x_val):
            raise TrainingError("the cell probe needs the map of every fit and validation row")
        term = fit_views(x_fit, y_fit, x_val, y_val, starts, weight) if config.linear else None
        cells = fit_cells(maps[0], y_fit, maps[1], y_val, weight)
        return _mixed(members, starts, term, cells, x_val, maps[1])
    share = 0.5 if config.linear else 1.0
    if len(members) == 1 and share == 1.0:
        return Classifier(members[0])
    booster = ensemble.merge_average(members, starts, x_fit.shape[1], weight=share)
    ensemble.check_merge(booster, members, starts, x_val, weight=share)
    if not config.linear:
        return Classifier(booster)
    term = fit_views(x_fit, y_fit, x_val, y_val, starts, weight)
    return Classifier(booster, term.scaled(share))


def _spread(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a member's validation log-odds (deviation 1 if flat)."""
    deviation = float(np.std(values))
    return float(np.mean(values)), deviation if deviation > 1e-9 else 1.0


def _mixed(
    members: list[lgb.Booster],
    starts: tuple[int, ...],
    term: LinearTerm | None,
    cells: CellTerm,
    x_val: np.ndarray,
    maps_val: np.ndarray,
) -> Classifier:
    """One classifier whose log-odds are the :data:`MEMBER_WEIGHTS` mix of the members' own,
    each standardised on the validation rows (their scales are free: a top-k of cell logits
    runs wider than a mean of trees). The offsets go into the cell term's intercept."""
    width = x_val.shape[1]
    trees = ensemble.merge_average(members, starts, width)
    tree_raw = np.asarray(trees.predict(x_val, raw_score=True), dtype=float)
    parts = [_spread(tree_raw), _spread(cells.raw(maps_val))]
    weights = [MEMBER_WEIGHTS[0], MEMBER_WEIGHTS[2]]
    if term is not None:
        parts.insert(1, _spread(term.raw(x_val)))
        weights.insert(1, MEMBER_WEIGHTS[1])
    factors = [
        w / sum(weights) / deviation for w, (_, deviation) in zip(weights, parts, strict=True)
    ]
    shift = -sum(f * mean for f, (mean, _) in zip(factors, parts, strict=True))
    booster = ensemble.merge_average(members, starts, width, weight=factors[0])
    ensemble.check_merge(booster, members, starts, x_val, weight=factors[0])
    logger.info(
        "members mixed",
        extra={"action": "mix", "weights": weights, "factors": [round(f, 4) for f in factors]},
    )
    return Classifier(
        booster,
        None if term is None else term.scaled(factors[1]),
        cells.scaled(factors[-1], shift),
    )


def _fit_one(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: BoosterConfig,
    weight: np.ndarray | None,
) -> lgb.Booster:
    """One booster on all of ``x_fit``'s columns; stop when validation AUC has not improved for
    ``early_stopping`` rounds."""
    params = {
        "objective": "binary",
        "metric": "auc",
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "bagging_fraction": config.bagging_fraction,
        "bagging_freq": 1,
        "lambda_l2": config.lambda_l2,
        "seed": config.seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": config.threads,
        "verbosity": -1,
    }
    fit = lgb.Dataset(x_fit, label=y_fit, weight=weight, free_raw_data=True)
    val = lgb.Dataset(x_val, label=y_val, reference=fit)
    booster = lgb.train(
        params,
        fit,
        num_boost_round=config.max_rounds,
        valid_sets=[val],
        callbacks=[lgb.early_stopping(config.early_stopping, verbose=False)],
    )
    logger.info(
        "booster trained",
        extra={
            "action": "lightgbm",
            "best_iteration": booster.best_iteration,
            "features": x_fit.shape[1],
        },
    )
    return booster

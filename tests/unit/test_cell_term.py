"""The cell probe: its served arithmetic, its fit (a small lesion the pooled probe misses) and
its place in the classifier's mix."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from osteoflag.errors import BundleError
from osteoflag.inference.cellterm import KIND, CellTerm, read_cells
from osteoflag.inference.terms import MissingMaps
from osteoflag.training import cellfit, probe
from osteoflag.training.classifier import MEMBER_WEIGHTS, BoosterConfig, train_classifier
from osteoflag.validation import metrics

CHANNELS, SIDE = 6, 5


def _maps(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise maps (N, 6, 5, 5); a fracture lights channel 2 in one random cell, so that the
    channel's average over the map moves by a twenty-fifth of what the cell does."""
    rng = np.random.default_rng(seed)
    maps = rng.gamma(2.0, 0.5, size=(n, CHANNELS, SIDE, SIDE)).astype(np.float32)
    y = (np.arange(n) % 2).astype(int)
    for i in np.flatnonzero(y):
        row, column = rng.integers(SIDE, size=2)
        maps[i, 2, row, column] += 3.0
    return maps, y


def _term() -> CellTerm:
    rng = np.random.default_rng(3)
    return CellTerm(0.4, rng.normal(size=CHANNELS), rng.normal(size=CHANNELS), top=3)


def test_the_term_is_the_mean_of_the_top_cell_logits_and_its_shares_add_up() -> None:
    maps, _ = _maps(7, seed=0)
    term = _term()
    cells = np.log1p(maps).reshape(7, CHANNELS, -1).transpose(0, 2, 1)
    logits = (cells - term.mean) @ term.coef
    expected = np.sort(logits, axis=1)[:, -3:].mean(axis=1) + term.intercept
    np.testing.assert_allclose(term.raw(maps), expected, atol=1e-5)
    shares = term.shares(maps)
    assert shares.shape == (7, SIDE, SIDE)
    assert ((shares != 0).reshape(7, -1).sum(axis=1) <= 3).all()
    np.testing.assert_allclose(shares.sum(axis=(1, 2)) + term.intercept, expected, atol=1e-5)
    scaled = term.scaled(2.0, -1.0)
    np.testing.assert_allclose(scaled.raw(maps), 2.0 * expected - 1.0, atol=1e-4)


def test_a_written_term_reads_back(tmp_path: Path) -> None:
    term = _term()
    term.write(tmp_path / "cells.json")
    again = read_cells(tmp_path / "cells.json", CHANNELS, SIDE * SIDE)
    maps, _ = _maps(4, seed=1)
    np.testing.assert_array_equal(again.raw(maps), term.raw(maps))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "svm"}, "kind 'svm'"),
        ({"coef": [0.1, 0.2]}, "2 coefficients, the backbone's map has 6 channels"),
        ({"top": 26}, "'top' 26 is not a count from 1 to 25"),
        ({"top": 2.5}, "'top' 2.5"),
        ({"intercept": float("nan")}, "not finite"),
        ({"mean": "zero"}, "cannot be read"),
    ],
)
def test_a_bad_term_is_refused_naming_its_file(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    term = _term()
    document = {
        "kind": KIND,
        "top": term.top,
        "intercept": term.intercept,
        "mean": term.mean.tolist(),
        "coef": term.coef.tolist(),
    } | change
    (tmp_path / "cells.json").write_text(json.dumps(document))
    with pytest.raises(BundleError, match=rf"cells\.json: .*{message}"):
        read_cells(tmp_path / "cells.json", CHANNELS, SIDE * SIDE)


def test_the_fit_finds_a_one_cell_lesion_that_the_pooled_probe_barely_sees() -> None:
    maps, y = _maps(300, seed=4)
    val, yv = _maps(200, seed=5)
    term = cellfit.fit_cells(maps, y, val, yv, top=1)
    test, yt = _maps(200, seed=6)
    cell_auc = metrics.auc(yt, term.raw(test))
    pooled = maps.mean(axis=(2, 3))
    linear, _ = probe.fit_view(pooled, y, val.mean(axis=(2, 3)), yv)
    pooled_auc = metrics.auc(yt, linear.raw(test.mean(axis=(2, 3))))
    assert cell_auc > 0.9
    assert cell_auc > pooled_auc + 0.05
    assert int(np.argmax(term.coef)) == 2


def test_the_mix_weighs_each_members_standardised_log_odds(tmp_path: Path) -> None:
    maps, y = _maps(500, seed=7)
    rng = np.random.default_rng(8)
    x = np.concatenate([maps.mean(axis=(2, 3)), rng.normal(size=(500, 4))], axis=1)
    config = BoosterConfig(min_data_in_leaf=5, max_rounds=60, early_stopping=10, linear=True)
    mixed = replace(config, cells=True)
    fit, val = slice(0, 350), slice(350, 500)
    fitted = train_classifier(x[fit], y[fit], x[val], y[val], mixed, maps=(maps[fit], maps[val]))
    assert fitted.linear is not None and fitted.cells is not None
    booster = fitted.booster
    parts = [
        booster.predict(x[val], raw_score=True),
        fitted.linear.raw(x[val]),
        fitted.cells.raw(maps[val]),
    ]
    weights = np.array(MEMBER_WEIGHTS) / sum(MEMBER_WEIGHTS)
    np.testing.assert_allclose([np.std(p) for p in parts], weights, rtol=1e-6)
    assert sum(np.mean(p) for p in parts) == pytest.approx(0.0, abs=1e-6)
    expected = expit(sum(parts))
    np.testing.assert_allclose(fitted.predict(x[val], maps[val]), expected, atol=1e-9)
    with pytest.raises(MissingMaps, match="needs each row's map"):
        fitted.predict(x[val])
    section = fitted.save(tmp_path)
    assert section["cells"] == "cells.json"
    assert read_cells(tmp_path / "cells.json", CHANNELS, SIDE * SIDE).top == cellfit.TOP

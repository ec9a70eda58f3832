"""Recipe experiments on tiny data: every kind of change runs on every protocol, and the model
card renders the rows as a table against the baseline."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from osteoflag.training import recipes
from osteoflag.training.backbones import FeatureLayout
from osteoflag.training.card_recipes import recipe_lines
from osteoflag.training.classifier import BoosterConfig
from tests.helpers.training_data import write_images

SMALL = recipes.Trunk(size=32)
LEVELS = replace(SMALL, layout=FeatureLayout.B345)
TWO_VIEW = replace(LEVELS, size=40, small_view=32)
PROTOCOLS = ("osteoai_to_multiregion", "multiregion_to_osteoai", "cv_osteoai")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[recipes.RecipeData, Path]:
    root = tmp_path_factory.mktemp("recipes")
    write_images(root / "osteoai", ("train", "val", "test"), 10, seed=0, conflicting=True)
    write_images(root / "multiregion", (None,), 12, seed=1)
    work = root / "work"
    work.mkdir()
    return recipes.load_data(root / "osteoai", root / "multiregion", work), work


def test_every_kind_of_recipe_scores_every_protocol(
    data: tuple[recipes.RecipeData, Path],
) -> None:
    loaded, work = data
    assert loaded.conflicting.any()  # the shared stem carries both labels
    chosen = [
        recipes.Recipe(recipes.BASELINE, trunks=(SMALL,)),
        recipes.Recipe("both", trunks=(SMALL,), both_sources=True, copies=1),
        recipes.Recipe("drop", trunks=(SMALL,), conflicts=recipes.Conflicts.DROP),
        recipes.Recipe("majority", trunks=(SMALL,), conflicts=recipes.Conflicts.MAJORITY),
        recipes.Recipe("lighter", trunks=(SMALL,), conflicts=recipes.Conflicts.DOWNWEIGHT),
        recipes.Recipe("average", trunks=(SMALL, recipes.Trunk(size=40)), average_scores=True),
        recipes.Recipe("concat", trunks=(SMALL, recipes.Trunk(size=40)), tta_flip=True),
        recipes.Recipe("levels", trunks=(LEVELS,)),
        recipes.Recipe("two_view", trunks=(TWO_VIEW,)),
        recipes.Recipe("two_view_linear", trunks=(TWO_VIEW,), linear=True),
    ]
    config = BoosterConfig(min_data_in_leaf=3, max_rounds=30, early_stopping=10)
    rows = recipes.run_all(loaded, chosen, work, config, folds=3)
    assert [r["recipe"]["name"] for r in rows] == [r.name for r in chosen]  # type: ignore[index]
    for row in rows:
        for key in PROTOCOLS:
            assert 0.0 <= float(row[key]) <= 1.0  # type: ignore[arg-type]
    assert "cv_multiregion" in rows[0] and "cv_multiregion" in rows[1]
    assert "cv_multiregion" not in rows[2]
    assert (work / "recipes.json").is_file()
    table = recipe_lines(rows)
    assert table[0].startswith("## Recipes")
    body = [line for line in table if line.startswith("| ")]
    assert len(body) == 1 + len(chosen)
    assert "(+" in body[-1] or "(-" in body[-1]  # differences to the baseline
    judged = [line for line in table if line.startswith("- ")]
    named = [line.rsplit(": ", 1)[1].rstrip(".").split(", ") for line in judged]
    assert sorted(n for names in named for n in names if n != "none") == sorted(
        r.name for r in chosen[1:]
    )  # every change under exactly one verdict
    store = recipes.FeatureStore(loaded, work, threads=1)  # the run's graphs and cache
    rows_all = np.arange(len(loaded.samples))
    widths = {t.tag: store.get(t, 0, rows_all).shape[1] for t in (SMALL, LEVELS, TWO_VIEW)}
    levels = 2 * (80 + 112 + 1280)
    assert widths == {SMALL.tag: 2 * 1280, LEVELS.tag: levels, TWO_VIEW.tag: levels + 2 * 1280}


def test_larger_lite_recipes_change_only_the_backbone_and_size() -> None:
    base = recipes.RECIPES[recipes.BASELINE]
    for name, size in (("lite1", 240), ("lite2", 260)):
        recipe = recipes.RECIPES[name]
        assert replace(recipe, name=base.name, trunks=base.trunks) == base
        (trunk,) = recipe.trunks
        assert trunk.architecture.value == f"efficientnet_{name}" and trunk.size == size
        assert replace(trunk, architecture=base.trunks[0].architecture, size=224) == base.trunks[0]
        assert trunk.tag == f"efficientnet_{name}_{size}_stretch_b5"

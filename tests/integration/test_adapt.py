"""``osteoflag adapt`` as a subprocess: a site where the base head is poor, refitted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest

from osteoflag.inference.bundle import load_bundle, sha256_file, write_manifest
from osteoflag.inference.cellterm import CellTerm, read_cells
from osteoflag.inference.linear import LinearTerm, read_linear
from osteoflag.inference.maps import add_maps_to_bundle
from osteoflag.inference.predictor import Predictor
from osteoflag.training.dataset import discover
from osteoflag.validation.adapt import platt
from osteoflag.validation.folds import group_folds
from osteoflag.validation.scoring import score_samples
from testkit.daemon import base_sections, osteoflag, write_config
from testkit.tiny_bundle import build_bundle
from tests.helpers.bundles import name_classifier_part
from tests.helpers.site_data import write_site
from tests.helpers.trees import split_columns


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapt")
    build_bundle(root / "bundle")
    write_site(root / "site", per_class=40)
    write_site(root / "small", per_class=12, seed=1)
    base = root / "base-source"
    write_site(root / "base-raw", per_class=40, seed=2)
    for split, (start, stop) in {"train": (0, 30), "test": (30, 40)}.items():
        for label, name in ((1, "fracture"), (0, "nofracture")):
            (base / split / name).mkdir(parents=True)
            for index in range(start, stop):
                image = root / "base-raw" / "images" / f"{label}-{index:03d}.dcm"
                shutil.copy(image, base / split / name)
    write_config(root, base_sections(root, root / "bundle"))
    return root


def _adapt(folder: Path, out: str, *extra: str, data: str = "site", bundle: str = "bundle") -> Any:
    return osteoflag(
        "adapt",
        "--bundle",
        str(folder / bundle),
        "--data",
        str(folder / data / "images"),
        "--labels",
        str(folder / data / "labels.csv"),
        "--out",
        str(folder / out),
        "--site",
        "north",
        *extra,
        config=folder / "osteoflag.toml",
        timeout=300,
    )


@pytest.fixture(scope="module")
def adapted(folder: Path) -> tuple[dict[str, Any], Path]:
    done = _adapt(folder, "north", "--base-data", str(folder / "base-source"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), folder / "north"


def test_adapted_bundle_beats_the_base_on_the_site(adapted: tuple[dict[str, Any], Path]) -> None:
    summary, out = adapted
    assert summary["site_auc_adapted"] > max(0.9, summary["site_auc_base"] + 0.1)
    assert summary["site_auc_mean_adapted"] > summary["site_auc_mean_base"]
    bundle = load_bundle(out)  # every hash verified
    assert bundle.model_id == "tiny-test@0.0.1+site.north"
    assert bundle.threshold == pytest.approx(summary["threshold"])
    assert summary["base_source_test"]["n"] == 20


def test_backbone_kept_and_data_stated(adapted: tuple[dict[str, Any], Path], folder: Path) -> None:
    _, out = adapted
    manifest = load_bundle(out).manifest
    assert sha256_file(out / "backbone.onnx") == sha256_file(folder / "bundle" / "backbone.onnx")
    site = manifest.training_data["site"]
    assert (site["name"], site["images"], site["fracture"], site["groups"]) == ("north", 80, 40, 40)
    assert manifest.training_data["mixed_with"]["images"] == 60
    assert manifest.training_data["adapted_from"]["model"] == "tiny-test@0.0.1"
    assert len(manifest.metrics["site_cv"]["folds"]) == 5
    card = (out / "MODEL_CARD.md").read_text()
    assert "tiny-test 0.0.1+site.north" in card and "For research use only" in card
    assert "Grouped 5-fold cross-validation on the site" in card
    assert "On the base bundle's own source" in card


def test_validate_reads_the_adapted_bundle(
    adapted: tuple[dict[str, Any], Path], folder: Path
) -> None:
    _, out = adapted
    done = osteoflag(
        "validate",
        "--bundle",
        str(out),
        "--data",
        str(folder / "site" / "images"),
        "--labels",
        str(folder / "site" / "labels.csv"),
        "--json",
        config=folder / "osteoflag.toml",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "tiny-test@0.0.1+site.north"


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("bundle", "is the base bundle; adapt never overwrites it"),
        ("site", "already exists; choose a new folder"),
    ],
)
def test_never_overwrites(folder: Path, out: str, message: str) -> None:
    before = sha256_file(folder / "bundle" / "manifest.json")
    done = _adapt(folder, out)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"osteoflag: --out {folder / out}: {message}"
    assert sha256_file(folder / "bundle" / "manifest.json") == before


def test_too_few_site_images_refused_in_numbers(folder: Path) -> None:
    done = _adapt(folder, "never", data="small")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "osteoflag: adapt: the site data have 12 fracture images in 6 groups and 12 nofracture "
        "images in 6 groups; refitting needs at least 20 images in 10 groups of each label "
        "(5-fold grouped cross-validation)"
    )
    assert not (folder / "never").exists()
    assert not any(p.name.startswith(".never") for p in folder.iterdir())


def test_bad_site_name(folder: Path) -> None:
    done = osteoflag(
        "adapt",
        "--bundle",
        str(folder / "bundle"),
        "--data",
        str(folder / "site" / "images"),
        "--out",
        str(folder / "x"),
        "--site",
        "North Wing",
        config=folder / "osteoflag.toml",
    )
    assert done.returncode == 2
    assert "--site 'North Wing': use 1-24 lower-case letters" in done.stderr


def _variant(folder: Path, name: str, **sections: Any) -> str:
    """A copy of the tiny bundle with manifest ``sections`` replaced; its folder name."""
    shutil.copytree(folder / "bundle", folder / name)
    manifest = load_bundle(folder / name).manifest.model_dump(
        mode="json", exclude={"files", "format_version"}
    )
    write_manifest(folder / name, **(manifest | sections))
    return name


def test_a_calibrated_base_gives_a_calibrated_adapted_bundle(folder: Path) -> None:
    calibration = {"method": "platt", "a": 2.0, "b": -0.5, "fitted_on": "test"}
    calibrated = _variant(folder, "calibrated", calibration=calibration)
    done = _adapt(folder, "north-calibrated", bundle=calibrated)
    assert done.returncode == 0, done.stderr
    adapted = load_bundle(folder / "north-calibrated").manifest
    assert adapted.calibration is not None and adapted.calibration.method == "platt"
    assert adapted.calibration.fitted_on == "site out-of-fold scores"
    assert (adapted.calibration.a or 0) > 0
    pooled = adapted.metrics["site_cv"]["pooled"]["adapted"]
    assert pooled["threshold"] == adapted.threshold.value


def test_a_base_boosted_by_views_is_refitted_by_the_same_views(folder: Path) -> None:
    features = load_bundle(folder / "bundle").manifest.features
    start = features.count // 2
    views = _variant(folder, "views", features=features.model_dump() | {"views": [0, start]})
    done = _adapt(folder, "north-views", bundle=views)
    assert done.returncode == 0, done.stderr
    adapted = load_bundle(folder / "north-views")
    assert adapted.manifest.features.views == (0, start)
    trees = [t for t in split_columns(lgb.Booster(model_file=str(adapted.classifier_path))) if t]
    assert trees and all(max(t) < start or min(t) >= start for t in trees)
    assert all(fold["rounds"] > 0 for fold in adapted.manifest.metrics["site_cv"]["folds"])


def test_a_base_with_a_linear_term_gets_a_refitted_one(folder: Path) -> None:
    base = load_bundle(folder / "bundle").manifest
    count = base.features.count
    shutil.copytree(folder / "bundle", folder / "linear")
    flat = LinearTerm(0.0, np.zeros(count), np.zeros(count))  # adds nothing: the base's scores
    flat.write(folder / "linear" / "linear.json")
    name_classifier_part(folder / "linear", "linear", "linear.json")
    done = _adapt(folder, "north-linear", bundle="linear")
    assert done.returncode == 0, done.stderr
    adapted = load_bundle(folder / "north-linear")
    assert adapted.manifest.classifier.linear == "linear.json"
    term = read_linear(folder / "north-linear" / "linear.json", count)
    assert np.abs(term.coef).max() > 0  # fitted on the site, not copied
    pooled = adapted.manifest.metrics["site_cv"]["pooled"]
    assert pooled["adapted"]["auc"] > pooled["base"]["auc"]


def test_a_base_with_a_cell_term_gets_a_refitted_one(folder: Path) -> None:
    add_maps_to_bundle(folder / "bundle", folder / "cells")
    predictor = Predictor(load_bundle(folder / "cells"))
    height, width = predictor.bundle.input_spec.size
    channels = predictor.maps(np.zeros((1, 3, height, width), dtype=np.float32)).shape[1]
    flat = CellTerm(0.0, np.zeros(channels), np.zeros(channels), top=1)  # adds nothing
    flat.write(folder / "cells" / "cells.json")
    name_classifier_part(folder / "cells", "cells", "cells.json")
    done = _adapt(folder, "north-cells", "--base-data", str(folder / "base-source"), bundle="cells")
    assert done.returncode == 0, done.stderr
    adapted = load_bundle(folder / "north-cells")
    assert adapted.manifest.classifier.cells == "cells.json"
    term = read_cells(
        folder / "north-cells" / "cells.json",
        channels,
        predictor.map_cells[0] * predictor.map_cells[1],
    )
    assert np.abs(term.coef).max() > 0  # fitted on the site, not copied
    pooled = adapted.manifest.metrics["site_cv"]["pooled"]
    assert pooled["adapted"]["auc"] > pooled["base"]["auc"]
    summary = json.loads(done.stdout)
    assert summary["base_source_test"]["n"] == 20


def test_platt_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.01, 0.99, 20000)
    logit = np.log(scores / (1 - scores))
    truth = 1 / (1 + np.exp(-(1.5 * logit - 0.3)))
    y = (rng.uniform(size=scores.size) < truth).astype(int)
    fitted = platt(y, scores)
    assert fitted.a == pytest.approx(1.5, abs=0.1) and fitted.b == pytest.approx(-0.3, abs=0.1)


def test_copies_of_one_image_stay_on_one_side_of_every_fold(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    """A site export holding one radiograph under two names, without a group column: the copy
    must not be scored by a fold fitted on the original (that CV reported AUC 0.86 on labels
    unrelated to the images, each saved three times, against 0.56 without copies)."""
    site = tmp_path / "site"
    write_site(site, per_class=8)
    images = site / "images"
    rows = ["file,label"]
    for path in sorted(images.iterdir()):
        label = "fracture" if path.name.startswith("1-") else "nofracture"
        shutil.copy(path, images / f"copy-{path.name}")
        rows += [f"{path.name},{label}", f"copy-{path.name},{label}"]
    (site / "by-file.csv").write_text("\n".join(rows) + "\n")
    samples = discover(images, labels=site / "by-file.csv")
    scored = score_samples(Predictor(load_bundle(tiny_bundle), threads=1), samples)
    groups = scored.groups
    assert len(set(groups)) == 16
    names = [s.path.name.removeprefix("copy-") for s in scored.samples]
    for fit, test in group_folds(scored.labels, groups, 4):
        assert not {names[i] for i in fit} & {names[i] for i in test}

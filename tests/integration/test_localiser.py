"""``osteoflag add-localiser``: a localiser fitted on boxes finds a bright blob where the box is.

A tiny real bundle (ONNX backbone with its map output, LightGBM) and synthetic radiographs:
ramps and noise with one bright blob inside each image's only box. The localiser fitted on
them must point at the blob on images it never saw, the copy must be hash-pinned like every
bundle file, and the predictor must take its regions from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteoflag.errors import BundleError
from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.cells import Tiling, cell_features
from osteoflag.inference.localiser import (
    LOCALISER_FILE,
    POSITION_FEATURES,
    input_count,
    load_localiser,
    mirrored,
    resized,
)
from osteoflag.inference.maps import add_maps_to_bundle
from osteoflag.inference.pixels import DisplayImage, InputSpec, ResizeMode, model_input
from osteoflag.inference.predictor import Predictor
from osteoflag.training.add_localiser import add_localiser_to_bundle
from osteoflag.training.localisation import Case
from osteoflag.training.localiser import Grid, cell_dataset, default_tiles, fit_cells
from testkit.boxes import COLUMNS, HALF_BOX, ROWS, blob_radiograph, boxes_folder
from testkit.daemon import osteoflag, write_config
from testkit.tiny_bundle import build_bundle


@pytest.fixture(scope="module")
def localised(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    """A flag-everything tiny bundle with maps, and its copy with a localiser."""
    root = tmp_path_factory.mktemp("localiser")
    add_maps_to_bundle(build_bundle(root / "tiny", threshold=0.0), root / "maps")
    boxes_folder(root / "boxes", 40, seed=1)
    figures = add_localiser_to_bundle(root / "maps", root / "boxes", root / "localised")
    return root / "maps", root / "localised", figures


def test_the_localiser_finds_the_blob_on_unseen_images(
    tmp_path: Path, localised: tuple[Path, Path, dict[str, object]]
) -> None:
    _, bundle, figures = localised
    cv = figures["all"]
    assert isinstance(cv, dict)
    assert cv["localiser"]["hit"] >= 0.8 > cv["centre"]["hit"]  # cross-validated, grouped
    flagged = figures["flagged"]  # the bundle flags everything (threshold 0)
    assert isinstance(flagged, dict) and flagged["n"] == cv["n"] == 40
    predictor = Predictor(load_bundle(bundle))
    assert predictor.localiser is not None
    hits = 0
    for path, (cx, cy) in boxes_folder(tmp_path / "unseen", 12, seed=7):
        pixels = np.asarray(Image.open(path), dtype=np.float32) / 255.0
        [prediction] = predictor.predict([DisplayImage(pixels)])
        assert prediction.region is not None
        x0, y0, x1, y1 = prediction.region.box
        assert 0 <= x0 <= x1 < COLUMNS and 0 <= y0 <= y1 < ROWS
        px, py = prediction.region.peak
        hits += abs(px - cx) <= HALF_BOX and abs(py - cy) <= HALF_BOX
    assert hits >= 10


def test_the_predictor_takes_regions_from_the_localiser(
    localised: tuple[Path, Path, dict[str, object]],
) -> None:
    maps, bundle, _ = localised
    with_localiser, evidence_only = Predictor(load_bundle(bundle)), Predictor(load_bundle(maps))
    assert with_localiser.localiser is not None and evidence_only.localiser is None
    spec = with_localiser.bundle.input_spec
    displays = [DisplayImage(blob_radiograph(np.random.default_rng(seed))[0]) for seed in range(8)]
    served = with_localiser.predict(displays)
    for display, prediction in zip(displays, served, strict=True):
        expected = with_localiser.localiser.region(
            display, spec, lambda b: with_localiser.run(b)[1]
        )
        assert prediction.region == expected and expected is not None
    # without the displays (sizes only), the classifier's evidence map gives the region
    inputs = [model_input(display, spec) for display in displays]
    fallback = with_localiser.predict_inputs(inputs, [display.size for display in displays])
    evidence = evidence_only.predict(displays)
    assert [p.region for p in fallback] == [p.region for p in evidence]
    assert any(p.region is not None for p in evidence)
    assert [p.region for p in served] != [p.region for p in evidence]


def test_the_localiser_file_is_pinned_by_the_manifest(
    tmp_path: Path, localised: tuple[Path, Path, dict[str, object]]
) -> None:
    _, bundle, _ = localised
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["localiser"]["file"] == LOCALISER_FILE
    assert manifest["localiser"]["cross_validation"]["folds"] == 5
    assert LOCALISER_FILE in manifest["files"]
    assert "## Localiser" in (bundle / "MODEL_CARD.md").read_text()
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in bundle.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    document = json.loads((copy / LOCALISER_FILE).read_text())
    document["intercept"] += 1.0
    (copy / LOCALISER_FILE).write_text(json.dumps(document))
    with pytest.raises(BundleError, match=r"localiser\.json: SHA-256"):
        load_bundle(copy)
    del manifest["files"][LOCALISER_FILE]
    (copy / LOCALISER_FILE).unlink()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"localiser file 'localiser\.json' has no entry"):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("boxes_from", "out", "extra", "says"),
    [
        ("boxes", "bundle", (), "already exists"),
        ("tmp", "new", (), "images.csv"),
        ("boxes", "new", ("--tiles", "0"), "--tiles 0"),
        ("boxes", "new", ("--context", "4"), "--context 4"),
    ],
    ids=["out-exists", "no-images-csv", "no-tiles", "even-context"],
)
def test_cli_refuses_bad_usage_with_one_line(
    tmp_path: Path,
    localised: tuple[Path, Path, dict[str, object]],
    boxes_from: str,
    out: str,
    extra: tuple[str, ...],
    says: str,
) -> None:
    maps, bundle, _ = localised
    config = write_config(tmp_path, {"model": {"bundle": str(maps)}})
    boxes = tmp_path / "boxes"
    boxes_folder(boxes, 2, seed=3)
    target = bundle if out == "bundle" else tmp_path / "new"
    refused = osteoflag(
        "add-localiser", "--bundle", str(maps), "--boxes",
        str(boxes if boxes_from == "boxes" else tmp_path), "--out", str(target), *extra,
        config=config,
    )  # fmt: skip
    assert refused.returncode == 2 and says in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_too_few_radiographs_for_the_folds_is_one_line_naming_the_boxes(
    tmp_path: Path, localised: tuple[Path, Path, dict[str, object]]
) -> None:
    maps, _, _ = localised
    config = write_config(tmp_path, {"model": {"bundle": str(maps)}})
    boxes_folder(tmp_path / "boxes", 4, seed=3)  # two radiographs, two copies each
    refused = osteoflag(
        "add-localiser", "--bundle", str(maps), "--boxes", str(tmp_path / "boxes"),
        "--out", str(tmp_path / "new"), config=config,
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"osteoflag: {tmp_path / 'boxes'}: 2 radiographs cannot make 5 grouped folds; "
        "the localiser needs boxes on at least 5"
    )
    assert not (tmp_path / "new").exists()


def test_a_localiser_with_context_sees_each_cells_neighbourhood(
    tmp_path: Path, localised: tuple[Path, Path, dict[str, object]]
) -> None:
    maps, bundle, _ = localised
    figures = add_localiser_to_bundle(maps, maps.parent / "boxes", tmp_path / "ctx", context=3)
    assert figures["context"] == 3
    cv = figures["all"]
    assert isinstance(cv, dict) and cv["localiser"]["hit"] >= 0.8 > cv["centre"]["hit"]
    manifest = json.loads((tmp_path / "ctx" / "manifest.json").read_text())
    assert manifest["localiser"]["cross_validation"]["context"] == 3
    assert "3x3 neighbourhood" in (tmp_path / "ctx" / "MODEL_CARD.md").read_text()
    predictor = Predictor(load_bundle(tmp_path / "ctx"))
    plain = Predictor(load_bundle(bundle)).localiser
    assert predictor.localiser is not None and plain is not None
    assert predictor.localiser.context == 3 and plain.context == 0
    channels = plain.parts[0].model.weights.shape[0] - POSITION_FEATURES
    assert predictor.localiser.parts[0].model.weights.shape[0] == 2 * channels + POSITION_FEATURES
    display = DisplayImage(blob_radiograph(np.random.default_rng(5))[0])
    [prediction] = predictor.predict([display])
    assert prediction.region is not None


def test_a_localiser_file_from_before_context_and_passes_loads_without_them(
    tmp_path: Path, localised: tuple[Path, Path, dict[str, object]]
) -> None:
    _, bundle, _ = localised
    document = json.loads((bundle / LOCALISER_FILE).read_text())
    assert document.pop("context") == 0
    assert document.pop("mirror") is False and document.pop("others") == []
    (tmp_path / LOCALISER_FILE).write_text(json.dumps(document))
    served = Predictor(load_bundle(bundle)).localiser
    assert served is not None
    spec = load_bundle(bundle).input_spec
    older = load_localiser(tmp_path / LOCALISER_FILE, spec, served.tiling.cells)
    assert older.context == 0 and older.tiling == served.tiling
    assert not older.mirror and len(older.parts) == 1
    assert np.array_equal(older.parts[0].model.weights, served.parts[0].model.weights)


def test_a_localiser_averages_another_tiling_and_the_mirrored_image(
    tmp_path: Path, localised: tuple[Path, Path, dict[str, object]]
) -> None:
    maps, bundle, _ = localised
    plain = Predictor(load_bundle(bundle)).localiser
    assert plain is not None
    tiles = plain.tiling.tiles
    figures = add_localiser_to_bundle(
        maps, maps.parent / "boxes", tmp_path / "avg", other_tiles=[tiles + 1], mirror=True
    )
    cv = figures["all"]
    assert isinstance(cv, dict) and cv["localiser"]["hit"] >= 0.8 > cv["centre"]["hit"]
    assert (figures["mirror"], figures["other_tiles"]) == (True, [tiles + 1])
    manifest = json.loads((tmp_path / "avg" / "manifest.json").read_text())
    assert manifest["localiser"]["cross_validation"]["other_tiles"] == [tiles + 1]
    card = (tmp_path / "avg" / "MODEL_CARD.md").read_text()
    assert f"a {tiles + 1}x{tiles + 1} tiling's own model, each also on the mirrored" in card
    predictor = Predictor(load_bundle(tmp_path / "avg"))
    served = predictor.localiser
    assert served is not None and served.mirror and served.tiling == plain.tiling
    assert [part.tiling.tiles for part in served.parts] == [tiles, tiles + 1]
    assert served.passes == 2 * (tiles**2 + (tiles + 1) ** 2)
    # Every pass is also run on the mirrored image and flipped back, so the averaged map of
    # a mirrored image is the mirror of the image's map.
    display = DisplayImage(blob_radiograph(np.random.default_rng(3))[0])
    spec = predictor.bundle.input_spec
    heat = served.heat(display, spec, predictor.maps)
    assert heat.shape == served.tiling.grid
    flipped = served.heat(mirrored(display), spec, predictor.maps)
    np.testing.assert_allclose(flipped[:, ::-1], heat, rtol=1e-5, atol=1e-6)
    assert not np.allclose(heat, plain.heat(display, spec, predictor.maps), atol=1e-4)


def test_a_pass_map_is_resized_onto_the_localisers_grid() -> None:
    ramp = np.tile(np.linspace(0, 1, 4, dtype=np.float32), (4, 1))
    wider = resized(ramp, (6, 6))
    assert wider.shape == (6, 6) and wider.dtype == np.float32
    np.testing.assert_allclose(wider[0], np.linspace(0, 1, 6), atol=1e-6)  # corners aligned
    assert resized(ramp, (4, 4)) is ramp


def test_tiles_set_the_grid_the_served_localiser_runs_on(
    tmp_path: Path, localised: tuple[Path, Path, dict[str, object]]
) -> None:
    maps, bundle, figures = localised
    default = Predictor(load_bundle(bundle)).localiser
    assert default is not None
    tiles = default.tiling.tiles + 1
    finer = add_localiser_to_bundle(maps, maps.parent / "boxes", tmp_path / "finer", tiles)
    served = Predictor(load_bundle(tmp_path / "finer")).localiser
    assert served is not None and served.tiling.tiles == tiles
    assert finer["grid"] == [side // default.tiling.tiles * tiles for side in figures["grid"]]
    manifest = json.loads((tmp_path / "finer" / "manifest.json").read_text())
    assert manifest["localiser"]["cross_validation"]["grid"] == finer["grid"]


def test_tiles_are_assembled_on_one_grid() -> None:
    """Each tile's map lands at its place: with a 'backbone' that average-pools every cell,
    the tiled grid is the pooled enlarged image, overlaps included."""
    spec = InputSpec(size=(16, 16), resize_mode=ResizeMode.STRETCH)
    rng = np.random.default_rng(0)
    display = DisplayImage(rng.uniform(0, 1, (50, 70)).astype(np.float32))

    def pool(batch: np.ndarray) -> np.ndarray:
        n, c, h, w = batch.shape
        return batch.reshape(n, c, h // 4, 4, w // 4, 4).mean(axis=(3, 5))

    for tiles, stride in ((1, 16), (3, 16), (3, 8)):
        tiling = Tiling(tiles, stride, (16, 16), (4, 4))
        grid = cell_features(display, spec, tiling, pool)
        whole = model_input(display, tiling.spec(spec))[np.newaxis]
        assert grid.shape == (3, *tiling.grid)
        np.testing.assert_allclose(grid, pool(whole)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of a cell"):
        Tiling(2, 6, (16, 16), (4, 4))
    with pytest.raises(ValueError, match="gaps"):
        Tiling(2, 20, (16, 16), (4, 4))


def test_default_tiling_keeps_the_grid_near_28_cells_per_side() -> None:
    # 4 tiles of EfficientNet-Lite0's 7x7 map at 224 px, 2 of its 12x12 map at 384 px: a
    # larger input keeps the grid (and the grids' memory) near the one measured.
    assert [default_tiles((c, c)) for c in (7, 12, 14, 28, 40)] == [4, 2, 2, 1, 1]


def test_a_fold_fits_only_its_own_images_cells_from_the_shared_dataset() -> None:
    # add-localiser builds the cell inputs once; each fold picks its images' cells out of
    # them, which must give the fit a dataset of those images alone would give.
    rng = np.random.default_rng(3)
    features = rng.random((6, 4, 5, 5), dtype=np.float32)
    cases = [
        Case(Path(f"{i}.png"), f"s{i}", f"s{i}", False, ((10.0 * i, 10.0, 10.0 * i + 20, 30.0),))
        for i in range(6)
    ]
    images = np.array([0, 2, 3, 5])
    grids = (Grid(grid, (50, 60), True, 0.0) for grid in features)
    shared = fit_cells(cell_dataset(grids, cases, context=3), images)
    alone = cell_dataset(
        (Grid(features[i], (50, 60), True, 0.0) for i in images),
        [cases[i] for i in images],
        context=3,
    )
    own = fit_cells(alone)
    assert np.array_equal(shared.weights, own.weights)
    assert np.array_equal(shared.mean, own.mean) and shared.intercept == own.intercept
    assert alone.inputs.shape == (4, 25, input_count(4, 3))

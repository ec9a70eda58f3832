"""``osteoflag infer`` as a subprocess (README, Command line) on PNG, DICOM and broken files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from osteoflag.inference.maps import add_maps_to_bundle
from testkit.daemon import base_sections, osteoflag, write_config
from testkit.inference_data import dataset, dicom_from_png, png_of, radiograph, save
from testkit.tiny_bundle import _training_images, build_bundle


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, dict[str, Any]]]:
    folder = tmp_path_factory.mktemp("infer")
    build_bundle(folder / "bundle")
    images = folder / "images"
    (images / "nested").mkdir(parents=True)
    grey = radiograph(maximum=255, seed=3)
    rgb = np.stack([grey, np.clip(grey + 30, 0, 255), grey // 3], axis=-1)
    dicom_from_png(png_of(grey, images / "grey.png"), images / "grey.dcm")
    dicom_from_png(png_of(rgb, images / "rgb.png"), images / "nested" / "rgb.dcm")
    stored = radiograph(seed=4)
    save(dataset(stored, bits_stored=12), images / "mono2.dcm")
    save(dataset(4095 - stored, bits_stored=12, photometric="MONOCHROME1"), images / "mono1.dcm")
    broken = dataset(stored, bits_stored=12)
    broken.PixelData = broken.PixelData[:10]
    save(broken, images / "nested" / "broken.dcm")
    config = write_config(folder, base_sections(folder, folder / "bundle"))
    done = osteoflag("infer", str(images), "--json", config=config, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return done.returncode, {Path(line["file"]).name: line for line in lines}


def test_png_and_dicom_made_from_it_agree(results: tuple[int, dict[str, Any]]) -> None:
    _, by_name = results
    assert by_name["grey.png"]["probability"] == pytest.approx(
        by_name["grey.dcm"]["probability"], abs=1e-4
    )
    assert by_name["rgb.png"]["probability"] == pytest.approx(
        by_name["rgb.dcm"]["probability"], abs=1e-4
    )


def test_inverted_monochrome1_copy_agrees(results: tuple[int, dict[str, Any]]) -> None:
    _, by_name = results
    assert by_name["mono1.dcm"]["probability"] == pytest.approx(
        by_name["mono2.dcm"]["probability"], abs=1e-4
    )


def test_contract_fields_and_error_line(results: tuple[int, dict[str, Any]]) -> None:
    code, by_name = results
    assert code == 1
    assert set(by_name) == {"grey.png", "grey.dcm", "rgb.png", "rgb.dcm", "mono1.dcm"} | {
        "mono2.dcm",
        "broken.dcm",
    }
    assert set(by_name["broken.dcm"]) == {"file", "error"}
    assert "(7FE0,0010)" in by_name["broken.dcm"]["error"]
    good = by_name["grey.png"]
    assert set(good) == {"file", "probability", "label", "threshold", "model"}
    assert good["label"] in ("fracture", "no_fracture")
    assert good["model"] == "tiny-test@0.0.1" and good["threshold"] == 0.5
    probabilities = {
        round(line["probability"], 4) for line in by_name.values() if "error" not in line
    }
    assert len(probabilities) > 1, "the test bundle must not answer the same for every image"


def test_bad_bundle_exits_2_with_reason(tmp_path: Path) -> None:
    """A tampered ``model.bundle`` is a configuration error."""
    build_bundle(tmp_path / "bundle")
    (tmp_path / "bundle" / "classifier.txt").write_text("tampered")
    png = png_of(radiograph(maximum=255), tmp_path / "a.png")
    done = osteoflag(
        "infer",
        str(png),
        "--json",
        config=write_config(tmp_path, base_sections(tmp_path, tmp_path / "bundle")),
    )
    assert done.returncode == 2
    assert "classifier.txt" in done.stderr.strip().splitlines()[-1]


def test_region_only_for_fractures_in_source_pixels(tmp_path: Path) -> None:
    build_bundle(tmp_path / "plain")
    add_maps_to_bundle(tmp_path / "plain", tmp_path / "bundle")
    images = tmp_path / "images"
    images.mkdir()
    sizes = {}
    for index, image in enumerate(_training_images((90, 150), 16, seed=7)):
        path = images / f"{index:02d}.png"
        Image.fromarray((image * 255).astype(np.uint8)).save(path)
        sizes[path.name] = (150, 90)
    config = write_config(tmp_path, base_sections(tmp_path, tmp_path / "bundle"))
    done = osteoflag("infer", str(images), "--json", config=config, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    labels = {line["label"] for line in lines}
    assert labels == {"fracture", "no_fracture"}
    for line in lines:
        if line["label"] == "no_fracture":
            assert "region" not in line
            continue
        width, height = sizes[Path(line["file"]).name]
        (x, y), (x0, y0, x1, y1) = line["region"]["peak"], line["region"]["box"]
        assert 0 <= x0 <= x <= x1 < width and 0 <= y0 <= y <= y1 < height


def test_a_folder_with_nothing_to_classify_is_named(tmp_path: Path, tiny_bundle: Path) -> None:
    """Only hidden files and a dangling link: bad usage, one line naming the folder."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "gone.dcm").symlink_to(tmp_path / "moved.dcm")
    config = write_config(tmp_path, base_sections(tmp_path, tiny_bundle))
    done = osteoflag("infer", str(folder), "--json", config=config)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"osteoflag: infer: no files found under {folder} (hidden ones are left out)"
    )

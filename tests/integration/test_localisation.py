"""The pointing-game measurement: its scores on known boxes, and the command end to end."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteoflag.errors import TrainingError
from osteoflag.inference.maps import add_maps_to_bundle
from osteoflag.training.localisation import bootstrap, coverage, read_cases, score
from testkit.boxes import boxes_folder, film
from testkit.tiny_bundle import _training_images


def test_scores_on_known_boxes() -> None:
    boxes = [(10.0, 10.0, 30.0, 30.0)]
    mask = coverage(boxes, (100, 100))
    assert mask.sum() == 20 * 20
    inside = score((20.0, 20.0), (10.0, 10.0, 30.0, 30.0), boxes, mask)
    assert (inside.hit, inside.iou) == (1.0, 1.0)
    half = score((50.0, 50.0), (20.0, 10.0, 40.0, 30.0), boxes, mask)
    assert half.hit == 0.0
    assert half.iou == pytest.approx(200 / 600)
    # pixels 20..40 x 10..30 of the box (21 x 21); the mask holds columns 10..29, rows 10..29
    assert half.inside == pytest.approx(10 * 20 / (21 * 21))


def test_bootstrap_resamples_whole_groups() -> None:
    rng = np.random.default_rng(0)
    values = np.array([1.0, 1.0, 1.0, 0.0])
    low, high = bootstrap(values, ["a", "a", "a", "b"], rng)
    # two groups: a resample holds a (mean 1), b (0) or both (3/4): nothing else
    assert low == 0.0 and high == 1.0
    assert bootstrap(values, ["a", "b", "c", "d"], rng) != (low, high)


def _boxes_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = []
    for index, image in enumerate(_training_images((120, 90), 6, seed=3)):
        name = f"case{index}.jpg"
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / name)
        (root / "labels" / f"case{index}.txt").write_text("1 0.5 0.5 0.3 0.2\n1 0.2 0.8 0.1 0.1\n")
        near = "multiregion/fracture/x.jpg" if index == 0 else ""
        rows.append([name, f"stem{index // 2}", "test", 90, 120, 2, near])
    with (root / "images.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = "file,source_stem,roboflow_split,width,height,fracture_boxes"
        writer.writerow([*header.split(","), "near_duplicate_in_multiregion"])
        writer.writerows(rows)
    return root


def test_a_film_uploaded_under_two_stems_is_one_radiograph(tmp_path: Path) -> None:
    # Folds and bootstrap group by radiograph: a second upload of one film (mirrored, turned)
    # under its own stem must not let that film sit on both sides of a fold.
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    uploads = [film(1), film(1).transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(5), film(2)]
    rows = []
    for index, image in enumerate(uploads):
        image.save(tmp_path / "images" / f"case{index}.png")
        (tmp_path / "labels" / f"case{index}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
        rows.append([f"case{index}.png", f"stem{index}", "train", 300, 400, 1, ""])
    with (tmp_path / "images.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = "file,source_stem,roboflow_split,width,height,fracture_boxes"
        writer.writerow([*header.split(","), "near_duplicate_in_multiregion"])
        writer.writerows(rows)

    cases = read_cases(tmp_path)

    assert [case.stem for case in cases] == ["stem0", "stem1", "stem2"]
    assert [case.radiograph for case in cases] == ["stem0", "stem0", "stem2"]


def test_command_reports_every_method_and_subset(tmp_path: Path, tiny_bundle: Path) -> None:
    add_maps_to_bundle(tiny_bundle, tmp_path / "bundle")
    data = _boxes_folder(tmp_path / "boxes")
    cases = read_cases(data)
    assert cases[0].boxes[0] == pytest.approx((31.5, 48.0, 58.5, 72.0))
    assert cases[0].near_duplicate and not cases[1].near_duplicate
    command = [sys.executable, "-m", "osteoflag.training.localisation"]
    command += ["--bundle", str(tmp_path / "bundle"), "--data", str(data), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["all"]["n"] + summary["skipped_no_evidence"] == 6
    assert 0 < summary["no_multiregion_duplicates"]["n"] <= summary["all"]["n"]
    methods = summary["all"]["methods"]
    assert set(methods) == {
        "evidence",
        "evidence, averages only",
        "plain activation",
        "centre",
        "random",
    }
    # the random point's hit is the boxes' share of the image: 0.3*0.2 + 0.1*0.1 = 7 %
    assert methods["random"]["hit"]["mean"] == pytest.approx(0.07, abs=0.01)
    assert methods["centre"]["hit"]["mean"] == 1.0  # the centre lies in the first box
    assert methods["centre"]["hit_minus_centre"]["mean"] == 0.0
    for figures in methods.values():
        low, high = figures["hit"]["ci95"]
        assert low <= figures["hit"]["mean"] <= high
    assert summary["ms_per_image"]["evidence"] > 0


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("1 0.5 0.5 0.2", "not a YOLO box"),
        ("fracture 0.5 0.5 0.2 0.2", "not a YOLO box"),
        ("1 1.7 0.5 0.2 0.2", "is not inside the image"),
        ("1 0.5 0.5 -0.2 0.2", "is not inside the image"),
    ],
    ids=["four-fields", "class-name", "outside", "negative-width"],
)
def test_a_bad_box_line_is_refused_naming_its_file_and_line(
    tmp_path: Path, line: str, says: str
) -> None:
    boxes_folder(tmp_path, 2, seed=0)
    label = tmp_path / "labels" / "case1.txt"
    label.write_text(label.read_text() + "\n" + line + "\n")  # a blank line, then the bad one
    with pytest.raises(TrainingError, match=rf"^{re.escape(str(label))}:3: .*{says}"):
        read_cases(tmp_path)


def test_blank_lines_in_a_boxes_file_are_skipped(tmp_path: Path) -> None:
    boxes_folder(tmp_path, 2, seed=0)
    label = tmp_path / "labels" / "case1.txt"
    label.write_text("\n" + label.read_text() + "\n\n")
    assert [len(case.boxes) for case in read_cases(tmp_path)] == [1, 1]


def test_a_missing_boxes_file_is_refused_naming_it(tmp_path: Path) -> None:
    boxes_folder(tmp_path, 2, seed=0)
    (tmp_path / "labels" / "case1.txt").unlink()
    with pytest.raises(TrainingError, match=r"case1\.txt: the image's boxes cannot be read"):
        read_cases(tmp_path)

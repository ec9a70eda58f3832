"""``osteoflag validate`` as a subprocess on a labelled DICOM site set and on folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from osteoflag.inference.bundle import load_bundle
from testkit.daemon import base_sections, osteoflag, write_config
from testkit.inference_data import dataset, save
from testkit.tiny_bundle import build_bundle
from tests.helpers.contract import EVALUATE_KEYS
from tests.helpers.site_data import write_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("validate")
    build_bundle(folder / "bundle")
    write_site(folder / "site", per_class=30)
    return folder, write_config(folder, base_sections(folder, folder / "bundle"))


@pytest.fixture(scope="module")
def report(site: tuple[Path, Path]) -> tuple[dict[str, Any], Path]:
    folder, config = site
    out = folder / "report" / "site.md"
    done = osteoflag(
        "validate",
        "--data",
        str(folder / "site" / "images"),
        "--labels",
        str(folder / "site" / "labels.csv"),
        "--out",
        str(out),
        "--json",
        config=config,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), out


def test_json_has_the_evaluate_keys_and_the_site_figures(
    report: tuple[dict[str, Any], Path],
) -> None:
    result, _ = report
    for key in ("n", "accuracy", "auc", "sensitivity", "recall", "specificity", "threshold"):
        assert key in result
    (tn, fp), (fn, tp) = result["confusion"]
    assert result["n"] == tn + fp + fn + tp == 60
    assert tp + fn == result["positives"] == 30
    assert result["bootstrap_unit"] == "group"
    assert result["per_group"]["n"] == 30  # two images per patient group
    low, high = result["ci95"]["auc"]
    assert low <= result["auc"] <= high
    assert set(result["body_parts"]) == {"HAND", "WRIST"}
    assert sum(part["n"] for part in result["body_parts"].values()) == 60
    assert [row["target_sensitivity"] for row in result["thresholds"]] == [0.8, 0.9, 0.95]
    assert all(row["sensitivity"] >= row["target_sensitivity"] for row in result["thresholds"])
    assert sum(row["n"] for row in result["reliability"]) == 60


def test_markdown_report_with_plots(report: tuple[dict[str, Any], Path]) -> None:
    result, out = report
    text = out.read_text()
    assert "For research use only" in text
    assert f"| AUC | {result['auc']:.3f} (" in text
    assert "| HAND | 30 |" in text
    for name in ("site_roc.png", "site_reliability.png"):
        assert (out.parent / name).read_bytes().startswith(b"\x89PNG")
        assert f"![{name}]({name})" in text


def test_folders_give_what_evaluate_gives(site: tuple[Path, Path]) -> None:
    folder, config = site
    labelled = folder / "folders"
    for name in ("fracture", "nofracture"):
        (labelled / name).mkdir(parents=True)
    for index in range(30):
        shutil.copy(folder / "site/images" / f"1-{index:03d}.dcm", labelled / "fracture")
        shutil.copy(folder / "site/images" / f"0-{index:03d}.dcm", labelled / "nofracture")
    (labelled / "nofracture" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    args = ("--bundle", str(folder / "bundle"), "--data", str(labelled), "--json")
    validated = osteoflag("validate", *args, config=config)
    evaluated = osteoflag("evaluate", *args, config=config)
    assert validated.returncode == evaluated.returncode == 0, validated.stderr
    v, e = json.loads(validated.stdout), json.loads(evaluated.stdout)
    assert {key: v[key] for key in e} == e
    assert v["n"] == 60 and [s["file"] for s in v["skipped"]] == [
        str(labelled / "nofracture" / "broken.dcm")
    ]
    assert v["bootstrap_unit"] == "image"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--data", "missing"), "--data missing: not a folder"),
        (("--data", ".", "--labels", "nope.csv"), "--labels nope.csv: no such file"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    site: tuple[Path, Path], args: tuple[str, ...], message: str
) -> None:
    _, config = site
    done = osteoflag("validate", *args, config=config)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"osteoflag: {message}"


def test_pacs_export_layout_counts_every_image_and_lists_the_rest(
    site: tuple[Path, Path],
) -> None:
    """Per-study subfolders, files named by UID (no suffix, or a UID's last digits), a stray
    text file and a hidden one: every image counts, the text file is skipped with a reason."""
    folder, config = site
    labelled = folder / "export"
    for index in range(10):
        for label, name in ((1, "fracture"), (0, "nofracture")):
            study = labelled / name / f"study{index % 3}" / "series1"
            study.mkdir(parents=True, exist_ok=True)
            uid_name = f"1.2.826.0.1.3680043.8.498.{label}{index}" + ("" if index % 2 else ".101")
            shutil.copy(folder / "site/images" / f"{label}-{index:03d}.dcm", study / uid_name)
    (labelled / "fracture" / "README.TXT").write_text("exported by the PACS\n")
    (labelled / "nofracture" / ".DS_Store").write_bytes(b"\0\1hidden")
    args = ("--bundle", str(folder / "bundle"), "--data", str(labelled), "--json")
    evaluated = osteoflag("evaluate", *args, config=config)
    validated = osteoflag("validate", *args, config=config)
    assert evaluated.returncode == validated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["n"] == 20
    v = json.loads(validated.stdout)
    assert v["n"] == 20 and v["positives"] == 10
    assert v["skipped"] == [
        {
            "file": str(labelled / "fracture" / "README.TXT"),
            "reason": "not a DICOM, PNG or JPEG image",
        }
    ]
    assert "README.TXT" in evaluated.stderr


def _strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, as a strict parser does."""

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_evaluate_on_one_class_prints_strict_json_with_null_auc(site: tuple[Path, Path]) -> None:
    folder, config = site
    one = folder / "one-class" / "fracture"
    one.mkdir(parents=True)
    for index in range(3):
        shutil.copy(folder / "site/images" / f"1-{index:03d}.dcm", one)
    done = osteoflag(
        "evaluate",
        "--bundle",
        str(folder / "bundle"),
        "--data",
        str(one.parent),
        "--json",
        config=config,
    )
    assert done.returncode == 0, done.stderr
    result = _strict_json(done.stdout)
    assert result["n"] == 3 and result["auc"] is None
    assert result["specificity"] is None  # no image without a fracture to be specific on
    assert list(result) == list(EVALUATE_KEYS)


@pytest.mark.parametrize("command", ["evaluate", "validate"])
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("missing", "--data {data}: not a folder"),
        ("empty", "no images under {data}/[train|val|test/]{{fracture,nofracture}}/"),
    ],
)
def test_missing_or_empty_data_is_bad_usage(
    site: tuple[Path, Path], command: str, data: str, message: str
) -> None:
    folder, config = site
    path = folder / f"{data}-{command}"
    if data == "empty":
        (path / "fracture").mkdir(parents=True)
        (path / "fracture" / "notes.txt").write_text("no image here\n")
    args = ("--bundle", str(folder / "bundle"), "--data", str(path), "--json")
    done = osteoflag(command, *args, config=config)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "osteoflag: " + message.format(data=path)


def test_training_entry_point_exits_2_for_a_missing_bundle(tmp_path: Path) -> None:
    """``python -m osteoflag.training`` maps usage errors to 2, as its docstring says."""
    (tmp_path / "fracture").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "osteoflag.training", "evaluate", "--bundle",
         str(tmp_path / "nowhere"), "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"osteoflag: {tmp_path / 'nowhere'}")


def test_evaluate_with_no_decodable_image_is_bad_usage(site: tuple[Path, Path]) -> None:
    """Not ``n: 0`` with accuracy 0.0 and exit 0, which a script would read as a bad model."""
    folder, config = site
    broken = folder / "undecodable"
    for name in ("fracture", "nofracture"):
        (broken / name).mkdir(parents=True)
        (broken / name / "cut.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    done = osteoflag("evaluate", "--data", str(broken), "--json", config=config)
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    assert (
        done.stderr.strip().splitlines()[-1]
        == f"osteoflag: --data {broken}: no image could be decoded"
    )


def test_one_line_summary_of_a_set_without_negatives(site: tuple[Path, Path]) -> None:
    """Readings that are all fractures (early in a validation period): no specificity to
    print, which is said, not a TypeError traceback."""
    folder, config = site
    only = folder / "only-fractures" / "fracture"
    only.mkdir(parents=True)
    for index in range(5):
        shutil.copy(folder / "site/images" / f"1-{index:03d}.dcm", only)
    done = osteoflag("validate", "--data", str(only.parent), config=config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tiny-test@0.0.1 on 5 images: AUC n/a, sensitivity ")
    assert "specificity n/a at threshold 0.5000" in done.stdout


def _guarded(site: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the site's bundle given an out-of-distribution guard, fitted on 260 images."""
    folder, config = site
    bundle = tmp_path / "guarded"
    shutil.copytree(folder / "bundle", bundle)
    write_site(tmp_path / "training", per_class=130, seed=7)
    made = osteoflag(
        "ood-reference", "--bundle", str(bundle), "--data", str(tmp_path / "training/images"),
        "--labels", str(tmp_path / "training/labels.csv"), config=config,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return bundle


def _pages(folder: Path, count: int) -> list[str]:
    """``count`` pages of dark specks, nothing like a radiograph, written into ``folder``."""
    rng = np.random.default_rng(11)
    return [
        str(
            save(
                dataset(
                    np.where(rng.random((48, 48)) < 0.05, 0, 4095).astype(np.int64), bits_stored=12
                ),
                folder / f"page-{index}.dcm",
            )
        )
        for index in range(count)
    ]


def test_validate_scores_what_the_guard_lets_through_and_evaluate_scores_all(
    site: tuple[Path, Path], tmp_path: Path
) -> None:
    """A site's figures must not count images the daemon would never report: those the
    bundle's out-of-distribution guard skips are listed and counted, not scored."""
    folder, config = site
    bundle = _guarded(site, tmp_path)
    labelled = tmp_path / "labelled"
    unlike = []
    for name, label in (("fracture", 1), ("nofracture", 0)):
        (labelled / name).mkdir(parents=True)
        for index in range(30):
            shutil.copy(folder / "site/images" / f"{label}-{index:03d}.dcm", labelled / name)
        unlike += _pages(labelled / name, 3)
    args = ("--bundle", str(bundle), "--data", str(labelled), "--json")
    validated = osteoflag("validate", *args, config=config)
    evaluated = osteoflag("evaluate", *args, config=config)
    assert validated.returncode == evaluated.returncode == 0, validated.stderr

    v = json.loads(validated.stdout)
    outside = [s for s in v["skipped"] if s["reason"].startswith("outside the model's training")]
    assert set(unlike) <= {s["file"] for s in outside}
    assert v["skipped_by_guard"] == len(outside) == len(v["skipped"])
    assert v["n"] == 66 - len(outside) == sum(map(sum, v["confusion"]))
    assert json.loads(evaluated.stdout)["n"] == 66  # as the model card: every image
    adapted = osteoflag(
        "adapt", "--bundle", str(bundle), "--data", str(labelled), "--out",
        str(tmp_path / "adapted"), "--site", "guarded", "--folds", "2", config=config,
    )  # fmt: skip
    assert adapted.returncode == 0, adapted.stderr
    refitted = load_bundle(tmp_path / "adapted").manifest.training_data["site"]
    assert (refitted["images"], refitted["skipped_by_guard"]) == (66 - len(outside), len(outside))
    served = tmp_path / "served"
    for name in ("fracture", "nofracture"):
        (served / name).mkdir(parents=True)
        for path in (labelled / name).iterdir():
            if str(path) not in {s["file"] for s in outside}:
                shutil.copy(path, served / name)
    args = ("--bundle", str(bundle), "--data", str(served), "--json")
    alone = json.loads(osteoflag("evaluate", *args, config=config).stdout)
    assert {key: v[key] for key in alone} == alone
    summary = osteoflag("validate", "--bundle", str(bundle), "--data", str(labelled), config=config)
    assert f"on {v['n']} images ({len(outside)} more skipped by the guard): AUC" in summary.stdout


def test_a_set_the_guard_skips_whole_is_refused_by_validate_and_adapt(
    site: tuple[Path, Path], tmp_path: Path
) -> None:
    """Figures, or a head refitted, on no image the daemon would report would be empty or
    meaningless: exit 2 naming the folder, nothing written."""
    _, config = site
    bundle = _guarded(site, tmp_path)
    unlike = tmp_path / "unlike"
    for name in ("fracture", "nofracture"):
        (unlike / name).mkdir(parents=True)
        _pages(unlike / name, 3)
    refusal = (
        f"osteoflag: --data {unlike}: the bundle's out-of-distribution guard skips all 6 images; "
        "the daemon would report none of them"
    )
    validated = osteoflag("validate", "--bundle", str(bundle), "--data", str(unlike), config=config)
    adapted = osteoflag(
        "adapt", "--bundle", str(bundle), "--data", str(unlike), "--out",
        str(tmp_path / "adapted"), "--site", "unlike", "--folds", "2", config=config,
    )  # fmt: skip
    for done in (validated, adapted):
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1] == refusal
    assert not (tmp_path / "adapted").exists()

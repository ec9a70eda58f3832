"""``train`` on odd but legal input: an ``--out`` that is not a bundle, one label only, a set
smaller than the parity check's batch. Each gives one clear line, or a bundle that loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from osteoflag.training.__main__ import main as training_main
from tests.helpers.training_data import write_images


@pytest.mark.parametrize("out", ["data-parent", "data", "inside-data", "not-a-bundle"])
def test_an_out_that_is_not_a_bundle_is_refused_and_nothing_is_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    write_images(tmp_path / "primary", ("train", "val"), 2, seed=0)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    target = {
        "data-parent": tmp_path,
        "data": tmp_path / "primary",
        "inside-data": tmp_path / "primary" / "train" / "bundle",
        "not-a-bundle": tmp_path / "notes",
    }[out]
    before = sorted(tmp_path.rglob("*"))
    argv = ["train", "--data", str(tmp_path / "primary"), "--out", str(target)]
    assert training_main([*argv, "--work", str(tmp_path / "work")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before

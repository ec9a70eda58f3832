"""Reading labelled sets: label CSVs by file or SOPInstanceUID, groups, unsure rows, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from osteoflag.errors import TrainingError
from osteoflag.training.dataset import discover
from testkit.inference_data import dataset, radiograph, save


def _dicoms(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True)
    uids = []
    for index in range(count):
        ds = dataset(radiograph(seed=index))
        save(ds, folder / f"{index}.dcm")
        uids.append(str(ds.SOPInstanceUID))
    return uids


def test_csv_by_sop_instance_uid_with_groups_and_unsure(tmp_path: Path) -> None:
    uids = _dicoms(tmp_path / "data" / "deep", 3)
    (tmp_path / "data" / "notes.txt").write_text("not DICOM")
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "sop_instance_uid,label,group\n"
        f"{uids[0]},fracture,a\n{uids[1]},No Fracture,a\n{uids[2]},unsure,b\n"
    )
    samples = discover(tmp_path / "data", labels=labels)
    assert [(s.path.name, s.label, s.group) for s in samples] == [
        ("0.dcm", 1, "a"),
        ("1.dcm", 0, "a"),
    ]


def test_csv_by_file_in_data_folder_and_representatives(tmp_path: Path) -> None:
    _dicoms(tmp_path / "d", 2)
    (tmp_path / "d" / "labels.csv").write_text(
        "file,label,representative\n0.dcm,no_fracture,1\n1.dcm,fracture,0\n"
    )
    assert len(discover(tmp_path / "d")) == 2
    assert [s.path.name for s in discover(tmp_path / "d", representatives_only=True)] == ["0.dcm"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("file,label\n0.dcm,broken\n", "labels.csv:2: unknown label 'broken'"),
        ("file,label\nmissing.dcm,fracture\n", "labels.csv:2: image"),
        ("name,label\n0.dcm,fracture\n", "needs a 'label' column"),
        ("sop_instance_uid,label\n1.2.3,fracture\n", "no DICOM file under"),
        ("file,label\n0.dcm,fracture\n0.dcm\n", "labels.csv:3: unknown label ''"),
        ("label,file\nfracture\n", "labels.csv:2: image"),
        ("file,label\n0.dcm,fracture\n./0.dcm,nofracture\n", "labels.csv:3: .* line 2"),
        ("file,label\n0.dcm,fracture\n0.dcm,fracture\n", "labels.csv:3: .* already labelled"),
    ],
)
def test_bad_csv_names_the_row(tmp_path: Path, body: str, message: str) -> None:
    _dicoms(tmp_path / "d", 1)
    (tmp_path / "d" / "labels.csv").write_text(body)
    with pytest.raises(TrainingError, match=message):
        discover(tmp_path / "d")


def test_folder_layout_reads_groups_csv(tmp_path: Path) -> None:
    for cls in ("fracture", "nofracture"):
        (tmp_path / cls).mkdir()
        save(dataset(np.asarray(radiograph())), tmp_path / cls / "x.dcm")
    (tmp_path / "groups.csv").write_text(
        "file,group,representative\nfracture/x.dcm,g1,1\nnofracture/x.dcm,g2,0\n"
    )
    samples = discover(tmp_path, representatives_only=True)
    assert [(s.label, s.group) for s in samples] == [(1, "g1")]


def test_groups_csv_saved_by_a_spreadsheet_keeps_its_groups(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a byte-order mark, which must not rename 'file'."""
    for cls in ("fracture", "nofracture"):
        (tmp_path / cls).mkdir()
        save(dataset(np.asarray(radiograph())), tmp_path / cls / "x.dcm")
    (tmp_path / "groups.csv").write_bytes(
        "file,group\r\nfracture/x.dcm,g1\r\nnofracture/x.dcm,g2\r\n".encode("utf-8-sig")
    )
    assert [s.group for s in discover(tmp_path)] == ["g2", "g1"]


def test_groups_csv_without_a_group_column_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "fracture").mkdir()
    save(dataset(np.asarray(radiograph())), tmp_path / "fracture" / "x.dcm")
    (tmp_path / "groups.csv").write_text("file,patient\nfracture/x.dcm,g1\n")
    with pytest.raises(TrainingError, match=r"groups\.csv: needs 'file' and 'group' columns"):
        discover(tmp_path)


def test_labels_csv_in_a_legacy_encoding_names_the_file(tmp_path: Path) -> None:
    """A spreadsheet saved as Windows-1252 is refused with a reason, not a traceback."""
    _dicoms(tmp_path / "d", 1)
    (tmp_path / "d" / "labels.csv").write_bytes(
        "file,label,reader\n0.dcm,fracture,Dr Müller\n".encode("cp1252")
    )
    with pytest.raises(TrainingError, match=r"labels\.csv: labels CSV is not UTF-8 \(byte \d+\)"):
        discover(tmp_path / "d")


def _two_classes(root: Path) -> None:
    for cls in ("fracture", "nofracture"):
        (root / cls).mkdir()
        save(dataset(np.asarray(radiograph())), root / cls / "x.dcm")


@pytest.mark.parametrize("listed", ["./fracture/x.dcm", "fracture\\x.dcm"])
def test_groups_csv_paths_are_read_as_discovery_writes_them(tmp_path: Path, listed: str) -> None:
    """A leading ./ or Windows separators must not drop the row's group (a leak across folds)."""
    _two_classes(tmp_path)
    (tmp_path / "groups.csv").write_text(f"file,group\n{listed},g1\nnofracture/x.dcm,g1\n")
    assert [s.group for s in discover(tmp_path)] == ["g1", "g1"]


def test_groups_csv_rows_naming_no_file_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A subset of the set the CSV was written for keeps the groups it can apply."""
    _two_classes(tmp_path)
    (tmp_path / "groups.csv").write_text(
        "file,group\nfracture/gone.dcm,g1\nfracture/x.dcm,g1\nnofracture/x.dcm,g2\n"
    )
    assert [s.group for s in discover(tmp_path)] == ["g2", "g1"]
    (warning,) = [r for r in caplog.records if r.getMessage() == "groups.csv rows name no file"]
    assert (warning.unmatched, warning.example) == (1, "fracture/gone.dcm")  # type: ignore[attr-defined]


def test_groups_csv_naming_no_file_here_is_refused(tmp_path: Path) -> None:
    """Paths written from another root: no group would apply."""
    _two_classes(tmp_path)
    (tmp_path / "groups.csv").write_text(
        "file,group\nset/fracture/x.dcm,g1\nset/nofracture/x.dcm,g1\n"
    )
    with pytest.raises(TrainingError, match=r"groups\.csv: none of its 2 rows names a file"):
        discover(tmp_path)

"""Publishing a written folder: a failed write leaves no staging folder and the old folder as it
was; a replacement leaves only the new folder, no copy of the old one beside it."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from osteoflag.errors import UsageError
from osteoflag.publish import publish, rewriting, staging


class WriterFailed(Exception):
    """What a writer raises halfway through, in these tests."""


def _old_bundle(out: Path) -> dict[str, bytes]:
    (out / "sub").mkdir(parents=True)
    (out / "manifest.json").write_text('{"version": "old"}')
    (out / "sub" / "backbone.onnx").write_bytes(b"old weights")
    return _contents(out)


def _contents(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _write_half(folder: Path) -> None:
    (folder / "backbone.onnx").write_bytes(b"new weights")
    raise WriterFailed("disk full halfway")


def _write_new(folder: Path) -> None:
    (folder / "backbone.onnx").write_bytes(b"new weights")
    (folder / "manifest.json").write_text('{"version": "new"}')


@pytest.mark.parametrize("replace", [False, True])
def test_a_failed_write_leaves_no_staging_and_the_old_folder_intact(
    tmp_path: Path, replace: bool
) -> None:
    out = tmp_path / "bundle"
    before = _old_bundle(out)
    with pytest.raises(WriterFailed), staging(out) as folder:
        assert folder.parent == tmp_path and folder.is_dir()
        _write_half(folder)
        publish(folder, out, replace=replace)
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]
    assert _contents(out) == before


def test_a_failed_first_write_leaves_nothing_at_all(tmp_path: Path) -> None:
    out = tmp_path / "models" / "bundle"
    with pytest.raises(WriterFailed), staging(out) as folder:
        _write_half(folder)
        publish(folder, out)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_replacement_leaves_only_the_new_folder(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    _old_bundle(out)
    with staging(out) as folder:
        _write_new(folder)
        publish(folder, out, replace=True)
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]
    assert _contents(out) == {
        "backbone.onnx": b"new weights",
        "manifest.json": b'{"version": "new"}',
    }


def test_a_new_folder_takes_its_name_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    out = tmp_path / "models" / "bundle"
    with staging(out) as folder:
        _write_new(folder)
        publish(folder, out)
    assert [path.name for path in (tmp_path / "models").iterdir()] == ["bundle"]
    assert _contents(out)["backbone.onnx"] == b"new weights"


def test_leaving_the_block_unpublished_removes_the_staging(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with staging(out) as folder:  # a writer deciding the result is not worth keeping
        _write_new(folder)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_made_meanwhile_is_not_replaced_unless_asked(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(UsageError, match=f"^{out}: appeared while"), staging(out) as folder:
        _write_new(folder)
        before = _old_bundle(out)  # another process took the name after the command checked
        publish(folder, out)
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]
    assert _contents(out) == before


def test_the_old_folder_is_put_back_when_the_new_one_cannot_take_its_name(
    tmp_path: Path,
) -> None:
    out = tmp_path / "bundle"
    before = _old_bundle(out)
    with pytest.raises(OSError, match="Invalid argument"):
        publish(tmp_path, out, replace=True)  # a folder cannot take a name inside itself
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]
    assert _contents(out) == before


def test_a_symlinked_folder_is_replaced_where_it_points_and_the_link_kept(
    tmp_path: Path,
) -> None:
    real = tmp_path / "v1"
    _old_bundle(real)
    link = tmp_path / "current"
    link.symlink_to(real)
    with staging(link) as folder:
        _write_new(folder)
        publish(folder, link, replace=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["current", "v1"]
    assert link.is_symlink() and link.resolve() == real
    assert _contents(real)["backbone.onnx"] == b"new weights"


def test_rewriting_a_folder_changes_it_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    before = _old_bundle(out)
    with pytest.raises(WriterFailed), rewriting(out) as copy:
        assert _contents(copy) == before
        (copy / "manifest.json").write_text('{"version": "half"}')
        raise WriterFailed("the new manifest is invalid")
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]
    assert _contents(out) == before
    with rewriting(out) as copy:
        (copy / "ood_reference.npz").write_bytes(b"anchors")
    assert [path.name for path in tmp_path.iterdir()] == ["bundle"]
    assert _contents(out) == {**before, "ood_reference.npz": b"anchors"}


def test_a_killed_writers_staging_folder_goes_with_the_next_write(tmp_path: Path) -> None:
    ended = subprocess.Popen(["true"])  # a process id no running process holds any more
    ended.wait()
    out = tmp_path / "bundle"
    host = socket.gethostname()
    left = tmp_path / f".bundle.partial-{host}-{ended.pid}"
    (left / "sub").mkdir(parents=True)  # what a writer killed mid-way left
    running = tmp_path / f".bundle.partial-{host}-{os.getppid()}"  # another writer at work
    running.mkdir()
    # A writer on another host sharing the folder: its process id means nothing here.
    elsewhere = tmp_path / f".bundle.partial-{host}.other-{ended.pid}"
    elsewhere.mkdir()
    with staging(out) as folder:
        assert folder.name == f".bundle.partial-{host}-{os.getpid()}"
        _write_new(folder)
        publish(folder, out)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["bundle", running.name, elsewhere.name]
    )

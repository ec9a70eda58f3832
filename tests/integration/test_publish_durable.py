"""A published folder survives a power loss: its files and folders reach the disk before the
rename that names it, and the rename itself after. Observed as the system calls a real process
makes (strace), since only a power cut would show it otherwise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

_WRITER = """
import sys
from pathlib import Path
from osteoflag.publish import publish, staging

out = Path(sys.argv[1])
replace = out.exists()
with staging(out) as folder:
    (folder / "sub").mkdir()
    (folder / "manifest.json").write_text("{}")
    (folder / "sub" / "backbone.onnx").write_bytes(b"weights")
    publish(folder, out, replace=replace)
"""

# Every process and thread, paths of descriptors shown, only the calls that order the writes.
_STRACE = ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,rename,renameat,renameat2"]


def _calls(tmp_path: Path, out: Path) -> list[tuple[str, str]]:
    """(system call, its first path argument) of the writer, in order."""
    log = tmp_path / "strace.log"
    subprocess.run(
        [*_STRACE, "-o", str(log), sys.executable, "-c", _WRITER, str(out)],
        check=True,
        cwd=Path(__file__).parents[2],
    )
    calls = []
    for line in log.read_text().splitlines():
        found = re.search(r"\b(fsync|rename\w*)\((.*)\)\s+= 0", line)
        if found:
            path = re.search(r'<([^>]*)>|"([^"]*)"', found[2])
            assert path is not None, line
            calls.append((found[1], path[1] or path[2]))
    return calls


@pytest.mark.parametrize("replace", [False, True])
def test_a_published_folder_is_on_disk_before_and_after_its_rename(
    tmp_path: Path, replace: bool
) -> None:
    out = tmp_path / "bundle"
    if replace:
        out.mkdir()
        (out / "manifest.json").write_text('{"version": "old"}')
    calls = _calls(tmp_path, out)
    renamed = [
        i
        for i, (call, path) in enumerate(calls)
        if call.startswith("rename") and ".partial-" in path
    ]
    assert len(renamed) == 1, calls
    before, after = calls[: renamed[0]], calls[renamed[0] + 1 :]
    synced = {
        Path(path).relative_to(tmp_path).parts[1:] for call, path in before if call == "fsync"
    }
    assert {(), ("sub",), ("manifest.json",), ("sub", "backbone.onnx")} <= synced
    assert ("fsync", str(tmp_path)) in after  # the rename itself
    assert (out / "sub" / "backbone.onnx").read_bytes() == b"weights"

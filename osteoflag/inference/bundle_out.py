"""Where a command may write a new bundle: never inside the bundle it reads, nor around it.

:func:`osteoflag.inference.bundle.load_bundle` refuses a folder holding a file its manifest does
not list, so a new bundle (or its staging folder) written inside the base would leave the base
unloadable, and the daemon serving it would not start.
"""

from __future__ import annotations

from pathlib import Path

from osteoflag.errors import UsageError


def check_apart(base: Path, out: Path) -> None:
    """Refuse an ``out`` inside ``base``, or a ``base`` inside ``out`` (exit 2, naming both).

    ``out`` equal to ``base`` is an existing folder, which every bundle writer refuses itself.
    """
    base_path, out_path = base.resolve(), out.resolve()
    if out_path == base_path:
        return
    if out_path.is_relative_to(base_path):
        raise UsageError(f"--out {out}: is inside --bundle {base}; choose a folder outside it")
    if base_path.is_relative_to(out_path):
        raise UsageError(f"--out {out}: holds --bundle {base}; choose a folder outside it")

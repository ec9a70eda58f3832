"""Expanding command-line paths into files, the same way for every command."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path


def walk_files(paths: Iterable[Path]) -> Iterator[Path]:
    """The given files, then every file under the given folders in sorted order.

    Hidden files and anything inside hidden folders (``.git``, partial writes) are skipped.
    """
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                relative = child.relative_to(path).parts
                if child.is_file() and not any(part.startswith(".") for part in relative):
                    yield child
        else:
            yield path

"""Editing a test bundle's manifest the way a bundle writer would."""

from __future__ import annotations

from pathlib import Path

from osteoflag.inference.bundle import read_manifest, write_manifest


def name_classifier_part(folder: Path, key: str, name: str) -> Path:
    """Make the bundle in ``folder`` name ``name`` (a file already in it) as its classifier's
    ``key`` part (``linear``, ``cells``), every hash recomputed; returns ``folder``."""
    fields = read_manifest(folder).model_dump(mode="json", exclude={"files", "format_version"})
    fields["classifier"][key] = name
    write_manifest(folder, **fields)
    return folder

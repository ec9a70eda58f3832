"""Flushing to the disk what a rename is about to make visible.

A rename is durable only once the folder holding the name is flushed, and it names complete
data only when the file was flushed before it: both the received instances
(``pacs.storage``) and the published bundles (``publish``) need the two steps.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (the names created or renamed in it)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

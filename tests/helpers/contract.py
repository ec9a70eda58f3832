"""What users' scripts read, spelled out here rather than taken from the code under test."""

from __future__ import annotations

from typing import Final

#: The keys of ``osteoflag evaluate --json``, in the order it prints them.
EVALUATE_KEYS: Final = (
    "n",
    "accuracy",
    "auc",
    "precision",
    "recall",
    "specificity",
    "f1",
    "threshold",
    "confusion",
)

"""The model's figures for the dashboard: its own validation, grouped CV and another source.

A bundle's validation AUC is measured on the source it was trained on and overstates how it
does elsewhere, so the dashboard puts it beside the leakage-free and cross-source figures, and
beside the site's own agreement once radiologists have recorded feedback. Figures are read from
the manifest's ``metrics``, then from the bundle's ``metrics.json`` (training writes it, hashed
in the manifest like every file); a bundle with neither shows "not recorded".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from osteoflag.inference.bundle import Bundle

METRICS_FILE = "metrics.json"

#: (label, where the AUC is, where its 95% interval is), tried in the manifest then the file.
FIGURES: tuple[tuple[str, tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]], ...] = (
    ("own source, validation split", (("validation", "auc"),), ()),
    (
        "own source, grouped cross-validation",
        (("cv", "auc_mean"), ("grouped_cv", "auc_mean")),
        (("cv", "auc_ci95_t"), ("grouped_cv", "auc_ci95_t")),
    ),
    (
        "another source (cross-source test)",
        (("published", "other_source", "files", "auc"), ("cross_source", "auc")),
        (("published", "other_source", "files", "ci95", "auc"), ("cross_source", "ci95", "auc")),
    ),
    (
        "this site, grouped cross-validation (adapted)",
        (("site_cv", "pooled", "adapted", "auc"),),
        (),
    ),
)


@dataclass(frozen=True)
class Figure:
    """One AUC the bundle records, with its interval when it has one."""

    label: str
    auc: float | None
    interval: tuple[float, float] | None = None


def _dig(document: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = document
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _metrics_file(bundle: Bundle) -> Mapping[str, Any]:
    if METRICS_FILE not in bundle.manifest.files:
        return {}
    try:
        document = json.loads((bundle.path / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, Mapping) else {}


def bundle_figures(bundle: Bundle) -> list[Figure]:
    """Every figure of :data:`FIGURES`, ``auc`` None where the bundle records none."""
    sources = (bundle.manifest.metrics, _metrics_file(bundle))
    figures = []
    for label, auc_paths, interval_paths in FIGURES:
        auc = next(
            (v for doc in sources for p in auc_paths if isinstance(v := _dig(doc, p), float)),
            None,
        )
        interval = next(
            (
                (float(v[0]), float(v[1]))
                for doc in sources
                for p in interval_paths
                if isinstance(v := _dig(doc, p), list | tuple) and len(v) == 2
            ),
            None,
        )
        figures.append(Figure(label, auc, interval))
    return figures

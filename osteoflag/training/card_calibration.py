"""The model card's calibration section: Brier score, expected calibration error (ECE) and a
reliability plot of the served (calibrated) probabilities."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from osteoflag.training.calibrate import ECE_BINS, quality

#: The expected calibration error the grouped CV should stay within.
ECE_TARGET = 0.05
PLOT = "reliability.png"


def _reliability(folder: Path, curves: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    for title, y, p in curves:
        which = np.minimum((p * ECE_BINS).astype(int), ECE_BINS - 1)
        used = [b for b in range(ECE_BINS) if (which == b).any()]
        ax.plot(
            [p[which == b].mean() for b in used],
            [y[which == b].mean() for b in used],
            "o-",
            label=title,
        )
    ax.plot(edges, edges, "--", color="grey")
    ax.set(xlabel="served probability (bin mean)", ylabel="fraction with fracture", title="")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / PLOT, dpi=80)
    plt.close(fig)


def calibration_lines(folder: Path, results: Mapping[str, Any]) -> list[str]:
    """Rows for each scored set that has per-image scores; empty without any."""
    sets: list[tuple[str, Mapping[str, Any] | None]] = [
        ("grouped CV, pooled out-of-fold", results.get("cv")),
        ("published split: test", (results.get("published") or {}).get("test")),
        (
            "OsteoAI-only fit -> multiregion",
            ((results.get("published") or {}).get("other_source") or {}).get("files"),
        ),
        ("multiregion -> all OsteoAI", (results.get("cross") or {}).get("files")),
    ]
    curves, rows = [], []
    for title, section in sets:
        if not section or "scores" not in section:
            continue
        y = np.asarray(section["scores"]["y"], dtype=float)
        p = np.asarray(section["scores"]["p"], dtype=float)
        q = quality(y, p)
        rows.append(f"| {title} | {len(y)} | {q['brier']:.3f} | {q['ece']:.3f} |")
        curves.append((title, y, p))
    if not rows:
        return []
    _reliability(folder, curves)
    cv = results.get("cv")
    verdict = ""
    if cv and "scores" in cv:
        ece = quality(np.asarray(cv["scores"]["y"]), np.asarray(cv["scores"]["p"]))["ece"]
        verdict = f" Target ECE <= {ECE_TARGET} on grouped CV: " + (
            "met." if ece <= ECE_TARGET else "**not met**."
        )
    method = results["run"].get("calibration", "none")
    members = ["LightGBM"]
    members += ["logistic probe"] * bool(results["run"].get("linear"))
    members += ["cell probe"] * bool(results["run"].get("cells"))
    score = " + ".join(members)
    return [
        "## Calibration",
        "",
        f"Served probability = the {score} score mapped by `{method}` calibration fitted on each "
        "fit's validation groups (the bundle's map is in its manifest; the threshold is on this "
        f"scale). ECE: {ECE_BINS} equal-width bins, weighted by count.{verdict}",
        "",
        "| set | n | Brier | ECE |",
        "|---|---|---|---|",
        *rows,
        "",
        f"![reliability]({PLOT})",
        "",
    ]

"""Drift watch: how the last results compare with what the bundle was checked on.

A bundle may carry ``drift_reference.json``: the distribution of its scores on images it was
validated on, and simple input statistics of those images (body part, photometric
interpretation, manufacturer, image size). The daemon compares the last ``[drift] window``
classified instances with it:

- scores: the population stability index over ten probability bins,
  ``PSI = sum((recent - reference) * ln(recent / reference))``, each bin's share smoothed by
  half an observation (an empty bin is not an infinite difference);
- each input statistic: the share change, ``0.5 * sum(|recent - reference|)`` over its values
  (the fraction of images that would have to change value to match), over the results whose
  inputs were kept (not those classified before the schema kept them).

Alert rule: once at least ``[drift] min_results`` results are in the window, the score PSI
reaching ``[drift] psi_alert`` (0.25, the customary "significant shift") or, once as many
results with their inputs kept are, any share change reaching ``[drift] share_alert`` (0.25).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from osteoflag.errors import BundleError

REFERENCE_FILE = "drift_reference.json"
SCORE_BINS = 10
FLOOR = 1e-4
#: The input statistics compared, by name.
STATISTICS = ("body_part", "photometric", "manufacturer", "size")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Inputs:
    """What drift watch knows of one classified image."""

    probability: float
    body_part: str | None = None
    photometric: str | None = None
    manufacturer: str | None = None
    rows: int | None = None
    columns: int | None = None
    #: False for a result classified before the input statistics were kept: its score
    #: counts, its (unknown) inputs would read as a shift of every statistic.
    described: bool = True

    def statistic(self, name: str) -> str:
        """The value of one statistic of :data:`STATISTICS` (``unknown`` when missing)."""
        if name == "size":
            return size_band(self.rows, self.columns)
        value = getattr(self, name)
        return str(value).strip().upper() if value else UNKNOWN


def size_band(rows: int | None, columns: int | None) -> str:
    """The long side in bands: radiographs from one source rarely change band."""
    if not rows or not columns:
        return UNKNOWN
    side = max(rows, columns)
    for limit, name in ((512, "<512"), (1024, "512-1023"), (2048, "1024-2047")):
        if side < limit:
            return name
    return ">=2048"


def score_shares(probabilities: Sequence[float]) -> list[float]:
    """Share of scores in each of :data:`SCORE_BINS` equal bins of [0, 1]."""
    counts = [0] * SCORE_BINS
    for p in probabilities:
        counts[min(int(p * SCORE_BINS), SCORE_BINS - 1)] += 1
    total = max(len(probabilities), 1)
    return [c / total for c in counts]


def value_shares(values: Iterable[str]) -> dict[str, float]:
    counts = Counter(values)
    total = max(sum(counts.values()), 1)
    return {key: n / total for key, n in sorted(counts.items())}


@dataclass(frozen=True)
class Reference:
    """``drift_reference.json``: what the bundle was checked on."""

    n: int
    scores: list[float]
    shares: dict[str, dict[str, float]]
    source: str = ""

    @classmethod
    def build(cls, inputs: Sequence[Inputs], source: str) -> Reference:
        return cls(
            n=len(inputs),
            scores=score_shares([i.probability for i in inputs]),
            shares={name: value_shares(i.statistic(name) for i in inputs) for name in STATISTICS},
            source=source,
        )

    def write(self, path: Path) -> None:
        document = {"format": 1, "n": self.n, "source": self.source, "scores": self.scores}
        path.write_text(json.dumps({**document, **self.shares}, indent=2) + "\n", "utf-8")

    @classmethod
    def read(cls, path: Path) -> Reference:
        try:
            document = json.loads(path.read_text("utf-8"))
            scores = [float(v) for v in document["scores"]]
            shares = {
                name: {str(k): float(v) for k, v in dict(document[name]).items()}
                for name in STATISTICS
            }
            n = int(document["n"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}: drift reference cannot be read: {exc}") from exc
        if len(scores) != SCORE_BINS:
            raise BundleError(f"{path}: 'scores' needs {SCORE_BINS} bins, has {len(scores)}")
        if n < 1:
            raise BundleError(f"{path}: 'n' is {n}; a reference is made of at least one image")
        # A share past [0, 1] (or NaN, which every comparison calls false) would make the
        # alert fire always, never, or fail each report.
        for name, values in (
            ("scores", scores),
            *((k, list(v.values())) for k, v in shares.items()),
        ):
            if not all(0.0 <= value <= 1.0 for value in values):
                raise BundleError(f"{path}: '{name}' holds a share outside [0, 1]: {values}")
        return cls(n=n, scores=scores, shares=shares, source=str(document.get("source", "")))


def smoothed(shares: Sequence[float], n: int) -> list[float]:
    """Shares with half an observation added to every bin, so a bin one sample happens to
    fill in a small window does not count as an infinite shift."""
    return [(share * n + 0.5) / (n + 0.5 * len(shares)) for share in shares]


def psi(reference: Sequence[float], recent: Sequence[float]) -> float:
    """Population stability index of two share vectors over the same bins."""
    total = 0.0
    for e, a in zip(reference, recent, strict=True):
        e, a = max(e, FLOOR), max(a, FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def share_change(reference: Mapping[str, float], recent: Mapping[str, float]) -> float:
    """Half the summed absolute share differences (0 = same mix, 1 = nothing in common)."""
    keys = set(reference) | set(recent)
    return 0.5 * sum(abs(recent.get(k, 0.0) - reference.get(k, 0.0)) for k in keys)


@dataclass(frozen=True)
class DriftReport:
    """The window against the reference, and whether the alert rule fires."""

    n: int
    score_psi: float | None
    share_changes: dict[str, float] = field(default_factory=dict)
    alert: bool = False
    reasons: tuple[str, ...] = ()


def compare(
    reference: Reference,
    recent: Sequence[Inputs],
    min_results: int,
    psi_alert: float,
    share_alert: float,
) -> DriftReport:
    """Apply the module's alert rule to the last results."""
    if not recent:
        return DriftReport(n=0, score_psi=None)
    recent_scores = score_shares([i.probability for i in recent])
    score = psi(smoothed(reference.scores, reference.n), smoothed(recent_scores, len(recent)))
    described = [i for i in recent if i.described]
    changes = {
        name: share_change(
            reference.shares[name], value_shares(i.statistic(name) for i in described)
        )
        for name in STATISTICS
        if described and reference.shares[name] != {UNKNOWN: 1.0}  # unknown for the reference
    }
    reasons: list[str] = []
    if len(recent) >= min_results and score >= psi_alert:
        reasons.append(f"score PSI {score:.2f} >= {psi_alert}")
    if len(described) >= min_results:
        reasons += [
            f"{name} share change {value:.2f} >= {share_alert}"
            for name, value in changes.items()
            if value >= share_alert
        ]
    return DriftReport(
        n=len(recent),
        score_psi=score,
        share_changes=changes,
        alert=bool(reasons),
        reasons=tuple(reasons),
    )


def bundle_reference(bundle_path: Path, files: Mapping[str, Any]) -> Reference | None:
    """The bundle's reference, or None when it carries none (drift watch is then off)."""
    if REFERENCE_FILE not in files:
        return None
    return Reference.read(bundle_path / REFERENCE_FILE)

"""Drift watch's arithmetic and alert rule on hand-made windows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from osteoflag.config import parse_settings
from osteoflag.drift.reference import (
    UNKNOWN,
    Inputs,
    Reference,
    compare,
    psi,
    score_shares,
    share_change,
    size_band,
)
from osteoflag.errors import BundleError, ConfigError


def _window(n: int, probability: float, part: str = "HAND") -> list[Inputs]:
    return [
        Inputs(
            probability=(k % 10) / 10 * probability,
            body_part=part,
            photometric="MONOCHROME2",
            manufacturer="ACME",
            rows=2048,
            columns=1664,
        )
        for k in range(n)
    ]


def test_psi_is_zero_for_the_same_shares_and_grows_with_the_shift() -> None:
    base = [0.1] * 10
    assert psi(base, base) == 0.0
    small = psi(base, [0.12] * 5 + [0.08] * 5)
    large = psi(base, [0.5, 0.5] + [0.0] * 8)
    assert 0 < small < 0.25 < large


def test_share_change_is_the_fraction_that_moved() -> None:
    assert share_change({"HAND": 1.0}, {"HAND": 1.0}) == 0.0
    assert share_change({"HAND": 1.0}, {"CHEST": 1.0}) == 1.0
    assert share_change({"HAND": 0.5, "WRIST": 0.5}, {"HAND": 0.8, "WRIST": 0.2}) == pytest.approx(
        0.3
    )


def test_sizes_and_scores_fall_in_bands() -> None:
    assert [size_band(r, c) for r, c in ((100, 80), (600, 400), (2048, 1664), (3000, 2500))] == [
        "<512",
        "512-1023",
        ">=2048",
        ">=2048",
    ]
    assert size_band(None, 10) == UNKNOWN
    assert score_shares([0.0, 0.05, 0.99, 1.0]) == [0.5] + [0.0] * 8 + [0.5]


def test_alert_rule(tmp_path: Path) -> None:
    reference = Reference.build(_window(200, 1.0), "test")
    reference.write(tmp_path / "r.json")
    reference = Reference.read(tmp_path / "r.json")
    same = compare(reference, _window(100, 1.0), 50, 0.25, 0.25)
    assert not same.alert and same.score_psi == pytest.approx(0.0)
    shifted_scores = compare(reference, _window(100, 0.2), 50, 0.25, 0.25)
    assert shifted_scores.alert and shifted_scores.reasons[0].startswith("score PSI")
    other_part = compare(reference, _window(100, 1.0, "CHEST"), 50, 0.25, 0.25)
    assert other_part.alert and other_part.share_changes["body_part"] == 1.0
    too_few = compare(reference, _window(20, 0.2, "CHEST"), 50, 0.25, 0.25)
    assert not too_few.alert and too_few.n == 20


def test_statistics_unknown_for_the_reference_are_not_compared() -> None:
    pictures = Reference.build([Inputs(0.5, rows=512, columns=400)] * 60, "pictures")
    report = compare(pictures, _window(60, 1.0), 50, 0.25, 0.25)
    assert set(report.share_changes) == {"size"}


def test_a_min_results_past_the_window_is_refused(tmp_path: Path) -> None:
    """The window never holds more than ``window`` results: such an alert could never fire."""
    with pytest.raises(ConfigError, match=r"drift\.min_results \(600\) exceeds drift\.window"):
        parse_settings({"drift": {"window": 500, "min_results": 600}}, tmp_path)
    assert parse_settings({"drift": {"window": 100, "min_results": 100}}, tmp_path).drift


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n": -5}, "'n' is -5"),
        ({"scores": [float("nan")] + [0.1] * 9}, "'scores' holds a share outside"),
        ({"size": {">=2048": 2.0}}, "'size' holds a share outside"),
        ({"body_part": {"HAND": "most"}}, "cannot be read"),
    ],
)
def test_a_reference_whose_figures_no_report_can_use_is_refused_on_reading(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    """Such a reference failed every report (/metrics, the dashboard) or silenced the alert."""
    path = tmp_path / "drift_reference.json"
    Reference.build(_window(60, 1.0), "test").write(path)
    path.write_text(json.dumps({**json.loads(path.read_text("utf-8")), **change}), "utf-8")
    with pytest.raises(BundleError, match=message):
        Reference.read(path)

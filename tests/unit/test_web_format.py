"""How the operator page words numbers: ages, percentages, the manifest's metrics."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from osteoflag.web.app import format_age, format_percent, format_time
from osteoflag.web.views import manifest_metrics


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (5, "5 s"), (600, "10 min"), (7200, "2.0 h"), (259200, "3.0 d")],
)
def test_ages_read_naturally(seconds: float | None, text: str) -> None:
    assert format_age(seconds) == text


def test_percent_and_time() -> None:
    assert format_percent(0.12345) == "12.35%"
    assert format_percent(None) == "-"
    assert format_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02 03:04:05 UTC"


def test_nested_manifest_metrics_are_flattened() -> None:
    metrics = {
        "test": {"auc": 0.912345, "n": 400, "confusion": [[180, 20], [15, 185]]},
        "threshold_method": "youden",
    }
    assert manifest_metrics(metrics) == [
        ("test.auc", "0.9123"),
        ("test.n", "400"),
        ("test.confusion", "[[180, 20], [15, 185]]"),
        ("threshold_method", "youden"),
    ]

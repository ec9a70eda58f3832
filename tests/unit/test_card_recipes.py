"""The recipe table's verdicts: a difference counts only beyond each protocol's noise."""

from __future__ import annotations

from typing import Any

import pytest

from osteoflag.training.card_recipes import Verdict, recipe_lines, verdict

BASE = {"osteoai_to_multiregion": 0.80, "multiregion_to_osteoai": 0.60, "cv_osteoai": 0.81}


def _row(name: str, **changes: float) -> dict[str, Any]:
    return {"recipe": {"name": name}, **BASE, **changes}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"osteoai_to_multiregion": 0.849, "cv_osteoai": 0.819}, Verdict.NO_EFFECT),
        ({"cv_osteoai": 0.821}, Verdict.HELPED),
        ({"multiregion_to_osteoai": 0.574}, Verdict.HURT),
        ({"osteoai_to_multiregion": 0.74, "cv_osteoai": 0.83}, Verdict.TRADED),
        # Multiregion's in-source CV is its shortcut, never judged.
        ({"cv_multiregion": 0.99}, Verdict.NO_EFFECT),
    ],
)
def test_verdict_counts_only_differences_beyond_noise(
    changes: dict[str, float], expected: Verdict
) -> None:
    assert verdict(_row("change", **changes), _row("base")) is expected


def test_card_names_every_recipe_under_one_verdict() -> None:
    rows = [_row("base"), _row("bigger", cv_osteoai=0.84), _row("letterbox", cv_osteoai=0.79)]
    judged = [line for line in recipe_lines(rows) if line.startswith("- ")]
    assert judged == [
        f"- {Verdict.HELPED.value}: bigger.",
        f"- {Verdict.TRADED.value}: none.",
        f"- {Verdict.NO_EFFECT.value}: none.",
        f"- {Verdict.HURT.value}: letterbox.",
    ]

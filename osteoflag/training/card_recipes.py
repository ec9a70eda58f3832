"""The model card's recipe table: each training change measured on its own (frozen features
and LightGBM, :mod:`osteoflag.training.recipes`), against the same baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

COLUMNS = (
    ("osteoai_to_multiregion", "OsteoAI -> multiregion"),
    ("multiregion_to_osteoai", "multiregion -> OsteoAI"),
    ("cv_osteoai", "grouped CV OsteoAI (mean of 5)"),
    ("cv_multiregion", "grouped CV multiregion (pooled)"),
)

#: Differences to the baseline smaller than these are not evidence (about each cell's 95%
#: interval, which the card states); multiregion's in-source CV mostly measures its shortcut
#: and is not judged.
NOISE = {"osteoai_to_multiregion": 0.05, "multiregion_to_osteoai": 0.025, "cv_osteoai": 0.01}


class Verdict(StrEnum):
    """What a recipe did against the baseline, counting only differences beyond :data:`NOISE`."""

    HELPED = "Helped (a gain beyond noise, no loss beyond it)"
    TRADED = "Traded one protocol for another (a gain and a loss, each beyond noise)"
    NO_EFFECT = "Did not help: no difference beyond noise"
    HURT = "Did not help: losses beyond noise, no gain"


def verdict(row: Mapping[str, Any], base: Mapping[str, Any]) -> Verdict:
    """The :class:`Verdict` of ``row`` against ``base``."""
    gained = lost = False
    for key, noise in NOISE.items():
        if row.get(key) is None or base.get(key) is None:
            continue
        difference = float(row[key]) - float(base[key])
        gained = gained or difference > noise
        lost = lost or difference < -noise
    if gained:
        return Verdict.TRADED if lost else Verdict.HELPED
    return Verdict.HURT if lost else Verdict.NO_EFFECT


def _name(row: Mapping[str, Any]) -> str:
    return str(row.get("recipe", {}).get("name", "?"))


def _cell(row: Mapping[str, Any], key: str, base: Mapping[str, Any] | None) -> str:
    value = row.get(key)
    if value is None:
        return ""
    text = f"{float(value):.3f}"
    if base is not None and base is not row and base.get(key) is not None:
        text += f" ({float(value) - float(base[key]):+.3f})"
    return text


def recipe_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A Markdown table, differences to the first row (the baseline) in brackets."""
    if not rows:
        return []
    base = rows[0]
    lines = [
        "## Recipes: each change measured on its own",
        "",
        "Frozen ImageNet features and LightGBM (`python -m osteoflag.training recipes`; boosters "
        "at learning rate 0.1), each row one change from the first, except size320_copies2, "
        "size384_levels, the rows that join or average two trunks and the *_linear rows on "
        "larger trunks, which combine a named row with one more change. OsteoAI -> "
        "multiregion: fit "
        "on all OsteoAI, scored on the 354 multiregion radiographs (one per near-duplicate "
        "cluster); multiregion -> OsteoAI: the reverse, scored on every OsteoAI image; grouped "
        "CV: source groups never straddle folds, and with both sources the other source joins "
        "every fold's training data. Multiregion's nofracture class is mostly paediatric "
        "wrists, so any score involving it partly measures that shortcut: high in-source "
        "multiregion figures and low multiregion -> OsteoAI figures are what it predicts. "
        "An OsteoAI -> multiregion cell (one fit, 354 radiographs) has a 95% interval of about "
        f"+-{NOISE['osteoai_to_multiregion']:g} (group bootstrap), a multiregion -> OsteoAI "
        f"cell about +-{NOISE['multiregion_to_osteoai']:g} and a grouped-CV mean about "
        f"+-{NOISE['cv_osteoai']:g} (t-interval over folds); smaller differences are not "
        "evidence.",
        "",
        "| recipe | " + " | ".join(title for _, title in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = " | ".join(_cell(row, key, base) for key, _ in COLUMNS)
        lines.append(f"| {_name(row)} | {cells} |")
    lines += ["", f"Each row against {_name(base)}, in the first three columns:", ""]
    for kind in Verdict:
        names = [_name(row) for row in rows[1:] if verdict(row, base) is kind]
        lines.append(f"- {kind.value}: {', '.join(names) or 'none'}.")
    return [*lines, ""]

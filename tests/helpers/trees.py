"""The columns each tree of a LightGBM model splits on, read from its JSON dump."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb


def _columns(node: dict[str, Any]) -> set[int]:
    if "split_feature" not in node:
        return set()
    return (
        {int(node["split_feature"])} | _columns(node["left_child"]) | _columns(node["right_child"])
    )


def split_columns(booster: lgb.Booster) -> list[set[int]]:
    """For every tree, the feature columns it splits on (empty for a single-leaf tree)."""
    return [_columns(tree["tree_structure"]) for tree in booster.dump_model()["tree_info"]]

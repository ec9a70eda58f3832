"""Boosters fitted on separate views of one feature vector, averaged into one LightGBM model.

Averaging the scores of models fitted separately on two views (a small and a full-size view of
the image) carried across sources where one booster on the joined features did not (the recipe
table). Serving, localisation, INT8 checks and ``adapt`` all expect one ``classifier.txt``, so
the members are merged into one model whose raw score is the mean of theirs: every tree of each
member, its split features moved to the member's columns and its node values divided by the
member count. LightGBM has no call for this, so the merge edits the model text (format ``v4``)
and is checked like an ONNX export: the merged model must reproduce the members' mean raw score
on the given rows, or the run fails. The per-feature contributions ``pred_contrib`` gives stay
exact (each is the mean of the members' own).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import lightgbm as lgb
import numpy as np

from osteoflag.errors import TrainingError

logger = logging.getLogger(__name__)

#: Largest difference allowed between the merged raw score and the members' mean.
MERGE_MAX_ERROR = 1e-6
_TREES_END = "end of trees"
_SCALED = ("leaf_value", "internal_value")


def _header_value(header: str, key: str) -> str:
    match = re.search(rf"^{key}=(.*)$", header, re.MULTILINE)
    if match is None:
        raise TrainingError(f"LightGBM model text has no '{key}=' line")
    return match.group(1)


def _tree_blocks(text: str) -> tuple[str, list[str], str]:
    """Header, tree blocks (without their ``Tree=k`` line) and the text after the trees."""
    if f"\n{_TREES_END}\n" not in text or "\nTree=" not in text:
        raise TrainingError("LightGBM model text has no trees")
    head, _, rest = text.partition("\nTree=")
    trees_text, _, tail = rest.partition(f"\n{_TREES_END}\n")
    blocks = [chunk.split("\n", 1)[1].strip("\n") for chunk in trees_text.split("\nTree=")]
    return head, blocks, tail


def _moved(block: str, offset: int, scale: float) -> str:
    lines = []
    for line in block.split("\n"):
        key, equals, value = line.partition("=")
        if key == "split_feature" and value:
            value = " ".join(str(int(v) + offset) for v in value.split())
        elif key in _SCALED and value:
            value = " ".join(repr(float(v) * scale) for v in value.split())
        lines.append(f"{key}={value}" if equals else line)
    return "\n".join(lines)


def view_columns(starts: Sequence[int], width: int) -> list[slice]:
    """Each view's columns of a ``width``-column matrix: from its start up to the next start."""
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], width], strict=True)]


def merge_average(
    members: Sequence[lgb.Booster], starts: Sequence[int], width: int, weight: float = 1.0
) -> lgb.Booster:
    """One booster whose raw score is ``weight`` times the mean of ``members``' raw scores,
    member ``i`` reading columns ``starts[i]`` up to the next start (or ``width``) of the
    joined feature matrix."""
    if len(members) != len(starts) or list(starts) != sorted(starts) or starts[0] != 0:
        raise TrainingError(f"view starts {list(starts)} do not fit {len(members)} boosters")
    texts = [m.model_to_string(num_iteration=m.best_iteration) for m in members]
    infos: list[str] = []
    trees: list[str] = []
    for text, view in zip(texts, view_columns(starts, width), strict=True):
        head, blocks, _ = _tree_blocks(text)
        member_infos = _header_value(head, "feature_infos").split()
        if len(member_infos) != view.stop - view.start:
            raise TrainingError(
                f"a view booster has {len(member_infos)} features, its columns "
                f"{view.start}-{view.stop} are {view.stop - view.start}"
            )
        infos += member_infos
        trees += [_moved(block, view.start, weight / len(members)) for block in blocks]
    head, _, tail = _tree_blocks(texts[0])
    head = re.sub(r"^tree_sizes=.*\n", "", head, flags=re.MULTILINE)
    head = re.sub(r"^max_feature_idx=.*$", f"max_feature_idx={width - 1}", head, flags=re.MULTILINE)
    head = re.sub(
        r"^feature_names=.*$",
        "feature_names=" + " ".join(f"Column_{i}" for i in range(width)),
        head,
        flags=re.MULTILINE,
    )
    head = re.sub(
        r"^feature_infos=.*$", "feature_infos=" + " ".join(infos), head, flags=re.MULTILINE
    )
    parameters = tail[tail.index("parameters:") :] if "parameters:" in tail else "\n"
    body = "".join(f"Tree={i}\n{block}\n\n\n" for i, block in enumerate(trees))
    merged = lgb.Booster(model_str=f"{head.rstrip()}\n\n{body}{_TREES_END}\n\n{parameters}")
    logger.info(
        "boosters averaged",
        extra={"action": "merge_average", "members": len(members), "trees": len(trees)},
    )
    return merged


def check_merge(
    merged: lgb.Booster,
    members: Sequence[lgb.Booster],
    starts: Sequence[int],
    x: np.ndarray,
    weight: float = 1.0,
) -> float:
    """The largest difference between the merged raw score and ``weight`` times the members'
    mean on ``x``; raise when it exceeds :data:`MERGE_MAX_ERROR`."""
    mean = np.mean(
        [
            m.predict(x[:, view], num_iteration=m.best_iteration, raw_score=True)
            for m, view in zip(members, view_columns(starts, x.shape[1]), strict=True)
        ],
        axis=0,
    )
    error = float(np.max(np.abs(merged.predict(x, raw_score=True) - weight * mean)))
    if not error <= MERGE_MAX_ERROR:
        raise TrainingError(
            f"the averaged booster differs from its members' mean raw score by {error:.3g}"
        )
    return error


def rounds(booster: lgb.Booster) -> int:
    """The trees a booster scores with: its early-stopped rounds, or all of a merged one."""
    return booster.best_iteration if booster.best_iteration > 0 else booster.num_trees()

"""``osteoflag add-localiser``: a copy of a bundle with a localiser fitted on fracture boxes.

Like ``add-maps``, it never changes the bundle it reads: the copy is staged beside ``--out``,
verified like any bundle, then renamed, and ``--out`` must not exist. The localiser is fitted
on every boxed image; its grouped cross-validated figures (same procedure, every image scored
by a fit that never saw its radiograph) go into the manifest's ``localiser`` section and the card.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from osteoflag import publish
from osteoflag.errors import UsageError
from osteoflag.inference.bundle import MANIFEST, MODEL_CARD, load_bundle, write_manifest
from osteoflag.inference.bundle_out import check_apart
from osteoflag.inference.cells import check_tiles
from osteoflag.inference.localiser import KIND, LOCALISER_FILE, check_context
from osteoflag.inference.predictor import Predictor
from osteoflag.training.localisation import read_cases
from osteoflag.training.localiser import (
    CONTEXT,
    compact,
    cross_validate,
    fit_localiser,
    tiling_for,
)

logger = logging.getLogger(__name__)

#: The model card's section on the localiser, which re-rendering the card keeps.
LOCALISER_HEADING: Final = "\n## Localiser\n"


def split_card(text: str) -> tuple[str, str]:
    """The model card ``text`` as (the training run's part, the localiser's section or ""):
    ``add-localiser`` replaces the section, re-rendering the card from a run keeps it."""
    body, heading, section = text.partition(LOCALISER_HEADING)
    return body, heading + section


def _card_section(boxes: Path, figures: dict[str, Any]) -> str:
    part = figures["all"]
    rows = "".join(
        f"| {method} | {f['hit']:.3f} [{f['hit_ci95'][0]:.3f}, {f['hit_ci95'][1]:.3f}] |\n"
        for method, f in part.items()
        if isinstance(f, dict)
    )
    return (
        f"{LOCALISER_HEADING}\n"
        f"Regions of flagged images come from `{LOCALISER_FILE}`: a logistic model on the "
        f"backbone's {figures['grid'][0]}x{figures['grid'][1]} tiled feature grid plus "
        f"{_context_words(figures.get('context', 0))}cell position"
        f"{_pass_words(figures)}, fitted on the fracture "
        f"boxes of `{boxes.name}` ({part['n']} images, "
        f"{part['sources']} radiographs). Pointing game ({figures['folds']}-fold CV grouped "
        "by radiograph, 95 % bootstrap interval over radiographs):\n\n"
        f"| method | hit [95% CI] |\n|---|---|\n{rows}"
    )


def _pass_words(figures: dict[str, Any]) -> str:
    others = "".join(
        f", averaged with a {n}x{n} tiling's own model" for n in figures["other_tiles"]
    )
    return others + (", each also on the mirrored image" if figures["mirror"] else "")


def _context_words(context: int) -> str:
    return f"the mean of each cell's {context}x{context} neighbourhood and " if context else ""


def add_localiser_to_bundle(
    bundle_dir: Path,
    boxes: Path,
    out: Path,
    tiles: int | None = None,
    context: int = CONTEXT,
    *,
    other_tiles: Sequence[int] = (),
    mirror: bool = False,
) -> dict[str, Any]:
    """Write the bundle at ``bundle_dir`` with a localiser fitted on ``boxes`` to the new folder
    ``out``; returns the cross-validated figures recorded in its manifest. ``tiles`` per side
    (by default a grid of about 28 cells a side) trades region time for a finer grid: the
    served localiser runs the backbone ``tiles`` squared times per flagged image. ``context``
    (odd, cells a side) lets each cell also see its neighbourhood's mean. ``other_tiles`` adds
    tilings with their own cell models and ``mirror`` the mirrored image, their maps averaged
    (each pass costs its tiles again)."""
    try:
        for count in (tiles, *other_tiles):
            if count is not None:  # None: tiling_for picks the grid
                check_tiles(count)
        check_context(context)
    except ValueError as error:
        raise UsageError(f"--{error}") from error
    if out.exists():
        raise UsageError(f"--out {out}: already exists; choose a new folder for the bundle")
    check_apart(bundle_dir, out)
    if not (boxes / "images.csv").is_file():
        raise UsageError(f"--boxes {boxes}: no images.csv (fracture-boxes layout expected)")
    source = load_bundle(bundle_dir)
    predictor = Predictor(source, threads=0, batch_size=16)
    cases = read_cases(boxes)
    tilings = [tiling_for(predictor, count) for count in (tiles, *other_tiles)]
    fitted = fit_localiser(predictor, cases, tilings, mirror=mirror, context=context)
    figures = compact(cross_validate(fitted, cases, predictor))
    localiser = fitted.localiser
    with publish.staging(out) as staging:
        shutil.copytree(
            source.path, staging, ignore=shutil.ignore_patterns(MANIFEST), dirs_exist_ok=True
        )
        localiser.save(staging / LOCALISER_FILE)
        card = staging / MODEL_CARD
        if card.exists():
            body, _ = split_card(card.read_text(encoding="utf-8"))
            card.write_text(body + _card_section(boxes, figures), encoding="utf-8")
        fields = source.manifest.model_dump(mode="json", exclude={"files", "format_version"})
        fields["localiser"] = {
            "file": LOCALISER_FILE,
            "kind": KIND,
            "trained_on": f"{boxes.name}: {len(cases)} images with fracture boxes",
            "cross_validation": figures,
        }
        write_manifest(staging, **fields)
        Predictor(load_bundle(staging), threads=1, batch_size=1)
        publish.publish(staging, out)
    logger.info("localiser added", extra={"action": "add_localiser", "bundle": str(out)})
    return figures

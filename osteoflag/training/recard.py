"""Re-render a bundle's model card from its training run's full results (``WORK/results.json``),
with new notes or recipe rows, without retraining: the card, its plots and ``metrics.json`` are
rewritten and the manifest re-hashes them; backbone, classifier and every figure stay as trained,
and a localiser's section (``add-localiser``) is kept as it was. The bundle is changed through
a copy that replaces it whole, so a failed rewrite leaves it as it was.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from osteoflag import publish
from osteoflag.inference.bundle import load_bundle, write_manifest
from osteoflag.training import report
from osteoflag.training.backbones import TrainingError


def recard(
    bundle_dir: Path,
    results_path: Path,
    notes: Sequence[str] = (),
    recipes: list[dict[str, object]] | None = None,
) -> None:
    """Rewrite the card of ``bundle_dir`` from ``results_path`` (its own run's results)."""
    bundle = load_bundle(bundle_dir)
    try:
        results = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"{results_path}: run results cannot be read: {exc}") from exc
    run = results.get("run", {})
    if (run.get("name"), run.get("version")) != (bundle.manifest.name, bundle.manifest.version):
        raise TrainingError(
            f"{results_path}: results of {run.get('name')} {run.get('version')}, "
            f"not of the bundle {bundle.model_id}"
        )
    if notes:
        results["notes"] = list(notes)
    if recipes is not None:
        results["recipes"] = recipes
    metrics_doc = report.strip_scores(results)
    with publish.rewriting(bundle_dir) as staging:  # a failure leaves the bundle unchanged
        (staging / "metrics.json").write_text(
            json.dumps(metrics_doc, indent=2, default=float) + "\n"
        )
        try:
            report.write_card(staging, results)
        except (KeyError, IndexError, TypeError) as exc:  # a run cut short: no figures for it
            raise TrainingError(
                f"{results_path}: run results incomplete ({type(exc).__name__}: {exc}); "
                "the bundle is unchanged"
            ) from exc
        fields = bundle.manifest.model_dump(exclude={"files", "format_version"})
        write_manifest(staging, **fields)
        load_bundle(staging)
    results_path.write_text(json.dumps(results, default=float))

"""Writing an adapted bundle: the base backbone, the refitted head, a manifest and a card that
say which data made it. The folder is assembled under a temporary name, verified like any bundle
(hashes, then a predictor built from it), and only then renamed to its final name, so a
half-written bundle is never left where the daemon could load it."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from osteoflag import publish
from osteoflag.errors import UsageError
from osteoflag.inference.bundle import MODEL_CARD, Bundle, load_bundle, write_manifest
from osteoflag.inference.bundle_out import check_apart
from osteoflag.inference.predictor import Predictor
from osteoflag.validation.adapt import Adapted

SITE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")
CALIBRATED = "; probabilities Platt-calibrated on those scores"


def adapted_version(base_version: str, site: str) -> str:
    """``X.Y.Z+site.NAME`` (a previous ``+...`` suffix of the base is replaced)."""
    if not SITE_NAME.fullmatch(site):
        raise UsageError(
            f"--site {site!r}: use 1-24 lower-case letters, digits or '-', starting with a "
            "letter or digit"
        )
    version = f"{base_version.split('+', 1)[0]}+site.{site}"
    if len(version) > 32:
        raise UsageError(f"--site {site!r}: version {version!r} is longer than 32 characters")
    return version


def check_out(base: Path, out: Path) -> None:
    """Never overwrite the base bundle or anything else."""
    if out.resolve() == base.resolve():
        raise UsageError(f"--out {out}: is the base bundle; adapt never overwrites it")
    check_apart(base, out)
    if out.exists():
        raise UsageError(f"--out {out}: already exists; choose a new folder")


def write_adapted(
    base: Bundle,
    out: Path,
    adapted: Adapted,
    version: str,
    training_data: dict[str, Any],
    card: str,
) -> Bundle:
    """Assemble, verify and move the adapted bundle into place; returns it as loaded."""
    check_out(base.path, out)
    with publish.staging(out) as staging:
        manifest = base.manifest
        shutil.copyfile(base.backbone_path, staging / manifest.backbone.file)
        classifier = adapted.classifier.save(staging)
        (staging / MODEL_CARD).write_text(card, encoding="utf-8")
        localiser = base.manifest.localiser  # same backbone, so its localiser still reads it
        if localiser is not None:
            shutil.copyfile(base.path / localiser.file, staging / localiser.file)
        write_manifest(
            staging,
            name=manifest.name,
            version=version,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            training_data=training_data,
            input=manifest.input.model_dump(mode="json"),
            backbone=manifest.backbone.model_dump(mode="json"),
            features=manifest.features.model_dump(mode="json"),
            classifier=classifier,
            threshold={"value": adapted.threshold, "method": "youden_j_on_site_out_of_fold"},
            metrics=adapted.metrics,
            calibration=None
            if adapted.calibration is None
            else adapted.calibration.model_dump(mode="json"),
            localiser=None if localiser is None else localiser.model_dump(mode="json"),
        )
        Predictor(load_bundle(staging), threads=1, batch_size=1)
        publish.publish(staging, out)
    return load_bundle(out)


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def model_card(base: Bundle, version: str, training_data: dict[str, Any], adapted: Adapted) -> str:
    """The adapted bundle's card: what data, how judged, base against adapted."""
    site = training_data["site"]
    cv = adapted.metrics["site_cv"]
    pooled = cv["pooled"]
    mixed = training_data.get("mixed_with")
    lines = [
        f"# Model card: {base.manifest.name} {version}",
        "",
        "**For research use only. Not for diagnostic use.**",
        "",
        f"Site adaptation of `{base.model_id}`: the same backbone (`{base.manifest.backbone.file}`,"
        f" {base.manifest.backbone.architecture}, unchanged, same SHA-256), a LightGBM head "
        f"refitted on the backbone's features of site `{site['name']}`'s labelled images, and a "
        "threshold chosen for that site. The base bundle's own card describes the backbone.",
        "",
        "## Data used",
        "",
        f"- Site `{site['name']}`: `{site['data']}`, {site['images']} images "
        f"({site['fracture']} fracture, {site['nofracture']} no fracture) in {site['groups']} "
        f"groups; {site['skipped']} undecodable files left out.",
    ]
    if mixed:
        lines.append(
            f"- Mixed into every fit: the base bundle's training images `{mixed['data']}` "
            f"({mixed['images']} images: {mixed['splits']})."
        )
    else:
        lines.append("- Site images only: the base bundle's training images were not mixed in.")
    lines += [
        "",
        f"## Grouped {len(cv['folds'])}-fold cross-validation on the site",
        "",
        "No group on both sides of a fold. Each fold refits the head the way the final one was "
        "fitted (early stopping on a grouped hold-out of that fold's fitting groups); the base "
        "bundle is scored on the same held-out images.",
        "",
        "| fold | n | base AUC | adapted AUC |",
        "|---|---|---|---|",
        *(
            f"| {f['fold']} | {f['n']} | {_num(f['base_auc'])} | {_num(f['adapted_auc'])} |"
            for f in cv["folds"]
        ),
        f"| mean | | {_num(cv['base_auc_mean'])} | {_num(cv['adapted_auc_mean'])} |",
        f"| pooled out-of-fold | {pooled['n']} | {_num(pooled['base']['auc'])} | "
        f"{_num(pooled['adapted']['auc'])} |",
    ]
    for key, title in (("representatives", "one image per cluster"), ("per_group", "per group")):
        if key in cv:
            row = cv[key]
            lines.append(
                f"| {title} | {row['n']} | {_num(row['base_auc'])} | {_num(row['adapted_auc'])} |"
            )
    base_p, new_p = pooled["base"], pooled["adapted"]
    lines += [
        "",
        f"At their thresholds (base {base_p['threshold']:.4f}; adapted {new_p['threshold']:.4f}, "
        "Youden's J on the pooled out-of-fold scores, so its figures here are slightly "
        f"optimistic{CALIBRATED if adapted.calibration else ''}"
        f"): sensitivity {_num(base_p['sensitivity'])} -> {_num(new_p['sensitivity'])},"
        f" specificity {_num(base_p['specificity'])} -> {_num(new_p['specificity'])}, accuracy "
        f"{_num(base_p['accuracy'])} -> {_num(new_p['accuracy'])}.",
    ]
    held = adapted.metrics.get("base_source_test")
    if held:
        lines += [
            "",
            "## On the base bundle's own source",
            "",
            f"Its held-out test split ({held['n']} images, never fitted on): AUC "
            f"{_num(held['base_auc'])} base, {_num(held['adapted_auc'])} adapted "
            f"(change {held['adapted_auc'] - held['base_auc']:+.3f}).",
        ]
    lines += [
        "",
        "## Limits",
        "",
        "- Judged only on the site's own images: confirm it on cases collected after this fit "
        "(`osteoflag validate`, radiologists' feedback) before relying on it.",
        "- A refitted head learns whatever separates the site's labels, including how the images "
        "were collected; a set whose labels follow its sources (scanner, age group, annotation "
        "marks) scores well here for the wrong reasons.",
        "",
    ]
    return "\n".join(lines)

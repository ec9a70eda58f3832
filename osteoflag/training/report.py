"""The model card (Markdown) and its plots: ROC, precision-recall, confusion, calibration."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from osteoflag.inference.bundle import MODEL_CARD
from osteoflag.inference.quantize import MAX_AUC_DROP
from osteoflag.training.add_localiser import split_card
from osteoflag.training.card_calibration import calibration_lines
from osteoflag.training.card_recipes import recipe_lines

logger = logging.getLogger(__name__)

#: The published OsteoAI row (VGG16 ImageNet features + LightGBM) on its own test split.
PUBLISHED = {
    "accuracy": 0.7966,
    "auc": 0.8737,
    "fracture": {"precision": 0.79, "recall": 0.81, "f1": 0.80},
    "nofracture": {"precision": 0.80, "recall": 0.78, "f1": 0.79},
    "confusion": [[298, 82], [74, 313]],
}
TARGETS = {"published_test_auc": 0.90, "published_test_accuracy": 0.82, "cv_auc_mean": 0.80}


def strip_scores(doc: Any) -> Any:
    """A copy without the per-image score lists (kept out of the JSON written to the bundle)."""
    if isinstance(doc, Mapping):
        return {k: strip_scores(v) for k, v in doc.items() if k != "scores"}
    if isinstance(doc, list):
        return [strip_scores(v) for v in doc]
    return doc


def plot_set(
    folder: Path, stem: str, title: str, y: np.ndarray, p: np.ndarray, threshold: float
) -> list[str]:
    """Four PNGs for one evaluated set; returns their file names."""
    names = []
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    fpr, tpr, _ = roc_curve(y, p)
    axes[0].plot(fpr, tpr)
    axes[0].plot([0, 1], [0, 1], "--", color="grey")
    axes[0].set(title="ROC", xlabel="1 - specificity", ylabel="sensitivity")
    prec, rec, _ = precision_recall_curve(y, p)
    axes[1].plot(rec, prec)
    axes[1].set(title="Precision-recall", xlabel="recall", ylabel="precision")
    pred = (p >= threshold).astype(int)
    cm = np.array([[((pred == a) & (y == b)).sum() for a in (0, 1)] for b in (0, 1)])
    axes[2].imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        axes[2].text(j, i, str(v), ha="center", va="center")
    axes[2].set(
        title=f"Confusion @ {threshold:.3f}",
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["no fracture", "fracture"],
        yticklabels=["no fracture", "fracture"],
        xlabel="predicted",
        ylabel="true",
    )
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    axes[3].plot(mean_pred, frac_pos, "o-")
    axes[3].plot([0, 1], [0, 1], "--", color="grey")
    axes[3].set(
        title="Calibration", xlabel="mean predicted probability", ylabel="fraction fracture"
    )
    fig.suptitle(title)
    fig.tight_layout()
    name = f"{stem}.png"
    fig.savefig(folder / name, dpi=80)
    plt.close(fig)
    names.append(name)
    return names


def _f(v: Any) -> str:
    return f"{float(v):.3f}"


def _ci(m: Mapping[str, Any], key: str) -> str:
    lo, hi = m["ci95"][key]
    return f"{_f(m[key])} ({_f(lo)} to {_f(hi)})"


HEADER = [
    "| set | n | AUC (95% CI) | accuracy (95% CI) | precision | recall | specificity | F1 |",
    "|---|---|---|---|---|---|---|---|",
]


def _row(label: str, m: Mapping[str, Any]) -> str:
    if "ci95" not in m:
        return (
            f"| {label} | {m['n']} | {_f(m['auc'])} | {_f(m['accuracy'])} | {_f(m['precision'])} | "
            f"{_f(m['recall'])} | {_f(m['specificity'])} | {_f(m['f1'])} |"
        )
    return (
        f"| {label} | {m['n']} | {_ci(m, 'auc')} | {_ci(m, 'accuracy')} | {_f(m['precision'])} | "
        f"{_f(m['recall'])} | {_f(m['specificity'])} | {_f(m['f1'])} |"
    )


def _plot(folder: Path, stem: str, title: str, m: Mapping[str, Any], threshold: float) -> None:
    scores = m["scores"]
    plot_set(folder, stem, title, np.array(scores["y"]), np.array(scores["p"]), threshold)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _tuning(run: Mapping[str, Any]) -> str:
    if "epochs=0," in str(run.get("finetune")):
        return "frozen: no layer fine-tuned"
    return f"{run['head']} fine-tuned on cached trunk maps"


def _members(run: Mapping[str, Any]) -> str:
    """What joins LightGBM in the classifier, as the card's first paragraph ends."""
    if run.get("cells"):
        linear = bool(run.get("linear"))
        probe = "a logistic probe on the same features (`linear.json`, one per view) and "
        return (
            f", mixed with {probe if linear else ''}a cell probe on the backbone's last map "
            "(`cells.json`: one logistic model on every cell, the image's score the mean of its "
            "8 highest cell logits); each member's log-odds standardised on the validation "
            "rows, then weighted " + ("1 : 1 : 2." if linear else "1 : 2.")
        )
    if run.get("linear"):
        return (
            ", its log-odds averaged with those of a logistic probe on the same features "
            "(`linear.json`, one probe per view)."
        )
    return "."


def _intro(run: Mapping[str, Any], results: Mapping[str, Any]) -> list[str]:
    rule = run["threshold_rule"]
    return [
        f"# Model card: {run['name']} {run['version']}",
        "",
        "**For research use only. Not for diagnostic use.**",
        "",
        "Fracture / no-fracture classifier for single radiographs. Convolutional features of "
        f"`{run['architecture']}` (init `{run['init']}`; {_tuning(run)}), pooled inside the ONNX "
        "graph, then LightGBM" + _members(run),
        "",
        f"- Input: {run['input']}; preprocessed by `osteoflag.inference.pixels` (as served).",
        f"- Features: {run['layout']}.",
        f"- Fine-tuning: {run['finetune']}.",
        f"- Training data: {run.get('train_on', 'primary')} source(s); fixed augmented copies per "
        f"image: {run.get('copies', 0)} (`osteoflag.training.augment`).",
        f"- LightGBM: {run['booster']}.",
        f"- Threshold: chosen on validation only ({rule}), on the calibrated scale "
        f"(calibration: {run.get('calibration', 'none')}).",
        f"- Whole `train` run: {results.get('seconds', 0) / 60:.1f} min on this 2-core CPU.",
        "",
    ]


def _fitted_on(both: bool) -> list[str]:
    if both:
        return [
            "The bundle itself: fitted on `train` plus 85% of the multiregion groups; "
            "fine-tuning epoch, LightGBM early stopping, calibration and the threshold chosen "
            "on `val` plus the other 15%; `test` is used only for this table. "
        ]
    return [
        "The bundle itself: fitted on `train`; fine-tuning epoch, LightGBM early stopping, "
        "calibration and the threshold chosen on `val`; `test` is used only for this table. It "
        "is an OsteoAI-only model trained the way the published row was (train split, val for "
        "model selection). "
    ]


def _caveat(shared: int | None, n: int) -> str:
    """What the published split is worth: how many test files repeat a training radiograph
    (runs before that count was recorded say so without it)."""
    how_many = "Some" if shared is None else f"{shared} of the {n}"
    return (
        f"**Caveat:** {how_many} test files share their source radiograph (Roboflow stem) with "
        "a train/val file, so this split rewards memorisation; it is reported only to compare "
        "with the published row. CIs resample source groups."
    )


def _published(folder: Path, pub: Mapping[str, Any], both: bool) -> list[str]:
    t = pub["test"]
    _plot(folder, "published_test", "Published OsteoAI split: test", t, t["threshold"])
    pc = t["per_class"]
    fr, nf = pc["fracture"], pc["nofracture"]
    return [
        "## 1. Published OsteoAI split (train, val, test)",
        "",
        *_fitted_on(both),
        _caveat(pub.get("test_shares_source"), t["n"]),
        "",
        "| model | accuracy | AUC | fracture P/R/F1 | nofracture P/R/F1 |",
        "|---|---|---|---|---|",
        "| published VGG16 + LightGBM | 0.797 | 0.874 | 0.79/0.81/0.80 | 0.80/0.78/0.79 |",
        f"| this bundle | {_f(t['accuracy'])} | {_f(t['auc'])} | "
        f"{_f(fr['precision'])}/{_f(fr['recall'])}/{_f(fr['f1'])} | "
        f"{_f(nf['precision'])}/{_f(nf['recall'])}/{_f(nf['f1'])} |",
        "",
        *HEADER,
        _row("test", t),
        "",
        f"Targets: AUC >= 0.90 {_met(t['auc'] >= TARGETS['published_test_auc'])}; accuracy >= 0.82 "
        f"{_met(t['accuracy'] >= TARGETS['published_test_accuracy'])}. Confusion [[tn, fp], "
        f"[fn, tp]] = {t['confusion']} at threshold {t['threshold']:.4f}. Validation AUC "
        f"{_f(pub['validation']['auc'])}. Fine-tuning log: {pub.get('finetune_log')}.",
        "",
        "![published test](published_test.png)",
        "",
    ]


def _cv(folder: Path, cv: Mapping[str, Any]) -> list[str]:
    k = len(cv["folds"])  # the run's --folds: the card must name the protocol it ran
    _plot(folder, "cv_pooled", f"Grouped {k}-fold CV: pooled out-of-fold", cv, 0.5)
    lo, hi = cv["auc_ci95_t"]
    blo, bhi = cv["pooled_auc_ci95_group_bootstrap"]
    lines = [
        f"## 2. Grouped, stratified {k}-fold cross-validation over all OsteoAI images",
        "",
        "Groups: Roboflow source stem, joined with exact pixel duplicates and dihedral-phash "
        "near-duplicates; no group is on both sides of any fold. Inside each fold, fine-tuning, "
        "early stopping and the threshold use a grouped hold-out of that fold's training groups "
        "only. This is the leakage-free number to judge the model by.",
        "",
        f"**Folds completed: {len(cv['folds'])}. Mean AUC over folds {_f(cv['auc_mean'])} "
        f"(95% t-interval {_f(lo)} to {_f(hi)}); "
        f"pooled out-of-fold AUC, group-bootstrap 95% CI {_f(blo)} to {_f(bhi)}; mean accuracy "
        f"{_f(cv['accuracy_mean'])}.** Target mean AUC >= 0.80: "
        f"{_met(cv['auc_mean'] >= TARGETS['cv_auc_mean'])}.",
        "",
        "| fold | n | AUC | accuracy | sensitivity | specificity | threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {f['fold']} | {f['n']} | {_f(f['auc'])} | {_f(f['accuracy'])} | {_f(f['recall'])} | "
        f"{_f(f['specificity'])} | {f['threshold']:.3f} |"
        for f in cv["folds"]
    ]
    return [
        *lines,
        "",
        "Pooled out-of-fold scores (confusion at 0.5, since each fold has its own threshold):",
        "",
        "![cv](cv_pooled.png)",
        "",
    ]


def _cross(
    folder: Path, pub: Mapping[str, Any] | None, cross: Mapping[str, Any] | None
) -> list[str]:
    lines = [
        "## 3. Cross-source: the best proxy for other hospitals",
        "",
        "Second source: the multiregion set, one representative per near-duplicate cluster (354 "
        "radiographs, groups from its groups.csv). Its nofracture class is mostly augmented "
        "paediatric wrists and some fractures carry arrows or marks, so both directions carry "
        "shortcuts. Per-group rows average the probability over a group's files.",
        "",
        *HEADER,
    ]
    plotted: list[str] = []
    for title, stem, section in (
        (
            "OsteoAI-only fit -> multiregion",
            "cross_osteoai_to_multiregion",
            pub and pub.get("other_source"),
        ),
        ("multiregion -> all OsteoAI", "cross_multiregion_to_osteoai", cross),
    ):
        if not section:
            continue
        files = section["files"]
        _plot(folder, stem, title, files, files["threshold"])
        plotted.append(stem)
        lines += [
            _row(f"{title} (files)", files),
            _row(f"{title} (per group)", section["per_group"]),
        ]
    return [
        *lines,
        "",
        "Thresholds come from the training source's validation set, so accuracy here also shows "
        "the threshold shift between sources.",
        "",
        *(f"![{stem}]({stem}.png)" for stem in plotted),
        "",
    ]


def _int8(pub: Mapping[str, Any] | None, cv: Mapping[str, Any] | None) -> list[str]:
    """Float32 and INT8 side by side (see ``training.int8``); empty when the run had no INT8."""
    rows = []
    test = (pub or {}).get("int8")
    if test:
        rows.append(("published split: test", test["float32"], test["int8"], test["auc_drop"]))
    if cv and cv.get("int8"):
        c = cv["int8"]
        f32 = {"auc": c["float32"]["auc_mean"], "accuracy": c["float32"]["accuracy_mean"]}
        i8 = {"auc": c["int8"]["auc_mean"], "accuracy": c["int8"]["accuracy_mean"]}
        rows.append(("grouped CV: mean over folds", f32, i8, c["max_auc_drop"]))
    if not rows:
        return []
    lines = [
        "## INT8 beside float32",
        "",
        "Each model's feature graph statically quantised the way `osteoflag quantize` does it "
        "(onnxruntime QDQ, weights int8 per channel, activations uint8, MinMax ranges from "
        "that model's own training images through the serving pixel path; leading "
        "convolutions kept float32 as `quantize.FLOAT_CONVS` says); same booster and "
        "threshold. For the CV row the drop is the largest over the folds. The daemon "
        f"serves INT8 only when `quantize` finds its AUC within {MAX_AUC_DROP} of float32.",
        "",
        "| protocol | float32 AUC | INT8 AUC | float32 accuracy | INT8 accuracy | AUC drop |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {_f(f32['auc'])} | {_f(i8['auc'])} | {_f(f32['accuracy'])} | "
        f"{_f(i8['accuracy'])} | {drop:+.4f} |"
        for name, f32, i8, drop in rows
    ]
    return [*lines, ""]


def _layouts(layouts: Mapping[str, Any]) -> list[str]:
    lines = [
        "## 4. Feature layout (published split; LightGBM refitted per layout)",
        "",
        "The bundle's layout was fixed before these numbers were seen; test chooses nothing.",
        "",
        "| last level | features | test AUC | test accuracy |",
        "|---|---|---|---|",
    ]
    for row in layouts.values():
        t = row["test"]
        lines.append(f"| {row['head']} | {row['layout']} | {_f(t['auc'])} | {_f(t['accuracy'])} |")
    return [*lines, ""]


def _baselines(base: Mapping[str, Any]) -> list[str]:
    lines = [
        "## 5. Frozen-feature baselines (LightGBM only, same protocols)",
        "",
        "| backbone | published test AUC | published test accuracy | grouped CV AUC (95% t-CI) |",
        "|---|---|---|---|",
    ]
    for key, row in base.items():
        pt = row.get("published_test") or {}
        lo, hi = row["cv_auc_ci95_t"]
        lines.append(
            f"| {key} | {_f(pt.get('auc', float('nan')))} | "
            f"{_f(pt.get('accuracy', float('nan')))} | {_f(row['cv_auc_mean'])} "
            f"({_f(lo)} to {_f(hi)}) |"
        )
    return [*lines, ""]


def write_card(folder: Path, results: Mapping[str, Any]) -> None:
    """``MODEL_CARD.md`` plus plots, from a run's full results (scores included); an existing
    card's localiser section (``add-localiser``) is kept."""
    lines = _intro(results["run"], results)
    pub = results.get("published")
    if pub and pub.get("test"):
        lines += _published(folder, pub, results["run"].get("train_on") == "both")
    if results.get("cv"):
        lines += _cv(folder, results["cv"])
    if (pub and pub.get("other_source")) or results.get("cross"):
        lines += _cross(folder, pub, results.get("cross"))
    lines += calibration_lines(folder, results)
    lines += recipe_lines(results.get("recipes") or [])
    lines += _int8(pub, results.get("cv"))
    if results.get("layouts"):
        lines += _layouts(results["layouts"])
    if results.get("baselines"):
        lines += _baselines(results["baselines"])
    if results.get("notes"):
        lines += ["## Notes on this run", "", *(f"- {note}" for note in results["notes"]), ""]
    lines += [
        "## Data hygiene",
        "",
        "```",
        *(f"{k}: {v}" for k, v in results.get("hygiene", {}).items()),
        "```",
        "",
        "## Limits",
        "",
        "- Trained on web-scraped, augmented OsteoAI images (mostly upper limb). Frozen-feature "
        "models of this kind scored at chance on radiographs from other hospitals. Not for "
        "clinical use.",
        "- Published-split numbers are inflated by leakage between the published splits; judge "
        "by the grouped CV and cross-source numbers.",
        f"- ONNX parity (max relative error): {results.get('parity')}.",
        "",
    ]
    card = folder / MODEL_CARD
    # add-localiser's section of an existing card: its figures are not in the run's results.
    _, kept = split_card(card.read_text(encoding="utf-8")) if card.exists() else ("", "")
    card.write_text("\n".join(lines) + kept)

"""The ``validate`` report: Markdown, with an ROC curve and a reliability plot as PNG files
beside it when matplotlib is installed (it comes with the ``train`` extra; without it the report
says so and keeps every figure as a table)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

RESEARCH = "**For research use only. Not for diagnostic use.**"


def _num(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_line(result: dict[str, Any]) -> str:
    """The one line ``validate`` prints without ``--json``; a figure the images cannot give
    (specificity without an image free of fracture, AUC on one class) reads ``n/a``."""
    guarded = result.get("skipped_by_guard", 0)
    skipped = f" ({guarded} more skipped by the guard)" if guarded else ""
    return (
        f"{result['model']} on {result['n']} images{skipped}: AUC {_num(result['auc'])}, "
        f"sensitivity {_num(result['sensitivity'])}, specificity {_num(result['specificity'])} "
        f"at threshold {result['threshold']:.4f}\n"
    )


def _interval(ci: Any) -> str:
    if not ci or ci[0] is None:
        return ""
    return f" ({ci[0]:.3f} to {ci[1]:.3f})"


def _guard_clause(count: int) -> str:
    if not count:
        return ""
    return (
        f", {count} skipped by the bundle's out-of-distribution guard (the daemon reports no "
        "result for them; listed in the JSON's `skipped`)"
    )


def markdown(result: dict[str, Any], plots: list[str], plot_note: str) -> str:
    """The report text for a ``validate`` result (see :func:`validate.summarise`)."""
    ci = result.get("ci95", {})
    guarded = result.get("skipped_by_guard", 0)
    lines = [
        f"# Local validation: {result['model']}",
        "",
        RESEARCH,
        "",
        f"Data: `{result['data']}`: {result['n']} images scored "
        f"({result.get('positives', 0)} fracture, {result.get('negatives', 0)} no fracture), "
        f"{len(result.get('skipped', [])) - guarded} left out as undecodable"
        f"{_guard_clause(guarded)}. Threshold "
        f"{_num(result.get('threshold'), 4)} (the bundle's). 95% intervals: bootstrap over "
        f"{result.get('bootstrap_unit', 'image')}s, 1000 draws.",
        "",
        "| metric | value (95% CI) |",
        "|---|---|",
        f"| AUC | {_num(result.get('auc'))}{_interval(ci.get('auc'))} |",
        f"| accuracy | {_num(result.get('accuracy'))}{_interval(ci.get('accuracy'))} |",
        f"| sensitivity | {_num(result.get('sensitivity'))}{_interval(ci.get('sensitivity'))} |",
        f"| specificity | {_num(result.get('specificity'))}{_interval(ci.get('specificity'))} |",
        f"| precision | {_num(result.get('precision'))} |",
        "",
        f"Confusion [[tn, fp], [fn, tp]] = {result.get('confusion')}.",
    ]
    group = result.get("per_group")
    if group:
        lines += [
            "",
            f"One vote per group (mean probability over a group's images, {group['n']} groups): "
            f"AUC {_num(group['auc'])}, accuracy {_num(group['accuracy'])}, sensitivity "
            f"{_num(group['sensitivity'])}, specificity {_num(group['specificity'])}.",
        ]
    lines += [
        "",
        "## Per body part (BodyPartExamined)",
        "",
        "| body part | n | fracture | AUC | accuracy | sensitivity | specificity |",
        "|---|---|---|---|---|---|---|",
    ]
    for part, row in result.get("body_parts", {}).items():
        lines.append(
            f"| {part} | {row['n']} | {row['positives']} | {_num(row['auc'])} | "
            f"{_num(row['accuracy'])} | {_num(row['sensitivity'])} | {_num(row['specificity'])} |"
        )
    lines += [
        "",
        "## Thresholds for target sensitivities (on these images)",
        "",
        "| target sensitivity | threshold | sensitivity | specificity |",
        "|---|---|---|---|",
    ]
    for row in result.get("thresholds", []):
        lines.append(
            f"| {row['target_sensitivity']:.2f} | {_num(row['threshold'], 4)} | "
            f"{_num(row.get('sensitivity'))} | {_num(row.get('specificity'))} |"
        )
    lines += [
        "",
        "A threshold read off this table is fitted to these images: confirm it on other cases.",
        "",
        "## Reliability (fracture rate against predicted probability)",
        "",
        "| probability | n | mean probability | fracture rate |",
        "|---|---|---|---|",
    ]
    for row in result.get("reliability", []):
        lines.append(
            f"| {row['low']:.1f}-{row['high']:.1f} | {row['n']} | "
            f"{_num(row['mean_probability'])} | {_num(row['fracture_rate'])} |"
        )
    lines += ["", *[f"![{name}]({name})" for name in plots], plot_note, ""]
    return "\n".join(line for line in lines if line is not None) + "\n"


def roc_points(
    y: npt.NDArray[np.int_], p: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order], p[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    positives, negatives = max(int(y.sum()), 1), max(int(len(y) - y.sum()), 1)
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


def write_plots(
    out: Path, y: npt.NDArray[np.int_], p: npt.NDArray[np.float64], result: dict[str, Any]
) -> tuple[list[str], str]:
    """ROC and reliability PNGs beside ``out``; their names and a note for the report."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "Plots left out: matplotlib is not installed (it comes with the train extra)."
    names = [f"{out.stem}_roc.png", f"{out.stem}_reliability.png"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    fpr, tpr = roc_points(y, p)
    ax.plot(fpr, tpr, label=f"AUC {_num(result.get('auc'))}")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out.parent / names[0], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    rows = [r for r in result.get("reliability", []) if r["n"]]
    ax.plot([r["mean_probability"] for r in rows], [r["fracture_rate"] for r in rows], marker="o")
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed fracture rate")
    ax.set(title="Reliability", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out.parent / names[1], dpi=100)
    plt.close(fig)
    return names, ""

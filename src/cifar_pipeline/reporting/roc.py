"""One-vs-rest ROC curves and their AUC per class, from predicted class probabilities."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cifar_pipeline.core import atomic

# False-positive rates the curves are sampled at for the DVC plot: fine where ROC curves rise steeply.
FPR_GRID = np.unique(np.r_[np.linspace(0, 0.1, 101), np.linspace(0.1, 1, 91)])


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) at every distinct score threshold, from (0, 0) to (1, 1); None without both positives
    and negatives. Tied scores form one point, so the curve runs diagonally through them."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], positive[order].astype(np.int64)
    last_of_each_score = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tps = np.cumsum(hits)[last_of_each_score]
    fps = last_of_each_score + 1 - tps
    return np.r_[0, fps] / n_neg, np.r_[0, tps] / n_pos


def area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under the curve (equals the probability that a positive outscores a negative,
    ties counting half)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def one_vs_rest(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict[str, dict]:
    """Per class: its ROC curve (class vs all others, scored by its probability) and AUC. A class
    absent from the labels (or the only one present) has no curve and is left out."""
    curves = {}
    for index, name in enumerate(classes):
        curve = roc_curve(labels == index, probabilities[:, index])
        if curve is not None:
            curves[name] = {"fpr": curve[0], "tpr": curve[1], "auc": area(*curve)}
    return curves


def macro_auc(curves: dict[str, dict]) -> float:
    return float(np.mean([c["auc"] for c in curves.values()])) if curves else float("nan")


def on_grid(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray = FPR_GRID) -> np.ndarray:
    """The curve's highest TPR at FPR <= each grid value (exact at the curve's corners)."""
    return tpr[np.searchsorted(fpr, grid, side="right") - 1]


def write_csv(curves: dict[str, dict], path: Path) -> None:
    """Wide CSV for `dvc plots`: an fpr column, then each class's TPR on the common FPR grid."""
    columns = np.column_stack([FPR_GRID, *(on_grid(c["fpr"], c["tpr"]) for c in curves.values())])
    buf = io.StringIO()
    np.savetxt(buf, columns, delimiter=",", fmt="%.6g", header=",".join(["fpr", *curves]), comments="")
    atomic.write_text(path, buf.getvalue())


def write_png(curves: dict[str, dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], linewidth=1, label=f"{name} (AUC {c['auc']:.4f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)

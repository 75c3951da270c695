"""Classification metrics from a confusion matrix (rows: true class, columns: predicted)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cifar_pipeline.core import atomic


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=float), where=den > 0)


def summarize(cm: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class accuracy (= recall), precision, recall, F1, and their macro averages."""
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    recall = _ratio(tp, support)
    precision = _ratio(tp, predicted)
    f1 = _ratio(2 * precision * recall, precision + recall)
    per_class = {
        c: {
            "accuracy": recall[i],
            "precision": precision[i],
            "recall": recall[i],
            "f1": f1[i],
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    }
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {c: {k: float(v) if k != "support" else v for k, v in m.items()} for c, m in per_class.items()},
    }


def write_confusion_csv(cm: np.ndarray, classes: list[str], path: Path) -> None:
    header = "true\\predicted," + ",".join(classes)
    rows = [f"{c}," + ",".join(str(int(v)) for v in row) for c, row in zip(classes, cm, strict=True)]
    atomic.write_text(path, "\n".join([header, *rows]) + "\n")


def read_confusion_csv(path: Path) -> tuple[np.ndarray, list[str]]:
    """What write_confusion_csv wrote: the matrix and the class names."""
    with open(path, newline="") as fh:
        header, *rows = csv.reader(fh)
    return np.array([[int(v) for v in row[1:]] for row in rows]), header[1:]


def _draw_confusion(ax, cm: np.ndarray, classes: list[str], title: str, fontsize: float) -> None:
    ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, int(v), ha="center", va="center", fontsize=fontsize, color="white" if v > threshold else "black")


def write_confusion_png(cm: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    _draw_confusion(ax, cm, classes, title, fontsize=7)
    ax.set_ylabel("true")
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def confusion_row(matrices: dict[str, np.ndarray], classes: list[str]):
    """The matrices side by side under their titles, sharing the true-class labels: a figure to log. Drawn
    for MLflow's artifact view at 1400 px, which scales it to about 850 px: about 280 px a matrix, counts
    about 9 px high, from twice as many pixels for high-density screens."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"font.size": 7}):
        fig = Figure(figsize=(8, 3.5), dpi=200, layout="tight")
        axes = fig.subplots(1, len(matrices), sharey=True, squeeze=False)[0]
        for ax, (title, cm) in zip(axes, matrices.items(), strict=True):
            _draw_confusion(ax, cm, classes, title, fontsize=6.5)
        axes[0].set_ylabel("true")
    return fig

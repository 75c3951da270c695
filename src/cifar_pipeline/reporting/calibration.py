"""Calibration on the test set: the expected calibration error (ECE), a reliability diagram, and a grid of the
most confidently wrong images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cifar_pipeline.core import atomic

BINS = 15  # equal-width confidence bins over [0, 1], as in Guo et al. 2017
GRID = 16  # images in the confidently-wrong grid
FILES = ("reliability.csv", "reliability.png", "confident_errors.png")  # what `write` puts in a model's eval folder


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> pd.DataFrame:
    """Per confidence bin (lower, upper]: its bounds, how many predictions fall in, their mean confidence (the
    top probability) and their accuracy; empty bins are left out."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    rows = [
        {
            "lower": b / bins,
            "upper": (b + 1) / bins,
            "count": int((index == b).sum()),
            "confidence": float(confidence[index == b].mean()),
            "accuracy": float(correct[index == b].mean()),
        }
        for b in np.unique(index)
    ]
    return pd.DataFrame(rows, columns=["lower", "upper", "count", "confidence", "accuracy"])


def expected_calibration_error(table: pd.DataFrame) -> float:
    """Sum over bins of (bin's share of predictions) x |accuracy - mean confidence|."""
    weights = table["count"] / table["count"].sum()
    return float((weights * (table["accuracy"] - table["confidence"]).abs()).sum())


def ece(probs: np.ndarray, labels: np.ndarray) -> float:
    return expected_calibration_error(reliability(probs, labels))


def confidently_wrong(probs: np.ndarray, labels: np.ndarray, k: int = GRID) -> np.ndarray:
    """Indices of the k wrong predictions with the highest top probability, most confident first."""
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    return wrong[np.argsort(-probs[wrong].max(1), kind="stable")][:k]


def write(probs: np.ndarray, labels: np.ndarray, images: np.ndarray, classes: list[str], name: str, out: Path) -> None:
    """FILES in out: the reliability table (a DVC plot), its diagram, and the confidently-wrong grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = reliability(probs, labels)
    atomic.write_text(out / "reliability.csv", table.to_csv(index=False))

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(table["lower"], table["accuracy"], width=1 / BINS, align="edge", edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy")
    ax.set_title(f"{name}: reliability, ECE {expected_calibration_error(table):.4f}")
    ax.legend(loc="upper left")
    atomic.write_with(out / "reliability.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)

    worst = confidently_wrong(probs, labels)
    fig, axes = plt.subplots(4, 4, figsize=(8, 9), squeeze=False)
    for ax, index in zip(axes.flat, [*worst, *[None] * (GRID - len(worst))], strict=True):
        ax.axis("off")
        if index is not None:
            predicted = int(probs[index].argmax())
            ax.imshow(images[index])
            ax.set_title(
                f"true {classes[labels[index]]}\npred {classes[predicted]} {probs[index, predicted]:.0%}", fontsize=8
            )
    fig.suptitle(f"{name}: the {len(worst)} most confidently wrong test images")
    fig.tight_layout()
    atomic.write_with(out / "confident_errors.png", lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)

"""One-vs-rest ROC curves and AUC: a hand-worked case, ties, and AUC against an independent pair count."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest

from cifar_pipeline.reporting.roc import (
    FPR_GRID,
    area,
    macro_auc,
    on_grid,
    one_vs_rest,
    roc_curve,
    write_csv,
    write_png,
)


def test_roc_curve_by_hand():
    # scores ranked: 0.9 (+), 0.8 (-), 0.7 (+), 0.6 (+), 0.2 (-); 3 positives, 2 negatives
    positive = np.array([True, False, True, True, False])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    fpr, tpr = roc_curve(positive, scores)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 0.5, 1]
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    # of the 6 (positive, negative) pairs only (0.7, 0.8) and (0.6, 0.8) are ranked wrong: AUC = 4/6
    assert area(fpr, tpr) == pytest.approx(4 / 6)


def test_tied_scores_count_half():
    positive = np.array([True, False, True, False])
    scores = np.array([0.5, 0.5, 0.9, 0.1])  # one tied pair, three pairs right
    fpr, tpr = roc_curve(positive, scores)
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]
    assert area(fpr, tpr) == pytest.approx(3.5 / 4)


def pairwise_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """P(positive outscores negative) + P(tie) / 2, counted over every pair."""
    pos, neg = scores[positive], scores[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_one_vs_rest_auc_matches_the_pair_count_per_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[labels]
    probs = np.round(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2)  # rounding makes ties
    curves = one_vs_rest(labels, probs, list("abcd"))
    for k, name in enumerate("abcd"):
        assert curves[name]["auc"] == pytest.approx(pairwise_auc(labels == k, probs[:, k]), abs=1e-12)
    assert macro_auc(curves) == pytest.approx(np.mean([c["auc"] for c in curves.values()]))
    assert 0.7 < macro_auc(curves) < 1


def test_a_class_missing_from_the_labels_has_no_curve():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.2, 0.8, 0.0]])
    curves = one_vs_rest(labels, probs, ["a", "b", "c"])
    assert set(curves) == {"a", "b"} and curves["a"]["auc"] == 1.0


def test_grid_takes_the_best_tpr_reached_at_each_fpr():
    fpr, tpr = np.array([0, 0, 0.5, 0.5, 1]), np.array([0, 0.4, 0.4, 0.9, 1])
    assert on_grid(fpr, tpr, np.array([0, 0.25, 0.5, 0.75, 1])).tolist() == [0.4, 0.4, 0.9, 0.9, 1]


def test_csv_has_an_fpr_column_and_one_tpr_column_per_class(tmp_path):
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6]])
    curves = one_vs_rest(labels, probs, ["cat", "dog"])
    write_csv(curves, tmp_path / "roc.csv")
    rows = list(csv.DictReader((tmp_path / "roc.csv").open()))
    assert list(rows[0]) == ["fpr", "cat", "dog"] and len(rows) == len(FPR_GRID)
    assert [float(r["fpr"]) for r in rows] == pytest.approx(FPR_GRID.tolist())
    assert float(rows[0]["cat"]) == 0.5 and float(rows[-1]["dog"]) == 1.0  # cat: 0.8 beats every negative
    write_png(curves, "test", tmp_path / "roc.png")
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"

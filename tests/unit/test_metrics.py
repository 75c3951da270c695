"""Confusion matrix and the metrics derived from it, against a hand-worked example."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_pipeline.reporting.metrics import (
    confusion_matrix,
    confusion_row,
    read_confusion_csv,
    summarize,
    write_confusion_csv,
    write_confusion_png,
)

CLASSES = ["a", "b", "c", "d"]
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
PREDS = np.array([0, 0, 1, 1, 0, 2, 2, 0, 0, 2])  # class 3 is never predicted
# rows: true, columns: predicted
CM = np.array([[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 2, 0], [1, 0, 1, 0]])


def test_confusion_matrix():
    assert np.array_equal(confusion_matrix(LABELS, PREDS, 4), CM)


@pytest.mark.filterwarnings("error")  # no division-by-zero warnings either
def test_summarize_by_hand():
    s = summarize(CM, CLASSES)
    # tp = 2, 1, 2, 0; support (row sums) = 3, 2, 3, 2; predicted (column sums) = 5, 2, 3, 0
    precision = [2 / 5, 1 / 2, 2 / 3, 0.0]  # d: no predictions -> 0, not NaN
    recall = [2 / 3, 1 / 2, 2 / 3, 0.0]
    f1 = [1 / 2, 1 / 2, 2 / 3, 0.0]  # 2PR/(P+R); a: (8/15)/(16/15)
    assert s["accuracy"] == pytest.approx(5 / 10)
    assert s["macro_precision"] == pytest.approx(47 / 120)
    assert s["macro_recall"] == pytest.approx(11 / 24)
    assert s["macro_f1"] == pytest.approx(5 / 12)
    for i, c in enumerate(CLASSES):
        m = s["per_class"][c]
        assert m["precision"] == pytest.approx(precision[i])
        assert m["recall"] == pytest.approx(recall[i]) and m["accuracy"] == pytest.approx(recall[i])
        assert m["f1"] == pytest.approx(f1[i])
    assert [s["per_class"][c]["support"] for c in CLASSES] == [3, 2, 3, 2]


def test_confusion_csv(tmp_path):
    path = tmp_path / "cm.csv"
    write_confusion_csv(CM, CLASSES, path)
    assert path.read_text() == "true\\predicted,a,b,c,d\na,2,1,0,0\nb,1,1,0,0\nc,1,0,2,0\nd,1,0,1,0\n"
    cm, classes = read_confusion_csv(path)
    assert np.array_equal(cm, CM) and classes == CLASSES


def test_confusion_png(tmp_path):
    path = tmp_path / "cm.png"
    write_confusion_png(CM, CLASSES, "test", path)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data.endswith(b"IEND\xaeB`\x82")  # complete file
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]


def test_confusion_row_puts_the_matrices_side_by_side():
    fig = confusion_row({"first": CM, "second": CM.T, "third": CM * 2}, CLASSES)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["first", "second", "third"]
    assert len({ax.get_position().y0 for ax in axes}) == 1  # one row
    assert [ax.get_ylabel() for ax in axes] == ["true", "", ""]
    assert [t.get_text() for t in axes[2].texts] == [str(v) for v in (CM * 2).flat]  # the counts

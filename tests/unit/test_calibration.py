"""Calibration on hand-made predictions whose ECE is known."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_pipeline.reporting import calibration


def predictions(rows: list[tuple[float, int, int]], classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(top probability, predicted class, true class) per image; the rest of the mass spread evenly."""
    probs = np.empty((len(rows), classes))
    for i, (top, predicted, _) in enumerate(rows):
        probs[i] = (1 - top) / (classes - 1)
        probs[i, predicted] = top
    return probs, np.array([true for _, _, true in rows])


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # 4 of 5 right at confidence 0.8: calibrated
        ([(0.8, 0, 0)] * 4 + [(0.8, 0, 1)], 0.0),
        # all right at 0.9: underconfident by 0.1
        ([(0.9, 1, 1)] * 4, 0.1),
        # bin at 0.95: 1 of 2 right (gap 0.45); bin at 0.55: 2 of 2 right (gap 0.45); each half the images
        ([(0.95, 0, 0), (0.95, 0, 2), (0.55, 2, 2), (0.55, 1, 1)], 0.45),
        # bin at 0.7: 1 of 3 right (gap 0.7 - 1/3), 3/4 of the images; bin at 0.45: 1 of 1 (gap 0.55), 1/4
        ([(0.7, 0, 0), (0.7, 0, 1), (0.7, 1, 2), (0.45, 2, 2)], 0.75 * (0.7 - 1 / 3) + 0.25 * 0.55),
    ],
    ids=["calibrated", "underconfident", "two-bins", "unequal-bins"],
)
def test_ece_of_hand_made_predictions(rows, expected):
    probs, labels = predictions(rows)
    assert calibration.ece(probs, labels) == pytest.approx(expected)


def test_the_reliability_table_has_one_row_per_filled_bin_with_its_counts():
    probs, labels = predictions([(0.95, 0, 0), (0.95, 0, 2), (0.55, 2, 2), (0.55, 1, 1), (0.56, 1, 0)])
    table = calibration.reliability(probs, labels)
    assert list(table["count"]) == [3, 2]
    assert list(table["upper"]) == pytest.approx([9 / 15, 1.0])
    assert list(table["accuracy"]) == pytest.approx([2 / 3, 0.5])
    assert list(table["confidence"]) == pytest.approx([(0.55 + 0.55 + 0.56) / 3, 0.95])


def test_a_confidence_of_exactly_one_falls_in_the_last_bin():
    probs, labels = predictions([(1.0, 0, 0)])
    assert list(calibration.reliability(probs, labels)["upper"]) == [1.0]


def test_the_most_confidently_wrong_come_first_and_right_ones_never():
    probs, labels = predictions([(0.9, 0, 0), (0.6, 1, 0), (0.99, 2, 1), (0.8, 0, 2), (0.97, 1, 1)])
    assert list(calibration.confidently_wrong(probs, labels, k=2)) == [2, 3]
    assert list(calibration.confidently_wrong(probs, labels)) == [2, 3, 1]


def test_write_puts_the_table_the_diagram_and_the_grid_in_the_folder(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=40)
    labels = rng.integers(0, 10, size=40)
    images = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    calibration.write(probs, labels, images, [f"c{i}" for i in range(10)], "cnn", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(calibration.FILES)
    assert (tmp_path / "reliability.csv").read_text().startswith("lower,upper,count,confidence,accuracy")
    for png in ("reliability.png", "confident_errors.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")

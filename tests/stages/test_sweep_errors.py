"""A sweep with an unknown param, an empty grid or a bad value fails with one `error:` before anything is
queued (the 2 x 2 sweep itself, and a name that exists, are in tests/e2e/test_sweeps.py)."""

from __future__ import annotations

import sys

import pytest

from helpers.processes import assert_clean_failure, run


@pytest.mark.parametrize(
    ("grid", "fragments"),
    [
        (["cnn.optimizr.lr=0.1,0.2", "seed=0,1"], ["unknown param cnn.optimizr.lr"]),
        ([], ["the grid is empty"]),
        (["seed="], ["'seed=' gives no values"]),
        (["cnn.optimizer.lr=0.1,fast"], ["cnn.optimizer.lr must be a number"]),
    ],
    ids=["unknown-param", "empty-grid", "no-values", "bad-value"],
)
def test_a_bad_sweep_is_one_error_and_queues_nothing(project, grid, fragments):
    result = run([sys.executable, "-m", "cifar_pipeline.commands.sweep", "bad", *grid], project, check=False)
    assert_clean_failure(result, *fragments)
    assert "bad-" not in run(["dvc", "queue", "status"], project).stdout
    assert run(["dvc", "exp", "list", "--name-only"], project).stdout.strip() == ""

"""A real 2 x 2 sweep (two learning rates of the seed CNN, two seeds) run through DVC's queue with two jobs,
in a tiny project; shared by tests/e2e/test_sweeps.py and the browser test."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.processes import run
from helpers.project import edit_params, make_project

SWEEP = "lrs"
GRID = ["cnn.optimizer.lr=0.002,0.004", "seed=0,1"]
CONFIGS = {"cnn.optimizer.lr=0.002", "cnn.optimizer.lr=0.004"}


@dataclass(frozen=True)
class Swept:
    repo: Path
    output: str  # what the sweep command printed

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.repo / 'mlflow.db'}"


@pytest.fixture(scope="session")
def swept(tmp_path_factory, archive: Path, archive_md5: str) -> Swept:
    repo = make_project(tmp_path_factory.mktemp("sweep") / "project", archive, archive_md5)
    edit_params(repo, **{"cnn.epochs": 1})
    run(["git", "commit", "-qam", "one epoch"], repo)
    command = [sys.executable, "-m", "cifar_pipeline.commands.sweep", SWEEP, *GRID, "-j", "2"]
    done = run(command, repo, timeout=1800)
    return Swept(repo, done.stdout + done.stderr)

"""Shared fixtures: tiny learnable data in the official format and a throw-away copy of the project in
its own git repo (what `dvc repro` and the stage CLIs run in). The helpers they use are in tests/helpers/."""

from __future__ import annotations

import gc
import hashlib
import shutil
import signal
from pathlib import Path

import pytest

from helpers.data import make_archive
from helpers.processes import run
from helpers.project import make_project


def pytest_configure(config):
    """A shell's background job (`cmd &` without job control) starts with SIGINT ignored, and every process it
    starts inherits that: the tests that press Ctrl-C on a stage would test nothing. Restore Python's handler,
    so the stages start as they do from a terminal."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    """Spare the interpreter's garbage collection over every torch and MLflow object at exit (4 s and more),
    as the stages do (core/cli.py)."""
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped on a machine without a CUDA GPU (CI); the GPU machine runs them."""
    if not any("cuda" in item.keywords for item in items):
        return
    import torch  # here, not at the top: collecting tests that need no GPU loads no torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz")


@pytest.fixture(scope="session")
def archive_md5(archive: Path) -> str:
    return hashlib.md5(archive.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, made once: MLflow builds a new one through its ~70 schema migrations
    (1-2 s on a CPU). `fresh_store` copies it."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def fresh_store(empty_store: Path, tmp_path: Path) -> Path:
    """tmp_path/mlflow.db, an empty MLflow store."""
    return Path(shutil.copy(empty_store, tmp_path / "mlflow.db"))


@pytest.fixture
def project(tmp_path: Path, archive: Path, archive_md5: str) -> Path:
    return make_project(tmp_path / "project", archive, archive_md5)


@pytest.fixture(scope="session")
def experiments(tmp_path_factory, archive: Path, archive_md5: str) -> tuple[Path, str, str]:
    """One tiny project run as two DVC experiments: `first` (every stage), then `second` with a new
    resnet34 learning rate. Returns the project and both runs' output; shared by the end-to-end and
    browser tests."""
    repo = make_project(tmp_path_factory.mktemp("experiments") / "project", archive, archive_md5)
    first = run(["dvc", "exp", "run", "-n", "first"], repo).stdout
    second = run(["dvc", "exp", "run", "-n", "second", "-S", "resnet34.optimizer.lr=0.002"], repo).stdout
    return repo, first, second

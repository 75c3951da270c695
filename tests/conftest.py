"""Shared fixtures: tiny learnable data in the official format, params shrunk to seconds, and a
throw-away copy of the project in its own git repo (what `dvc repro` and the stage CLIs run in)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.models import resnet18

from synthetic import make_archive

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore",
                 ".dvc/plots/models.json", ".dvc/plots/offline.html"]


def tiny_params(md5: str) -> dict:
    """params.yaml with every model shrunk to seconds on a CPU."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(md5=md5, val_size=100)
    params["runtime"].update(device="cpu", progress=False)
    params["cnn"].update(epochs=2, batch_size=32)
    params["resnet34"].update(epochs=1, batch_size=32)
    params["resnet18"].update(epochs=1, batch_size=32, image_size=32)
    return params


def stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PYTEST_"))}
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="test",
               GIT_AUTHOR_EMAIL="test@example.com", GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=stage_env(**env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def stage(module: str, *args: str, cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run a stage CLI (`python -m cifar_pipeline.stages.<module>`) the way dvc.yaml does."""
    return run([sys.executable, "-m", f"cifar_pipeline.stages.{module}", *args], cwd, check=check, **env)


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz")


@pytest.fixture(scope="session")
def archive_md5(archive: Path) -> str:
    return hashlib.md5(archive.read_bytes()).hexdigest()


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


def make_project(repo: Path, archive: Path, archive_md5: str) -> Path:
    """A copy of the pipeline in a fresh git repo, with the tiny archive in place and tiny params."""
    for name in PROJECT_FILES:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "data").mkdir()
    shutil.copy(archive, repo / "data" / "cifar-10-python.tar.gz")
    params = tiny_params(archive_md5)
    params["resnet18"]["weights_path"] = str(random_resnet18_weights(repo.parent / "resnet18-random.pth"))
    write_params(repo, params)
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "init"], repo)
    return repo


def random_resnet18_weights(path: Path) -> Path:
    """A stand-in for the ImageNet file: torchvision's resnet18 keys and shapes, random values."""
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())

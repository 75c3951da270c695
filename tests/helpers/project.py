"""A throw-away copy of the pipeline in its own git repo, and its params.yaml."""

from __future__ import annotations

import functools
import io
import shutil
from pathlib import Path

import yaml

from helpers.processes import run, stage

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = [
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots/models.json",
    ".dvc/plots/roc.json",
    ".dvc/plots/offline.html",
]


# Every stage of dvc.yaml, as `dvc repro` prints them.
EVERY_STAGE = {
    "download",
    "finetune_resnet18",
    "train_cnn",
    "train_resnet34",
    "evaluate@cnn",
    "evaluate@resnet34",
    "evaluate@resnet18",
    "compare",
}


def stages_ran(output: str) -> set[str]:
    """The stages a `dvc repro` or `dvc exp run` output says it ran (not those it restored from a cache)."""
    return {s for s in EVERY_STAGE if f"Running stage '{s}'" in output}


def tiny_params(md5: str) -> dict:
    """params.yaml with every model shrunk to seconds on a CPU."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(md5=md5, val_size=100)
    params["runtime"].update(device="cpu")
    params["progress"] = False
    params["cnn"].update(epochs=2, batch_size=32)
    params["resnet34"].update(epochs=1, batch_size=32)
    params["resnet18"].update(epochs=1, batch_size=32, image_size=32)
    return params


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
    path.write_bytes(_random_resnet18_file())
    return path


@functools.cache  # built once per test process: every project gets a copy of the same file
def _random_resnet18_file() -> bytes:
    import torch  # here, not at the top: collecting the tests needs no torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(resnet18(weights=None).state_dict(), buffer)
    return buffer.getvalue()


RESUMABLE_EPOCHS = 4


def make_resumable(repo: Path) -> Path:
    """The project with a deterministic 4-epoch CNN (batches of 16), committed, data prepared: the training
    that the resume tests stop and restart."""
    edit_params(repo, **{"runtime.deterministic": True, "cnn.epochs": RESUMABLE_EPOCHS, "cnn.batch_size": 16})
    run(["git", "commit", "-qam", "deterministic cnn"], repo)
    stage("download", cwd=repo)
    return repo


def store(repo: Path) -> str:
    """The project's own MLflow store (params.yaml's default tracking URI)."""
    return f"sqlite:///{repo / 'mlflow.db'}"


def runs_in(uri: str, experiment: str = "cifar10") -> list:
    """Every run of the experiment in the store at uri; none if the experiment does not exist."""
    from mlflow import MlflowClient  # here, not at the top: collecting the tests needs no MLflow

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def set_key(params: dict, path: str, value: object) -> dict:
    """Set the dotted key `path` (e.g. "cnn.optimizer.lr") in a params mapping; returns the mapping."""
    *parents, key = path.split(".")
    section = params
    for name in parents:
        section = section[name]
    section[key] = value
    return params


def edit_params(repo: Path, **values: object) -> None:
    """Set dotted keys in the project's params.yaml, e.g. edit_params(p, **{"cnn.epochs": 3})."""
    params = read_params(repo)
    for path, value in values.items():
        set_key(params, path, value)
    write_params(repo, params)


DELETE = object()


def mutated(path: str, value: object) -> dict:
    """The repo's params.yaml as a mapping, with the dotted key `path` set to value (or removed, for DELETE)."""
    params = read_params(ROOT)
    *parents, key = path.split(".")
    if value is DELETE:
        section = params
        for name in parents:
            section = section[name]
        del section[key]
        return params
    return set_key(params, path, value)

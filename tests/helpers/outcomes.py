"""What a CNN training left in a project: its final weights and its MLflow runs."""

from __future__ import annotations

from pathlib import Path

import torch
from mlflow import MlflowClient

from cifar_pipeline.tracking.run_metadata import epoch_metric
from helpers.project import store


def final_weights(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "models" / "cnn" / "last.pt", weights_only=True)["state_dict"]


def assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def cnn_runs(project: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(store(project))
    experiment = client.get_experiment_by_name("cifar10")
    return client, client.search_runs([experiment.experiment_id], "tags.model = 'cnn'")


def assert_one_complete_run(project: Path, epochs: int) -> dict:
    """Exactly one cnn run, FINISHED, each epoch's metrics logged once; returns its params."""
    client, runs = cnn_runs(project)
    assert [r.info.status for r in runs] == ["FINISHED"]
    for key in ("train_loss", "val_acc", "lr", "epoch_seconds"):
        steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, epoch_metric(key)))
        assert steps == list(range(1, epochs + 1)), key
    return runs[0].data.params

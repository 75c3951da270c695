"""The real `dvc repro` on tiny learnable data, read back through MLflow; then one param edit."""

from __future__ import annotations

import csv

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from conftest import read_params, run, write_params

STAGES = ["download", "train_cnn", "train_resnet34", "finetune_resnet18",
          "evaluate@cnn", "evaluate@resnet34", "evaluate@resnet18", "compare"]
EPOCHS = {"cnn": 2, "resnet34": 1, "resnet18": 1}
EPOCH_METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"]


def ran(stdout: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in stdout}


def model_runs(client: MlflowClient) -> dict[str, list]:
    experiment = client.get_experiment_by_name("cifar10")
    runs = client.search_runs([experiment.experiment_id])
    return {name: [r for r in runs if r.info.run_name == name] for name in [*EPOCHS, "comparison"]}


@pytest.mark.slow
def test_dvc_repro_end_to_end_then_only_the_edited_branch_reruns(project):
    first = run(["dvc", "repro"], project)
    assert ran(first.stdout) == set(STAGES)
    for path in ["data/cifar10.npz", "reports/comparison.md", "reports/history/resnet18.csv",
                 *(f"models/{m}/best.pt" for m in EPOCHS), *(f"reports/eval/{m}/confusion_matrix.png" for m in EPOCHS)]:
        assert (project / path).is_file(), path

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = model_runs(client)
    for name, epochs in EPOCHS.items():
        assert len(runs[name]) == 1, name
        r = runs[name][0]
        assert r.info.status == "FINISHED"
        assert r.data.tags["stage"] in STAGES and r.data.tags["git_commit"] != "unknown"
        assert r.data.params[f"{name}.optimizer.lr"] and r.data.params["seed"] == "42"
        assert r.data.params["data.val_size"] == "100"
        for key in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (name, key)
        assert "test_accuracy" in r.data.metrics and "test_macro_f1" in r.data.metrics
        artifacts = {a.path for folder in ("checkpoints", "evaluation")
                     for a in client.list_artifacts(r.info.run_id, folder)}
        assert {"checkpoints/best.pt", "checkpoints/last.pt", "evaluation/confusion_matrix.png"} <= artifacts
        mlflow.set_tracking_uri(uri)
        models = mlflow.search_logged_models(experiment_ids=[r.info.experiment_id],
                                             filter_string=f"source_run_id = '{r.info.run_id}'", output_format="list")
        assert [m.name for m in models] == ["best_model"], name
    assert runs["cnn"][0].data.metrics["test_accuracy"] > 0.5  # chance is 0.1
    weights_file = runs["resnet18"][0].data.params["resnet18.weights_path"]
    trained = torch.load(project / "models" / "resnet18" / "best.pt", weights_only=True)["state_dict"]
    frozen = torch.load(weights_file, weights_only=True)["layer1.0.conv1.weight"]
    assert torch.equal(trained["net.layer1.0.conv1.weight"], frozen)  # loaded from the file, kept frozen
    assert len(runs["comparison"]) == 1

    with open(project / "reports" / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == list(EPOCHS)
    assert {r["mlflow_run_id"] for r in rows} == {runs[m][0].info.run_id for m in EPOCHS}

    params = read_params(project)
    params["resnet34"]["optimizer"]["lr"] = 0.002
    write_params(project, params)
    second = run(["dvc", "repro"], project)
    assert ran(second.stdout) == {"train_resnet34", "evaluate@resnet34", "compare"}
    runs = model_runs(client)
    assert [len(runs[m]) for m in EPOCHS] == [1, 2, 1]
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], project).stdout

"""The real pipeline on tiny learnable data, run as two DVC experiments and read back through MLflow."""

from __future__ import annotations

import csv
import hashlib
import json

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from cifar_pipeline.tracking.run_metadata import epoch_metric
from helpers.processes import run
from helpers.project import EVERY_STAGE, read_params, stages_ran, store, write_params

EPOCHS = {"cnn": 2, "resnet34": 1, "resnet18": 1}
EPOCH_COLUMNS = ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"]
TRAIN_STAGES = {"cnn": "train_cnn", "resnet34": "train_resnet34", "resnet18": "finetune_resnet18"}
TEST_METRICS = [
    "test/accuracy",
    "test/ece",
    "test/loss",
    "test/macro_auc",
    "test/macro_f1",
    "test/macro_precision",
    "test/macro_recall",
]


def runs_by_model(client: MlflowClient, experiment_id: str) -> dict[str, list]:
    """Each model's runs, oldest first; `comparison` holds the compare runs."""
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    grouped = {name: [r for r in runs if r.data.tags.get("model") == name] for name in EPOCHS}
    grouped["comparison"] = [r for r in runs if r.data.tags.get("stage") == "compare"]
    return grouped


def assert_model_run(client: MlflowClient, r, name: str, project, head: str) -> None:
    tags, params = r.data.tags, r.data.params
    assert r.info.status == "FINISHED" and r.info.run_name == f"{name}-first"
    assert tags["model"] == name and tags["stage"] == TRAIN_STAGES[name]
    assert tags["mlflow.source.name"] == f"dvc.yaml:{TRAIN_STAGES[name]}"
    assert tags["mlflow.source.git.commit"] == head and tags["dvc_exp_baseline"] == head
    assert tags["dvc_exp_name"] == "first" and "mlflow.note.content" in tags
    assert run(["git", "rev-parse", f"{tags['dvc_exp_ref']}^"], project).stdout.strip() == head  # the exp's commit

    # Names common to every model; only settings that take effect; the runtime as resolved.
    assert params["model"] == name and params["optimizer.lr"] and params["batch_size"] == "32"
    assert params["epochs"] == str(EPOCHS[name]) and params["seed"] == "42" and params["data.val_size"] == "100"
    assert params["runtime.device"] == "cpu" and params["runtime.torch"] == torch.__version__
    assert params["runtime.compile"] == "False" and params["runtime.bf16"] == "False"
    assert "optimizer.momentum" not in params and "progress" not in params  # adam; no effect on results
    assert ("scheduler.step_size" in params) == (name == "cnn")  # only the CNN uses a step schedule
    assert not any(k.startswith(("cnn.", "resnet")) for k in params) and "None" not in params.values()
    assert int(params["params_total"]) >= int(params["params_trainable"]) > 0

    for key in map(epoch_metric, EPOCH_COLUMNS):
        steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
        assert sorted(steps) == list(range(1, EPOCHS[name] + 1)), (name, key)

    # The dataset input: digest = md5 of the prepared data, profile = split sizes.
    [data_input] = r.inputs.dataset_inputs
    data = data_input.dataset
    assert (data.name, data.digest) == ("cifar10", hashlib.md5((project / "data/cifar10.npz").read_bytes()).hexdigest())
    assert json.loads(data.source)["url"] == read_params(project)["data"]["url"]
    assert json.loads(data.profile)["val"] == 100 and json.loads(data.profile)["test"] > 0
    assert {t.key: t.value for t in data_input.tags}["mlflow.data.context"] == "training"

    # Test metrics come from evaluate: linked to the logged model and the dataset, run status untouched.
    [model] = mlflow.search_logged_models(
        experiment_ids=[r.info.experiment_id], output_format="list", filter_string=f"source_run_id = '{r.info.run_id}'"
    )
    linked = {m.key: m for m in model.metrics if m.key.startswith("test/")}
    assert sorted(linked) == sorted(TEST_METRICS), name
    assert linked["test/accuracy"].value == r.data.metrics["test/accuracy"]
    assert (linked["test/accuracy"].dataset_name, linked["test/accuracy"].dataset_digest) == (data.name, data.digest)
    assert r.info.end_time <= linked["test/accuracy"].timestamp  # evaluate did not stretch the run's duration
    assert len([k for k in r.data.metrics if k.startswith("test_per_class/")]) == 10
    artifacts = {a.path for folder in ("", "checkpoints") for a in client.list_artifacts(r.info.run_id, folder)}
    assert {"confusion_matrix.png", "checkpoints/best.pt", "checkpoints/last.pt"} <= artifacts


@pytest.mark.slow
def test_two_dvc_experiments_read_back_through_mlflow(experiments):
    project, first, second = experiments
    assert stages_ran(first) == EVERY_STAGE
    assert stages_ran(second) == {"train_resnet34", "evaluate@resnet34", "compare"}
    for path in [
        "data/cifar10.npz",
        "reports/comparison.md",
        "reports/history/resnet18.csv",
        *(f"models/{m}/best.pt" for m in EPOCHS),
        *(f"reports/eval/{m}/confusion_matrix.png" for m in EPOCHS),
    ]:
        assert (project / path).is_file(), path

    uri = store(project)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cifar10")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    runs = runs_by_model(client, experiment.experiment_id)
    assert [len(runs[m]) for m in [*EPOCHS, "comparison"]] == [1, 2, 1, 2]
    for name in EPOCHS:
        assert_model_run(client, runs[name][0], name, project, head)
    assert runs["cnn"][0].data.metrics["test/accuracy"] > 0.5  # chance is 0.1

    # Runs reused by `second` carry both experiments; `second`'s comparison links the runs it compared.
    assert runs["cnn"][0].data.tags["dvc_exps"] == "first second"
    assert runs["resnet34"][0].data.tags["dvc_exps"] == "first"
    assert runs["resnet34"][1].info.run_name == "resnet34-second"
    compared = runs["comparison"][1]
    assert compared.info.run_name == "comparison-second"
    current = [runs["cnn"][0], runs["resnet34"][1], runs["resnet18"][0]]
    for r in current:
        assert f"runs/{r.info.run_id})" in compared.data.tags["mlflow.note.content"]
    assert {m.split("/")[1] for m in compared.data.metrics} == set(EPOCHS)
    assert "confusion_matrices.png" in {a.path for a in client.list_artifacts(compared.info.run_id)}
    in_second = client.search_runs([experiment.experiment_id], "tags.dvc_exps LIKE '%second%'")
    assert {r.info.run_id for r in in_second} == {r.info.run_id for r in [*current, compared]}

    weights_file = runs["resnet18"][0].data.params["weights_path"]
    trained = torch.load(project / "models" / "resnet18" / "best.pt", weights_only=True)["state_dict"]
    frozen = torch.load(weights_file, weights_only=True)["layer1.0.conv1.weight"]
    assert torch.equal(trained["net.layer1.0.conv1.weight"], frozen)  # loaded from the file, kept frozen

    with open(project / "reports" / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["model"] for r in rows] == list(EPOCHS)
    assert [r["mlflow_run_id"] for r in rows] == [r.info.run_id for r in current]
    dvc_metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert dvc_metrics == {"test_acc": {r["model"]: round(float(r["test_accuracy"]), 4) for r in rows}}
    shown = (
        run(["dvc", "exp", "show", "--only-changed", "--keep", "test_acc", "--drop", "Created|.*/", "--csv"], project)
        .stdout.splitlines()[0]
        .split(",")
    )  # the README's command
    assert shown[3:] == ["test_acc.cnn", "test_acc.resnet18", "test_acc.resnet34", "resnet34.optimizer.lr"]


@pytest.mark.slow
def test_progress_bars_and_mlflow_settings_rerun_nothing(experiments):
    project = experiments[0]
    original = (project / "params.yaml").read_text()
    params = read_params(project)
    params["progress"] = not params["progress"]
    params["mlflow"].update(experiment="renamed", system_metrics=True)
    write_params(project, params)
    try:
        assert "Data and pipelines are up to date" in run(["dvc", "repro"], project).stdout
    finally:
        (project / "params.yaml").write_text(original)

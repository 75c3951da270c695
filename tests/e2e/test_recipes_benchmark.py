"""benchmarks/recipes.py on CPU: recipes x seeds as DVC experiments, summarised; the workspace untouched;
each run tracked in MLflow with its ROC curves and effective lr."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys

import dvc.api
import pytest
from mlflow import MlflowClient

from helpers.processes import run
from helpers.project import ROOT, read_params, store


@pytest.mark.slow
def test_benchmark_runs_each_recipe_and_seed_as_an_experiment(project, tmp_path):
    shutil.copytree(ROOT / "recipes", project / "recipes")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "recipes"], project)
    params_before = read_params(project)
    out = tmp_path / "bench"
    run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "recipes.py"),
            "--recipes",
            "cnn-fast",
            "--seeds",
            "0",
            "1",
            "--out",
            str(out),
            "-S",
            "cnn.epochs=2",
            "-S",
            "cnn.batch_size=32",
        ],
        project,
    )

    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["recipe"], r["seed"], r["epochs"]) for r in rows] == [("cnn-fast", 0, 2), ("cnn-fast", 1, 2)]
    summary = json.loads((out / "recipes.json").read_text())
    s = summary["recipes"]["cnn-fast"]
    accuracies = [r["test_accuracy"] for r in rows]
    assert (s["model"], s["n"], s["selected_on_validation"]) == ("cnn", 2, True)
    assert s["test_accuracy_mean"] == pytest.approx(statistics.fmean(accuracies))
    assert s["test_accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
    assert s["train_seconds"] > 0 and s["wall_seconds"] > s["train_seconds"]
    assert summary["environment"]["commit"] and summary["environment"]["extra_overrides"] == [
        "cnn.epochs=2",
        "cnn.batch_size=32",
    ]

    assert read_params(project) == params_before  # --temp: the workspace's params.yaml is not edited
    assert (
        subprocess.run(
            ["git", "status", "--porcelain", "params.yaml"], cwd=project, capture_output=True, text=True
        ).stdout
        == ""
    )
    # DVC caches the evaluate outputs: read through DVC, at the experiment
    roc_csv = dvc.api.read("reports/eval/cnn/roc.csv", repo=str(project), rev=rows[0]["experiment"])
    assert roc_csv.splitlines()[0] == "fpr,airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"

    client = MlflowClient(store(project))
    experiment = client.get_experiment_by_name("cifar10")
    runs = client.search_runs([experiment.experiment_id], "tags.model = 'cnn'")
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == sorted(r["experiment"] for r in rows)
    for r in runs:
        assert r.data.params["scheduler.name"] == "onecycle" and r.data.params["augment.cutout"] == "8"
        assert r.data.metrics["effective_lr"] == pytest.approx(0.1 * 32 / 128)
        assert 0 <= r.data.metrics["test/macro_auc"] <= 1 and "test_auc/cat" in r.data.metrics
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "evaluation")}
        assert {"evaluation/roc.png", "evaluation/roc.csv"} <= artifacts


@pytest.mark.slow
def test_benchmark_runs_the_airbench_recipe_end_to_end_and_prints_its_table(project, tmp_path):
    """cnn-airbench94 (every fast-training switch on) through the real pipeline: DVC experiment, MLflow run,
    registry and evaluate; narrowed so the CPU trains it in seconds."""
    shutil.copytree(ROOT / "recipes", project / "recipes")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "recipes"], project)
    out = tmp_path / "bench"
    narrow = ["cnn.epochs=2", "cnn.batch_size=32", "cnn.wide.widths=[8,16,16]", "cnn.wide.whiten_bias_epochs=1"]
    command = [sys.executable, str(ROOT / "benchmarks" / "recipes.py"), "--recipes", "cnn-airbench94"]
    result = run([*command, "--seeds", "0", "--out", str(out), *(a for o in narrow for a in ("-S", o))], project)

    (row,) = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert (row["recipe"], row["epochs"]) == ("cnn-airbench94", 2) and 0 <= row["test_accuracy"] <= 1
    assert row["train_seconds_after_first_step"] == pytest.approx(row["train_seconds"] - row["first_step_seconds"])
    s = json.loads((out / "recipes.json").read_text())["recipes"]["cnn-airbench94"]
    assert s["n"] == 1 and s["wall_seconds"] > s["train_seconds"] > s["train_seconds_after_first_step"] > 0
    table = result.stdout[result.stdout.index("recipe ") :].splitlines()
    assert table[2].startswith("cnn-airbench94") and f"{100 * s['test_accuracy_mean']:.2f}" in table[2]

    client = MlflowClient(store(project))
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    assert mlflow_run.data.params["arch"] == "wide" and mlflow_run.data.params["tta"] == "flip_shift"
    assert "test/accuracy" in mlflow_run.data.metrics
    assert client.get_registered_model("cifar10-cnn").latest_versions

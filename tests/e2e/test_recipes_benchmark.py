"""benchmarks/recipes.py on CPU: recipes x seeds as DVC experiments, summarised; the workspace untouched;
each run tracked in MLflow with its ROC curves and effective lr."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from helpers.processes import run
from helpers.project import ROOT, read_params


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
    roc_csv = run(["git", "show", f"{rows[0]['experiment_rev']}:reports/eval/cnn/roc.csv"], project).stdout
    assert roc_csv.splitlines()[0] == "fpr,airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cifar10")
    runs = client.search_runs([experiment.experiment_id], "tags.model = 'cnn'")
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == sorted(r["experiment"] for r in rows)
    for r in runs:
        assert r.data.params["scheduler.name"] == "onecycle" and r.data.params["augment.cutout"] == "8"
        assert r.data.metrics["effective_lr"] == pytest.approx(0.1 * 32 / 128)
        assert 0 <= r.data.metrics["test/macro_auc"] <= 1 and "test_auc/cat" in r.data.metrics
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id, "evaluation")}
        assert {"evaluation/roc.png", "evaluation/roc.csv"} <= artifacts

"""params.yaml as DVC writes it: `dvc exp run -S` writes YAML 1.2, and the stages read the numbers it writes."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from cifar_pipeline.core import yaml12
from helpers.processes import run
from helpers.project import store


@pytest.mark.slow
def test_dvc_exp_run_with_a_learning_rate_below_1e_4_trains(project):
    result = run(["dvc", "exp", "run", "-n", "small-lr", "-S", "cnn.optimizer.lr=0.00005", "train_cnn"], project)

    assert "lr: 5e-05" in (project / "params.yaml").read_text()  # DVC wrote the exponent form
    assert yaml12.load((project / "params.yaml").read_text())["cnn"]["optimizer"]["lr"] == 5e-05
    assert "train_cnn: best val_acc" in result.stdout
    client = MlflowClient(store(project))
    [trained] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert float(trained.data.params["optimizer.lr"]) == 5e-05

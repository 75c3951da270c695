"""The comparison table's seed cells from real runs in an MLflow store: same params with other seeds are
averaged, a run with other params is not, and a lone seed is said to be one."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow import MlflowClient

from cifar_pipeline.reporting.comparison import seed_note
from cifar_pipeline.reporting.seeds import same_params_runs, seed_cells


@pytest.fixture
def store(fresh_store):
    client = MlflowClient(f"sqlite:///{fresh_store}")
    return client, client.create_experiment("cifar10", artifact_location=(fresh_store.parent / "art").as_uri())


def logged(store, seed: int, lr: str, accuracy: float | None, model: str = "cnn") -> str:
    client, experiment = store
    run = client.create_run(experiment, tags={"model": model})
    client.log_param(run.info.run_id, "seed", str(seed))
    client.log_param(run.info.run_id, "optimizer.lr", lr)
    if accuracy is not None:
        client.log_metric(run.info.run_id, "test/accuracy", accuracy)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_runs_of_the_same_params_with_other_seeds_give_the_mean_and_sd(store):
    this = logged(store, 0, "0.001", 0.80)
    logged(store, 1, "0.001", 0.82)
    logged(store, 2, "0.001", 0.84)
    logged(store, 3, "0.01", 0.10)  # other params
    logged(store, 4, "0.001", None)  # not evaluated
    logged(store, 5, "0.001", 0.5, model="resnet34")  # another model
    runs = same_params_runs(*store, this)
    assert seed_cells(runs) == {"seeds": "3 (0, 1, 2)", "test_accuracy_over_seeds": "82.00 % ± 2.00"}


def test_the_latest_run_of_a_seed_counts_once_and_this_run_for_its_own_seed(store):
    logged(store, 0, "0.001", 0.70)
    this = logged(store, 0, "0.001", 0.80)
    logged(store, 0, "0.001", 0.90)  # a later rerun of this seed
    assert seed_cells(same_params_runs(*store, this)) == {"seeds": "1 (0)", "test_accuracy_over_seeds": "one seed"}


def test_the_table_says_which_models_ran_with_one_seed():
    table = pd.DataFrame({"model": ["cnn", "resnet34"], "test_accuracy_over_seeds": ["one seed", "82.00 % ± 2.00"]})
    note = seed_note(table)
    assert "**One seed only** for cnn:" in note and "resnet34" not in note.split("One seed only")[1]
    assert "One seed" not in seed_note(table.assign(test_accuracy_over_seeds="82.00 % ± 2.00"))

"""The registry against a real MLflow store: the champion alias follows validation accuracy only, and
a stage that reruns after an interrupted model logging ends with one logged model and one version."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.entities import LoggedModelStatus

from cifar_pipeline.core.config import CnnParams, MlflowParams
from cifar_pipeline.engine import checkpoint
from cifar_pipeline.engine.models import build_model
from cifar_pipeline.tracking import registry
from cifar_pipeline.tracking.store import Tracker
from helpers.data import CLASSES

CFG = MlflowParams(tracking_uri="sqlite:///mlflow.db", experiment="registry")


@pytest.fixture
def tracker(tmp_path, monkeypatch) -> Tracker:
    monkeypatch.chdir(tmp_path)  # the relative store resolves here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Tracker(CFG)


def finished_run(tracker: Tracker, val_acc: float, test_acc: float) -> str:
    tracker.start("cnn", {}, {})
    tracker.log_metrics({"summary/best_val_acc": val_acc, "test/accuracy": test_acc})
    tracker.end()
    return tracker.run_id


def register_run(tracker: Tracker, run_id: str) -> str:
    """A version of cifar10-cnn from run_id (the registry needs a source; its content is not read here)."""
    client = tracker.client
    if not client.search_registered_models("name = 'cifar10-cnn'"):
        client.create_registered_model("cifar10-cnn")
    return str(client.create_model_version("cifar10-cnn", f"runs:/{run_id}/best_model", run_id=run_id).version)


def champion(tracker: Tracker) -> str:
    """Run the compare stage's alias update; the version the alias then points at."""
    crowned = registry.crown_champions(tracker.client, CFG)["cifar10-cnn"]
    assert str(tracker.client.get_model_version_by_alias("cifar10-cnn", "champion").version) == crowned
    return crowned


def test_champion_moves_on_better_validation_accuracy_never_on_test_accuracy(tracker):
    first = register_run(tracker, finished_run(tracker, val_acc=0.60, test_acc=0.60))
    assert champion(tracker) == first
    register_run(tracker, finished_run(tracker, val_acc=0.55, test_acc=0.95))  # better on test only
    assert champion(tracker) == first
    tie = register_run(tracker, finished_run(tracker, val_acc=0.60, test_acc=0.99))
    assert champion(tracker) == first != tie  # a tie keeps the older version
    better = register_run(tracker, finished_run(tracker, val_acc=0.70, test_acc=0.10))
    assert champion(tracker) == better


def test_no_alias_when_registration_is_off(tracker):
    register_run(tracker, finished_run(tracker, val_acc=0.6, test_acc=0.6))
    assert registry.crown_champions(tracker.client, CFG.model_copy(update={"register_models": False})) == {}
    assert not tracker.client.get_registered_model("cifar10-cnn").aliases


@pytest.fixture
def model_file(tmp_path):
    cfg = CnnParams(epochs=1, optimizer={"lr": 0.001})
    path = tmp_path / "best.pt"
    checkpoint.save(checkpoint.model_file("cnn", cfg.model_dump(), CLASSES, build_model("cnn", cfg).state_dict()), path)
    return path


def run_models(tracker: Tracker) -> list:
    return mlflow.search_logged_models(
        experiment_ids=[tracker.experiment_id],
        output_format="list",
        filter_string=f"source_run_id = '{tracker.run_id}'",
    )


def test_rerun_after_an_interrupted_log_model_leaves_one_model_and_one_version(tracker, model_file):
    example = np.zeros((1, 32, 32, 3), np.uint8)
    tracker.start("cnn", {}, {})
    client = tracker.client
    # What killed attempts leave: a model still PENDING (killed mid-upload) and one marked FAILED.
    pending = client.create_logged_model(tracker.experiment_id, name="best_model", source_run_id=tracker.run_id)
    failed = client.create_logged_model(tracker.experiment_id, name="best_model", source_run_id=tracker.run_id)
    client.finalize_logged_model(failed.model_id, LoggedModelStatus.FAILED)
    assert len(run_models(tracker)) == 2

    first = registry.publish(tracker, model_file, CLASSES, example, "cifar10-cnn")
    again = registry.publish(tracker, model_file, CLASSES, example, "cifar10-cnn")  # e.g. killed before run end

    models = run_models(tracker)
    assert [(m.model_id, m.status) for m in models] == [
        (first["model_uri"][len("models:/") :], LoggedModelStatus.READY)
    ]
    assert pending.model_id != models[0].model_id != failed.model_id
    assert again == first == {**first, "registered_model": "cifar10-cnn", "version": 1}
    assert len(client.search_model_versions(f"run_id = '{tracker.run_id}'")) == 1


def test_model_logged_but_not_yet_registered_is_reused_then_registered_once(tracker, model_file):
    example = np.zeros((1, 32, 32, 3), np.uint8)
    tracker.start("cnn", {}, {})
    logged = registry.publish(tracker, model_file, CLASSES, example, None)  # killed before registering
    assert "version" not in logged
    registered = registry.publish(tracker, model_file, CLASSES, example, "cifar10-cnn")
    assert registered["model_uri"] == logged["model_uri"]
    assert len(run_models(tracker)) == 1
    versions = tracker.client.search_model_versions(f"run_id = '{tracker.run_id}'")
    assert [(v.name, int(v.version)) for v in versions] == [("cifar10-cnn", 1)]

"""The registry against a real MLflow store: the champion alias follows validation accuracy on one validation
split only, moves safely while another `compare` races it, a stage that reruns after an interrupted model
logging ends with one logged model and one version, and the registry shows each version's accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.entities import LoggedModelStatus

from cifar_pipeline.core.config import CnnParams, MlflowParams
from cifar_pipeline.engine import checkpoint
from cifar_pipeline.engine.models import build_model
from cifar_pipeline.reporting.metrics import write_confusion_csv
from cifar_pipeline.tracking import registry
from cifar_pipeline.tracking.connection import store_lock
from cifar_pipeline.tracking.run_metadata import SPLIT_TAG
from cifar_pipeline.tracking.store import Tracker
from helpers.data import CLASSES
from helpers.processes import stage, stage_env

CFG = MlflowParams(tracking_uri="sqlite:///mlflow.db", experiment="registry")


@pytest.fixture
def tracker(fresh_store, monkeypatch) -> Tracker:
    monkeypatch.chdir(fresh_store.parent)  # the relative store resolves here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Tracker(CFG)


def finished_run(tracker: Tracker, val_acc: float, test_acc: float, split: str | None = None) -> str:
    tracker.start("cnn", {SPLIT_TAG: split} if split else {}, {})
    tracker.log_metrics({"summary/best_val_acc": val_acc, "test/accuracy": test_acc})
    tracker.end()
    return tracker.run_id


def register_run(tracker: Tracker, run_id: str, name: str = "cifar10-cnn") -> str:
    """A version of `name` from run_id (the registry needs a source; its content is not read here)."""
    client = tracker.client
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    return str(client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id).version)


def alias(tracker: Tracker) -> str:
    return str(tracker.client.get_model_version_by_alias("cifar10-cnn", "champion").version)


def champion(tracker: Tracker, split: str | None = None) -> str:
    """Run the compare stage's alias update for a cnn run on `split`; the version the alias then points at."""
    crowned = registry.crown_champions(tracker, CFG, {"cnn": split})["cifar10-cnn"].version
    assert alias(tracker) == crowned
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


def test_champion_compares_only_versions_validated_on_the_same_split(tracker):
    """Two seeds draw two validation splits: the second version scores higher only on its own, easier split."""
    a, b = "data 1a2b3c4d, data.val_size 50, seed 1", "data 1a2b3c4d, data.val_size 50, seed 2"
    on_a = register_run(tracker, finished_run(tracker, val_acc=0.70, test_acc=0.70, split=a))
    on_b = register_run(tracker, finished_run(tracker, val_acc=0.80, test_acc=0.60, split=b))

    assert champion(tracker, split=a) == on_a
    crowned = registry.crown_champions(tracker, CFG, {"cnn": a})["cifar10-cnn"]
    assert (crowned.compared, crowned.other_splits) == (1, 1)
    assert "1 version(s) validated on another split" in registry.champion_line("cifar10-cnn", crowned)
    assert champion(tracker, split=b) == on_b  # on split b, b is the only candidate


RIVAL = textwrap.dedent("""
    import sys
    from cifar_pipeline.core.config import MlflowParams
    from cifar_pipeline.tracking import registry
    from cifar_pipeline.tracking.store import Tracker

    cfg = MlflowParams(tracking_uri=sys.argv[1], experiment="registry")
    tracker = Tracker(cfg)
    print("ready", flush=True)
    sys.stdin.readline()
    registry.crown_champions(tracker, cfg, {})
""")


def waits_on_a_lock(pid: int) -> bool:
    """Whether process pid is blocked on a file lock (Linux lists waiters in /proc/locks after `->`)."""
    return any(line.split()[1] == "->" and line.split()[5] == str(pid) for line in Path("/proc/locks").open())


def test_champion_is_not_moved_back_by_a_racing_compare(tracker):
    """A `compare` that read the versions, then lost the CPU while a better version was registered and
    another `compare` moved the alias to it, must not then set its stale choice."""
    register_run(tracker, finished_run(tracker, val_acc=0.60, test_acc=0.6))
    older = register_run(tracker, finished_run(tracker, val_acc=0.70, test_acc=0.7))
    rival = subprocess.Popen(
        [sys.executable, "-c", RIVAL, tracker.uri],
        env=stage_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert rival.stdout.readline() == "ready\n"
    with store_lock(tracker.uri):  # this process plays the first compare, by the store's protocol
        stale = max(
            tracker.client.search_model_versions("name = 'cifar10-cnn'"),
            key=lambda v: tracker.client.get_run(v.run_id).data.metrics["summary/best_val_acc"],
        )
        better = register_run(tracker, finished_run(tracker, val_acc=0.90, test_acc=0.9))  # a stage registers
        rival.stdin.write("go\n")
        rival.stdin.flush()
        deadline = time.monotonic() + 120
        while rival.poll() is None and not waits_on_a_lock(rival.pid):
            assert time.monotonic() < deadline, "the rival neither finished nor waited on the store lock"
            time.sleep(0.05)  # paces the polls; the rival's state decides
        tracker.client.set_registered_model_alias("cifar10-cnn", "champion", stale.version)
    out = rival.communicate(timeout=120)[0]
    assert rival.returncode == 0, out
    assert str(stale.version) == older
    assert alias(tracker) == better


def test_no_alias_when_registration_is_off(tracker):
    register_run(tracker, finished_run(tracker, val_acc=0.6, test_acc=0.6))
    assert registry.crown_champions(tracker, CFG.model_copy(update={"register_models": False}), {}) == {}
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
    pending = client.create_logged_model(tracker.experiment_id, name="cnn", source_run_id=tracker.run_id)
    failed = client.create_logged_model(tracker.experiment_id, name="cnn", source_run_id=tracker.run_id)
    client.finalize_logged_model(failed.model_id, LoggedModelStatus.FAILED)
    assert len(run_models(tracker)) == 2

    first = registry.publish(tracker, "cnn", model_file, CLASSES, example, "cifar10-cnn")
    again = registry.publish(tracker, "cnn", model_file, CLASSES, example, "cifar10-cnn")  # e.g. killed before run end

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
    logged = registry.publish(tracker, "cnn", model_file, CLASSES, example, None)  # killed before registering
    assert "version" not in logged
    registered = registry.publish(tracker, "cnn", model_file, CLASSES, example, "cifar10-cnn")
    assert registered["model_uri"] == logged["model_uri"]
    assert len(run_models(tracker)) == 1
    versions = tracker.client.search_model_versions(f"run_id = '{tracker.run_id}'")
    assert [(v.name, int(v.version)) for v in versions] == [("cifar10-cnn", 1)]


def test_registry_shows_each_versions_accuracy_and_split_and_the_model_is_named(tracker, model_file):
    split = "data 1a2b3c4d, data.val_size 50, seed 42"
    tracker.start("cnn", {SPLIT_TAG: split}, {})
    tracker.log_metrics({"summary/best_val_acc": 0.7125})
    registry.publish(tracker, "cnn", model_file, CLASSES, np.zeros((1, 32, 32, 3), np.uint8), "cifar10-cnn")

    version = tracker.client.get_model_version("cifar10-cnn", "1")
    assert version.tags == {"val_acc": "0.7125", SPLIT_TAG: split}
    assert version.description.startswith(f"Validation accuracy 71.25% ({split})")
    assert [m.name for m in run_models(tracker)] == ["cnn"]


def write_model_outputs(project: Path, name: str, run_id: str, version: int) -> None:
    """What train and evaluate leave for `compare`: a summary, test metrics, a confusion matrix and the run's
    registered version."""
    summary = {"best_val_acc": 0.5, "epochs": 1, "train_seconds": 1.0, "images_per_second": 1.0}
    for path, content in {
        f"models/{name}/mlflow_run.json": {
            "run_id": run_id,
            "experiment_id": "1",
            "registered_model": f"cifar10-{name}",
            "version": version,
        },
        f"reports/train/{name}.json": {**summary, "params_trainable": 1, "params_total": 1},
        f"reports/eval/{name}/metrics.json": {"accuracy": 0.5, "macro_f1": 0.5},
    }.items():
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(json.dumps(content))
    write_confusion_csv(np.eye(2, dtype=int), ["a", "b"], project / f"reports/eval/{name}/confusion_matrix.csv")


def test_comparison_names_a_version_deleted_from_the_registry(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(MlflowParams(tracking_uri="sqlite:///mlflow.db", experiment="cifar10"))
    for name in ("cnn", "resnet34", "resnet18"):
        run_id = finished_run(tracker, val_acc=0.5, test_acc=0.5)
        write_model_outputs(project, name, run_id, int(register_run(tracker, run_id, f"cifar10-{name}")))
    tracker.client.delete_model_version("cifar10-cnn", "1")

    out = stage("compare", cwd=project).stdout

    assert "| cifar10-cnn v1 (deleted from the registry) |" in out
    assert "| cifar10-resnet34 v1 | champion |" in out
    assert tracker.client.get_model_version("cifar10-resnet34", "1").tags["test_accuracy"] == "0.5000"

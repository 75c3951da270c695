"""Faults a user can cause or meet, run against the real stage CLIs: each gives one clear error (exit 2)
or is survived, and MLflow ends with no RUNNING run and no model published from bad training."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from cifar_pipeline.core.config import MlflowParams, load_params
from cifar_pipeline.engine import checkpoint
from cifar_pipeline.engine.models import ResNet34, build_model
from cifar_pipeline.tracking.store import Tracker
from helpers.processes import (
    assert_clean_failure,
    free_port,
    run,
    sigterm_after,
    stage,
    start_in_own_group,
    wait_for_line,
)
from helpers.project import edit_params

TRAIN_CNN = [sys.executable, "-m", "cifar_pipeline.stages.train", "cnn"]


@pytest.fixture
def small(project):
    """The project with 100 training images and 50 for validation, data prepared."""
    edit_params(project, **{"data.train_limit": 150, "data.val_size": 50})
    stage("download", cwd=project)
    return project


def runs_in(uri: str, experiment: str = "cifar10") -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def store(project) -> str:
    return f"sqlite:///{project / 'mlflow.db'}"


def assert_no_lock_files(project) -> None:
    assert not list((project / "state" / "resume").glob("*.lock"))


# 1. Data and file faults when a stage runs directly


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_broken_prepared_data_is_one_error_before_the_store_is_touched(project, damage):
    npz = project / "data" / "cifar10.npz"
    np.savez(npz, train_x=np.zeros((300, 32, 32, 3), np.uint8), train_y=np.zeros(300, np.int64))
    npz.write_bytes(npz.read_bytes()[:5000] if damage == "truncate" else os.urandom(5000))

    result = stage("train", "cnn", cwd=project, check=False)

    assert_clean_failure(result, "cifar10.npz is not a readable prepared-data file", "dvc repro -f download")
    assert not (project / "mlflow.db").exists()


def write_run_info(project, name: str, run_id: str = "0" * 32) -> None:
    (project / "models" / name).mkdir(parents=True, exist_ok=True)
    (project / "models" / name / "mlflow_run.json").write_text(json.dumps({"run_id": run_id}))


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_broken_model_file_is_one_error(project, damage):
    write_run_info(project, "cnn")
    cfg = load_params(project / "params.yaml").cnn
    best = project / "models" / "cnn" / "best.pt"
    torch.save(
        checkpoint.model_file(
            "cnn", cfg.model_dump(), [f"class{i}" for i in range(10)], build_model("cnn", cfg).state_dict()
        ),
        best,
    )
    best.write_bytes(best.read_bytes()[:100_000] if damage == "truncate" else os.urandom(100_000))

    result = stage("evaluate", "cnn", cwd=project, check=False)

    assert_clean_failure(result, "best.pt is not a loadable cnn model file", "dvc repro -f train_cnn")
    assert not (project / "reports").exists() and not (project / "mlflow.db").exists()


@pytest.mark.slow
def test_evaluating_a_run_deleted_in_mlflow_is_one_error_and_writes_nothing(small):
    stage("train", "cnn", cwd=small)
    run_id = json.loads((small / "models" / "cnn" / "mlflow_run.json").read_text())["run_id"]
    MlflowClient(store(small)).delete_run(run_id)

    result = stage("evaluate", "cnn", cwd=small, check=False)

    assert_clean_failure(result, f"MLflow run {run_id} was deleted", "mlflow runs restore", "dvc repro -f train_cnn")
    assert not (small / "reports" / "eval").exists()


@pytest.mark.parametrize("content", ["{not json", '{"experiment_id": "1"}'])
def test_corrupt_run_info_is_one_error(project, content):
    (project / "models" / "cnn").mkdir(parents=True)
    (project / "models" / "cnn" / "mlflow_run.json").write_text(content)

    result = stage("evaluate", "cnn", cwd=project, check=False)

    assert_clean_failure(result, "mlflow_run.json", "dvc repro -f train_cnn")


def test_archive_path_that_is_a_folder_is_one_error(project):
    (project / "data" / "folder").mkdir()
    edit_params(project, **{"data.archive": "data/folder"})
    assert_clean_failure(stage("download", cwd=project, check=False), "is a directory, not a file")


# 2. Params the schema used to accept (the full table is in test_params.py)


def test_sqlite_store_under_a_file_fails_before_any_work(project):
    edit_params(project, **{"mlflow.tracking_uri": "sqlite:///params.yaml/mlflow.db"})
    result = stage("train", "cnn", cwd=project, check=False)  # no `download` run: the store is named first
    assert_clean_failure(result, "is not a writable directory")
    assert not (project / "models").exists()


# 3. Silent bad results


@pytest.mark.slow
def test_diverging_training_fails_marks_the_run_failed_and_publishes_nothing(small):
    edit_params(small, **{"cnn.optimizer": {"name": "sgd", "lr": 10.0, "weight_decay": 1e30}})

    result = stage("train", "cnn", cwd=small, check=False)

    assert_clean_failure(result, "train_cnn diverged in epoch 1", "Lower cnn.optimizer.lr")
    assert [r.info.status for r in runs_in(store(small))] == ["FAILED"]
    assert not (small / "models").exists() and not (small / "reports").exists()
    assert not list((small / "state" / "resume").iterdir())  # no checkpoint, no lock file


def test_a_single_training_image_is_an_error_not_zero_steps(project):
    stage("download", cwd=project)
    edit_params(project, **{"data.val_size": 499})  # the archive holds 500 training images
    result = stage("train", "cnn", cwd=project, check=False)
    assert_clean_failure(result, "data.val_size = 499 leaves 1 training images out of 500")
    assert not (project / "mlflow.db").exists() and not (project / "models").exists()


@pytest.mark.slow
def test_params_edited_during_training_fail_the_stage_and_dvc_lock_stays_honest(small):
    run(["git", "commit", "-qam", "small"], small)
    proc = start_in_own_group(["dvc", "repro", "train_cnn"], small)
    wait_for_line(proc, r"started MLflow run")  # the stage has read params.yaml
    edit_params(small, **{"cnn.optimizer.lr": 0.002})
    out = proc.communicate(timeout=600)[0]

    assert proc.returncode != 0, out
    assert "error: params.yaml changed while train_cnn ran (cnn.optimizer.lr: 0.001 -> 0.002)" in out
    assert "Traceback" not in out
    assert not (small / "models" / "cnn").exists()
    lock = small / "dvc.lock"
    assert not lock.exists() or "train_cnn" not in lock.read_text()
    assert "train_cnn" in run(["dvc", "status", "train_cnn"], small).stdout  # still to be run
    assert [r.info.status for r in runs_in(store(small))] == ["FAILED"]


# 4. A resume whose run is gone, or in another store or experiment, starts fresh


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, warning",
    [
        ({"mlflow.tracking_uri": "sqlite:///other.db"}, "is not in the store"),
        ({"mlflow.experiment": "other"}, "is in another experiment than mlflow.experiment = other"),
    ],
)
def test_resume_into_another_store_or_experiment_starts_a_fresh_run(small, change, warning):
    edit_params(small, **{"cnn.epochs": 3})
    sigterm_after(TRAIN_CNN, small, r"epoch 1:")
    old = runs_in(store(small))
    assert [r.info.status for r in old] == ["KILLED"]
    edit_params(small, **change)

    result = stage("train", "cnn", cwd=small)

    assert warning in result.stderr and "starting a fresh run" in result.stderr
    assert "resuming" not in result.stdout
    uri = store(small) if "mlflow.experiment" in change else f"sqlite:///{small / 'other.db'}"
    new = runs_in(uri, change.get("mlflow.experiment", "cifar10"))
    assert [r.info.status for r in new] == ["FINISHED"] and new[0].info.run_id != old[0].info.run_id
    steps = [m.step for m in MlflowClient(uri).get_metric_history(new[0].info.run_id, "Val/acc")]
    assert sorted(steps) == [1, 2, 3]
    info = json.loads((small / "models" / "cnn" / "mlflow_run.json").read_text())
    assert info["run_id"] == new[0].info.run_id and info["experiment_id"] == new[0].info.experiment_id
    assert not list((small / "state" / "resume").glob("*.pt")) and not list((small / "state" / "resume").glob("*.lock"))


# 5. MLflow leftovers after interruptions


@pytest.mark.slow
def test_sigint_during_start_up_prints_no_traceback_and_leaves_no_running_run(small):
    proc = start_in_own_group(TRAIN_CNN, small)
    out = "".join(wait_for_line(proc, r"Creating initial MLflow database tables"))  # inside the store's creation
    proc.send_signal(signal.SIGINT)
    for line in proc.stdout:
        out += line
        if "started MLflow run" in line:  # once, in a full CI run, that SIGINT was lost: press Ctrl-C again
            proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)

    assert proc.returncode == 130, out
    assert "Traceback" not in out and "by SIGINT" in out
    assert "RUNNING" not in {r.info.status for r in runs_in(store(small))}
    assert_no_lock_files(small)

    stage("train", "cnn", cwd=small)
    assert [r.info.status for r in runs_in(store(small))].count("FINISHED") == 1
    assert "RUNNING" not in {r.info.status for r in runs_in(store(small))}


@pytest.mark.slow
def test_sigint_while_the_run_is_created_on_a_locked_store_is_one_line_and_exit_130(small, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    Tracker(
        MlflowParams(tracking_uri=store(small))
    )  # the store and experiment exist: the stage's first write creates its run
    holder = sqlite3.connect(small / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process (a parallel stage, `mlflow ui`) holds the write lock
    proc = start_in_own_group(TRAIN_CNN, small)
    out = "".join(wait_for_line(proc, r"database is locked"))  # the run's creation waited MLflow's 20 s for it
    proc.send_signal(signal.SIGINT)
    holder.execute("ROLLBACK")
    out += proc.communicate(timeout=300)[0]

    assert proc.returncode == 130, out
    assert "Traceback" not in out and "ERROR" not in out and out.count("by SIGINT") == 1  # MLflow's log: its ERROR
    assert "RUNNING" not in {r.info.status for r in runs_in(store(small))}
    assert_no_lock_files(small)


@pytest.mark.slow
def test_run_orphaned_by_sigkill_is_marked_killed_by_the_next_start(small):
    proc = start_in_own_group(TRAIN_CNN, small)
    wait_for_line(proc, r"started MLflow run")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [orphan] = runs_in(store(small))
    assert orphan.info.status == "RUNNING"
    edit_params(small, **{"cnn.epochs": 1})  # other params: the orphan's checkpoint is not resumed

    result = stage("train", "cnn", cwd=small)

    assert f"marked MLflow run {orphan.info.run_id} ({orphan.info.run_name}) KILLED" in result.stderr
    statuses = {r.info.run_id: r.info.status for r in runs_in(store(small))}
    assert statuses.pop(orphan.info.run_id) == "KILLED"
    assert list(statuses.values()) == ["FINISHED"]
    assert_no_lock_files(small)  # the killed process's lock file is gone too


@pytest.mark.slow
def test_kill_after_publishing_before_dvc_lock_adopts_the_published_run(small):
    run(["git", "commit", "-qam", "small"], small)
    proc = start_in_own_group(["dvc", "repro", "train_cnn"], small)
    wait_for_line(proc, r"train_cnn: best val_acc")  # the stage's last line: published, run FINISHED
    os.killpg(proc.pid, signal.SIGKILL)  # DVC dies before it records the stage
    proc.wait()
    lock = small / "dvc.lock"
    assert not lock.exists() or "train_cnn" not in lock.read_text()
    [first] = runs_in(store(small))
    assert first.info.status == "FINISHED"

    again = run(["dvc", "repro", "train_cnn"], small).stdout

    assert f"train_cnn: adopted MLflow run {first.info.run_id}" in again and "epoch 1:" not in again
    assert [r.info.run_id for r in runs_in(store(small))] == [first.info.run_id]
    client = MlflowClient(store(small))
    assert [int(v.version) for v in client.search_model_versions("name = 'cifar10-cnn'")] == [1]
    info = json.loads((small / "models" / "cnn" / "mlflow_run.json").read_text())
    assert (info["run_id"], info["version"]) == (first.info.run_id, 1)
    assert "train_cnn" in lock.read_text()
    assert "up to date" in run(["dvc", "status", "train_cnn"], small).stdout

    forced = run(["dvc", "repro", "-f", "train_cnn"], small).stdout  # recorded by DVC now: a rerun trains
    assert "adopted" not in forced and "epoch 1:" in forced
    assert len(runs_in(store(small))) == 2


# 6. Permissions, found before any work


@pytest.mark.parametrize("blocked", ["reports", "models", "state"])
def test_output_folder_blocked_by_a_file_fails_before_any_work(project, blocked):
    (project / blocked).write_text("in the way")
    result = stage("train", "cnn", cwd=project, check=False)  # no `download` run: the folders are checked first
    assert_clean_failure(result, f"{blocked} is a file")
    assert not (project / "mlflow.db").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("blocked", ["reports", "models", "state"])
def test_read_only_output_folder_fails_before_any_work(small, blocked):
    (small / blocked).mkdir()
    (small / blocked).chmod(0o555)
    try:
        result = stage("train", "cnn", cwd=small, check=False)
    finally:
        (small / blocked).chmod(0o755)
    assert_clean_failure(result, "is not writable", f"chmod u+w {blocked}")
    assert not (small / "mlflow.db").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only files")
def test_read_only_store_is_one_error(small):
    MlflowClient(store(small)).search_experiments()  # creates the store
    (small / "mlflow.db").chmod(0o444)
    result = stage("train", "cnn", cwd=small, check=False)
    assert_clean_failure(result, "mlflow.db is read-only")


# 7. Minor but visible


def test_weights_path_that_is_a_folder_is_named_before_the_data_load(project, tmp_path):
    edit_params(project, **{"resnet18.weights_path": str(tmp_path)})  # no `download` run: data is missing too
    assert_clean_failure(stage("train", "resnet18", cwd=project, check=False), "is a directory, not a file")


def test_weights_of_another_model_give_a_short_error_before_the_store_is_touched(small, tmp_path):
    wrong = tmp_path / "resnet34.pth"
    torch.save(ResNet34().state_dict(), wrong)
    edit_params(small, **{"resnet18.weights_path": str(wrong)})
    result = stage("train", "resnet18", cwd=small, check=False)
    assert_clean_failure(result, "do not fit torchvision's resnet18", "missing keys (e.g. conv1.weight")
    assert len(result.stderr.strip().splitlines()[-1]) < 500
    assert not (small / "mlflow.db").exists()


def test_compare_checks_the_tracker_before_writing_reports(project):
    for name in ("cnn", "resnet34", "resnet18"):
        write_run_info(project, name)
        summary = {
            "best_val_acc": 0.5,
            "epochs": 1,
            "train_seconds": 1.0,
            "images_per_second": 1.0,
            "params_trainable": 1,
            "params_total": 1,
        }
        (project / "reports" / "train").mkdir(parents=True, exist_ok=True)
        (project / "reports" / "train" / f"{name}.json").write_text(json.dumps(summary))
        (project / "reports" / "eval" / name).mkdir(parents=True)
        (project / "reports" / "eval" / name / "metrics.json").write_text('{"accuracy": 0.5, "macro_f1": 0.5}')

    result = stage("compare", cwd=project, check=False, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")

    assert_clean_failure(result, "is unreachable")
    assert not list((project / "reports").glob("comparison.*"))

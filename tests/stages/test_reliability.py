"""Faults a user can cause or meet, run against the real stage CLIs: each gives one clear error (exit 2)
or is survived, and MLflow ends with no RUNNING run and no model published from bad training."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from cifar_pipeline.core.config import load_params
from cifar_pipeline.engine import checkpoint
from cifar_pipeline.engine.models import ResNet34, build_model
from helpers.processes import assert_clean_failure, free_port, run, stage, start_in_own_group, wait_for_line
from helpers.project import edit_params, runs_in, store

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


# 4. Permissions, found before any work


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


# 5. Minor but visible


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

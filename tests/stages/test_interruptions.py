"""Interrupted training, run against the real stage CLIs: Ctrl-C, SIGKILL and a resume into another store each
end in one clear line or a clean restart, and MLflow ends with no RUNNING run and no stale lock file."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys

import pytest
from mlflow import MlflowClient

from cifar_pipeline.core.config import MlflowParams
from cifar_pipeline.tracking.store import Tracker
from helpers.processes import run, sigterm_after, stage, start_in_own_group, wait_for_line
from helpers.project import edit_params, runs_in, store

TRAIN_CNN = [sys.executable, "-m", "cifar_pipeline.stages.train", "cnn"]


def assert_no_lock_files(project) -> None:
    assert not list((project / "state" / "resume").glob("*.lock"))


# A resume whose run is in another store or experiment starts fresh


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
    assert not list((small / "state" / "resume").glob("*.pt"))
    assert_no_lock_files(small)


# MLflow leftovers after interruptions


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

"""MLflow store resolution, parallel writers on one SQLite file, and experiments in temp copies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from cifar_pipeline.core.config import MlflowParams
from cifar_pipeline.core.errors import TrainingError
from cifar_pipeline.core.paths import project_root
from cifar_pipeline.engine.device import explain_oom
from cifar_pipeline.tracking.connection import resolve_tracking_uri
from cifar_pipeline.tracking.tags import flatten
from helpers.processes import run, stage_env
from helpers.project import store

WRITERS, STEPS = 4, 25
WRITER = textwrap.dedent("""
    import sys
    from cifar_pipeline.core.config import MlflowParams
    from cifar_pipeline.tracking.store import Tracker

    tracker = Tracker(MlflowParams(tracking_uri=sys.argv[1], experiment="parallel"))
    tracker.start(f"writer-{sys.argv[2]}", {}, {"writer": sys.argv[2]})
    for step in range(1, int(sys.argv[3]) + 1):
        tracker.log_metrics({"train_loss": 1 / step, "val_acc": step / 100, "lr": 0.001}, step=step)
    tracker.end()
""")


def test_project_root_sees_through_dvc_temp_copies(tmp_path):
    inside = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd" / "sub"
    assert project_root(inside) == tmp_path / "repo"
    assert project_root(tmp_path / "repo") == tmp_path / "repo"


def test_relative_sqlite_uri_is_anchored_at_the_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmp1"
    assert resolve_tracking_uri(MlflowParams(), copy) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    absolute = MlflowParams(tracking_uri="sqlite:////srv/store.db")
    assert resolve_tracking_uri(absolute, copy) == "sqlite:////srv/store.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(MlflowParams(), copy) == "http://127.0.0.1:5000"


def test_flatten_joins_nested_keys():
    assert flatten({"seed": 1, "cnn": {"optimizer": {"lr": 0.1}}}) == {"seed": 1, "cnn.optimizer.lr": 0.1}


def test_out_of_memory_names_the_model_and_a_smaller_batch():
    message = r"training resnet18 .* resnet18\.batch_size = 64\. Set resnet18\.batch_size to 32"
    with pytest.raises(TrainingError, match=message), explain_oom("training resnet18", "resnet18.batch_size", 64):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_parallel_writers_on_one_new_sqlite_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, str(i), str(STEPS)],
            env=stage_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(WRITERS)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
        assert "database is locked" not in out

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert len(runs) == WRITERS
    for r in runs:
        assert r.info.status == "FINISHED"
        for key in ("train_loss", "val_acc", "lr"):
            assert sorted(m.step for m in client.get_metric_history(r.info.run_id, key)) == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_dvc_exp_run_temp_logs_to_the_main_store(project: Path):
    run(["dvc", "exp", "run", "--temp", "train_cnn", "-S", "cnn.epochs=1", "-n", "one-epoch"], project)
    client = MlflowClient(store(project))
    runs = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
    assert [(r.info.run_name, r.data.tags["model"]) for r in runs] == [("cnn-one-epoch", "cnn")]
    assert runs[0].data.tags.get("dvc_exp_name") == "one-epoch"
    assert runs[0].data.params["epochs"] == "1"
    assert not (project / ".dvc" / "tmp" / "exps" / "mlflow.db").exists()

"""What a run shows in MLflow: param names shared by the models, only settings in effect, the resolved
runtime, run names, the `dvc_exps` tag, the GenAI-free experiment kind and optional system metrics."""

from __future__ import annotations

import time

import pytest
import torch
from mlflow import MlflowClient

from cifar_pipeline.core.config import MlflowParams, RuntimeParams, load_params, parse_params
from cifar_pipeline.engine.device import Settings
from cifar_pipeline.tracking.run_metadata import epoch_metric, model_params, resolved_runtime, run_name, with_exp
from cifar_pipeline.tracking.store import Tracker
from helpers.project import ROOT, mutated

PARAMS = load_params(ROOT / "params.yaml")


def test_every_model_logs_its_section_under_the_same_names():
    names = {m: set(model_params(PARAMS, m)) for m in ("cnn", "resnet34", "resnet18")}
    shared = {"epochs", "batch_size", "optimizer.name", "optimizer.lr", "scheduler.name", "augment.hflip"}
    assert all(shared <= n for n in names.values())
    assert not any(k.startswith(("cnn", "resnet")) for n in names.values() for k in n)


def test_settings_without_effect_are_left_out():
    assert "optimizer.momentum" not in model_params(PARAMS, "cnn")  # adam
    assert {"scheduler.step_size", "scheduler.gamma"} <= set(model_params(PARAMS, "cnn"))  # step schedule
    assert "scheduler.step_size" not in model_params(PARAMS, "resnet34")  # no schedule
    sgd = parse_params(mutated("resnet34.optimizer.name", "sgd"))
    assert model_params(sgd, "resnet34")["optimizer.momentum"] == 0.9
    resnet18 = model_params(PARAMS, "resnet18")
    assert resnet18["weights"] == "IMAGENET1K_V1" and "weights_path" not in resnet18
    from_file = model_params(parse_params(mutated("resnet18.weights_path", "w.pth")), "resnet18")
    assert from_file["weights_path"] == "w.pth" and "weights" not in from_file
    seed = model_params(PARAMS, "cnn")  # the seed CNN: no wide net, no Lookahead
    assert not any(k.startswith(("wide.", "scheduler.start_factor", "lookahead.decay")) for k in seed)
    linear = {"name": "linear", "pct_start": 0.23, "start_factor": 0.2, "end_factor": 0.07}
    fast = parse_params(mutated("cnn.scheduler", linear))
    assert {k: v for k, v in model_params(fast, "cnn").items() if k.startswith("scheduler.")} == {
        f"scheduler.{k}": v for k, v in linear.items()
    }


def test_the_runtime_is_logged_as_it_ran():
    runtime = RuntimeParams(device="cpu")  # every speed switch on in the params
    resolved = resolved_runtime(runtime, Settings.resolve(runtime))
    assert resolved["device"] == "cpu" and resolved["torch"] == torch.__version__
    assert not any(resolved[k] for k in ("bf16", "channels_last", "cuda_graphs", "compile"))  # CUDA only
    assert "progress" not in resolved and "cudnn_benchmark" not in resolved
    assert (resolved["world_size"], resolved["backend"], resolved["sync_bn"]) == (1, "none", False)  # alone


def test_per_epoch_curves_are_grouped_ahead_of_single_values():
    names = [epoch_metric(c) for c in ("train_loss", "train_acc", "lr", "epoch_seconds", "val_loss", "val_acc")]
    assert names == ["Train/loss", "Train/acc", "Train/lr", "Train/epoch_seconds", "Val/loss", "Val/acc"]
    assert max(n.split("/")[0] for n in names) < min("summary", "test", "test_per_class", "system")


def test_run_names_and_dvc_exps_tell_experiments_apart(monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "lr5e-4")
    assert run_name("cnn") == "cnn-lr5e-4"
    assert with_exp(None, "a") == "a" and with_exp("a", "b") == "a b" and with_exp("a b", "a") == "a b"


@pytest.fixture
def tracker(fresh_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Tracker(MlflowParams(tracking_uri=f"sqlite:///{fresh_store}", experiment="views"))


def test_the_experiment_is_marked_as_model_training(tracker):
    client = MlflowClient(tracker.uri)
    client.delete_experiment_tag(tracker.experiment_id, "mlflow.experimentKind")
    again = Tracker(MlflowParams(tracking_uri=tracker.uri, experiment="views"))  # an older store gets the tag
    assert client.get_experiment(again.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_system_metrics_are_logged_while_the_run_is_open(tracker, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    run_id = tracker.start("sys", {}, {})
    tracker.start_system_metrics(resume=False)
    client, deadline = MlflowClient(tracker.uri), time.monotonic() + 60
    while not any(k.startswith("system/cpu") for k in client.get_run(run_id).data.metrics):
        assert time.monotonic() < deadline, "no system metric within 60 s"
        time.sleep(0.1)  # polling the store for what the monitor writes
    tracker.end()
    assert client.get_run(run_id).info.status == "FINISHED" and tracker.monitor is None

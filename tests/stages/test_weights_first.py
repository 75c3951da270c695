"""Offline without the ResNet-18's ImageNet weights, `dvc repro` stops at the first training stage, the
fine-tune, before any model trains (issue #28: `make repro` trained two models, then the fine-tune failed)."""

from __future__ import annotations

from helpers.processes import run
from helpers.project import edit_params


def test_missing_imagenet_weights_stop_dvc_repro_before_any_training(project, tmp_path):
    edit_params(project, **{"resnet18.weights_path": None, "resnet18.weights": "IMAGENET1K_V1"})
    offline = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}

    repro = run(["dvc", "repro"], project, check=False, **offline)

    assert repro.returncode != 0
    errors = [line for line in repro.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ImageNet weights IMAGENET1K_V1 could not be loaded" in errors[0], repro.stderr
    assert "resnet18.weights: none" in repro.stderr and "Traceback" not in repro.stderr
    assert "Running stage 'finetune_resnet18'" in repro.stdout
    assert "Running stage 'train_cnn'" not in repro.stdout
    assert not (project / "mlflow.db").exists()  # it failed before the tracking store
    assert not (project / "models" / "cnn").exists()

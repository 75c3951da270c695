"""The download stage checks the ResNet-18's ImageNet weights, so offline their absence stops the pipeline
before any model trains (issue #28: `make repro` trained two models, then the fine-tune failed)."""

from __future__ import annotations

from helpers.processes import assert_clean_failure, run, stage
from helpers.project import edit_params


def test_missing_imagenet_weights_stop_dvc_repro_before_the_first_training(project, tmp_path):
    edit_params(project, **{"resnet18.weights_path": None, "resnet18.weights": "IMAGENET1K_V1"})
    offline = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}

    result = stage("download", cwd=project, check=False, **offline)

    assert_clean_failure(result, "ImageNet weights IMAGENET1K_V1 could not be loaded", "resnet18.weights: none")
    assert not (project / "data" / "cifar10.npz").exists()
    repro = run(["dvc", "repro"], project, check=False, **offline)
    assert repro.returncode != 0 and "Running stage 'train_cnn'" not in repro.stdout


def test_weights_none_or_a_file_need_no_network(project, tmp_path):
    offline = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9"}
    stage("download", cwd=project, **offline)  # the project's weights_path: a local file
    edit_params(project, **{"resnet18.weights_path": None, "resnet18.weights": "none"})
    stage("download", cwd=project, **offline)

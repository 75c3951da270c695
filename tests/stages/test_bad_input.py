"""Bad input stops a stage CLI early with exit code 2 and one error message, leaving nothing behind."""

from __future__ import annotations

import pytest

from helpers.processes import assert_clean_failure, free_port, stage
from helpers.project import edit_params, read_params, write_params


def assert_nothing_left(project) -> None:
    assert not (project / "mlflow.db").exists()
    assert not (project / "models").exists()
    assert not (project / "reports").exists()


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("cnn.optimizer.lr", -0.1, "cnn.optimizer.lr must be > 0, got -0.1"),
        ("cnn.optimizer.lrr", 0.1, "unknown key `cnn.optimizer.lrr` (did you mean `lr`?)"),
        ("runtime.device", "tpu", "runtime.device: must be auto, cuda, cuda:N"),
        ("resnet18.weights", "IMAGENET1K_V9", "resnet18.weights must be one of"),
        ("seed", True, "seed must be an integer, got True"),
        ("cnn.batch_size", 1, "cnn.batch_size must be >= 2"),
        ("mlflow.tracking_uri", "mlflow.db", "mlflow.tracking_uri: is not a URI"),
    ],
)
def test_bad_param_stops_training_before_any_work(project, path, value, message):
    stage("download", cwd=project)
    edit_params(project, **{path: value})

    result = stage("train", "cnn", cwd=project, check=False)

    assert_clean_failure(result, message)
    assert_nothing_left(project)


def test_offline_without_archive_says_where_to_put_it(project):
    archive = project / "data" / "cifar-10-python.tar.gz"
    archive.unlink()
    params = read_params(project)
    params["data"]["url"] = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    write_params(project, params)

    result = stage("download", cwd=project, check=False)

    assert_clean_failure(result, str(archive.resolve()), f"md5 {params['data']['md5']}")
    assert not archive.exists()
    assert not (project / "data" / "cifar10.npz").exists()


@pytest.mark.parametrize("via", ["params", "env"])
def test_unreachable_tracking_server_is_one_error_naming_it(project, via):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"MLFLOW_TRACKING_URI": uri} if via == "env" else {}
    if via == "params":
        edit_params(project, **{"mlflow.tracking_uri": uri})
    stage("download", cwd=project)

    # The timeout is a hang guard only (MLflow's own HTTP retries would wait minutes); how fast the
    # stage gives up is a speed question for benchmarks, not for a test.
    result = stage("train", "cnn", cwd=project, check=False, timeout=300, **env)

    assert_clean_failure(result, f"MLflow tracking server {uri} is unreachable")
    assert_nothing_left(project)

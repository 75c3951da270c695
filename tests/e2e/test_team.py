"""The team set-up of docs/setup.md on loopback: the pipeline against `mlflow server` (PostgreSQL store, proxied
S3 artifacts), a training stage killed mid-run and resumed into the same server run, and a DVC remote on the
same object store that a fresh clone pulls from without rerunning anything."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from cifar_pipeline.tracking.run_metadata import epoch_metric
from helpers.processes import run, stage_env, wait_for_line
from helpers.project import make_project, read_params, write_params
from helpers.servers import S3_CREDENTIALS, mlflow_server, postgres, s3_server

pytestmark = pytest.mark.slow

BUCKET = "team"
UI_HOST = "mlflow.team.test"
EPOCHS = {"cnn": 3, "resnet34": 1, "resnet18": 1}
EPOCH_METRICS = [
    epoch_metric(c)
    for c in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second")
]


@dataclass
class Servers:
    postgres_uri: str
    s3_endpoint: str
    tracking_uri: str


@dataclass
class TrackedProject:
    repo: Path
    killed_run_id: str
    resumed_stdout: str


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Servers:
    for module in ("psycopg", "boto3", "dvc_s3"):
        pytest.importorskip(module, reason=f"{module} not installed: pip install -r requirements-team.txt")
    workdir = tmp_path_factory.mktemp("servers")
    with ExitStack() as stack:
        pg = stack.enter_context(postgres())
        s3 = stack.enter_context(s3_server(workdir))
        s3_client(s3).create_bucket(Bucket=BUCKET)
        tracking = stack.enter_context(mlflow_server(pg, f"s3://{BUCKET}/mlartifacts", s3, workdir, UI_HOST))
        yield Servers(pg, s3, tracking)


def s3_client(endpoint: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def bucket_keys(servers: Servers, prefix: str) -> set[str]:
    pages = s3_client(servers.s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def cnn_run_ids(client) -> list[str]:
    experiment = client.get_experiment_by_name("cifar10")
    return [r.info.run_id for r in client.search_runs([experiment.experiment_id], "tags.model = 'cnn'")]


@pytest.fixture(scope="module")
def tracked(servers, tmp_path_factory, archive, archive_md5) -> TrackedProject:
    """`dvc repro` against the server, SIGKILLed while train_cnn is in its second epoch, then `dvc repro` again.
    The pipeline's processes get no S3 endpoint (stage_env drops MLFLOW_*): artifacts go through the server."""
    from mlflow import MlflowClient

    repo = make_project(tmp_path_factory.mktemp("team") / "project", archive, archive_md5)
    params = read_params(repo)
    params["cnn"]["epochs"] = EPOCHS["cnn"]
    write_params(repo, params)
    run(["git", "commit", "-qam", "3 cnn epochs"], repo)

    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=repo,
        env=stage_env(MLFLOW_TRACKING_URI=servers.tracking_uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_for_line(proc, r"train_cnn epoch 1:")  # printed once epoch 2 has started
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    client = MlflowClient(servers.tracking_uri)
    killed = cnn_run_ids(client)
    assert len(killed) == 1
    assert client.get_run(killed[0]).info.status == "RUNNING"  # killed before the stage could end it

    resumed = run(["dvc", "repro"], repo, MLFLOW_TRACKING_URI=servers.tracking_uri)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "trained against the team server"], repo)
    return TrackedProject(repo, killed[0], resumed.stdout)


def test_killed_stage_resumes_its_server_run_and_everything_reads_back(servers, tracked, tmp_path):
    import mlflow
    import psycopg
    from mlflow import MlflowClient

    assert f"train_cnn: resuming MLflow run {tracked.killed_run_id} after epoch" in tracked.resumed_stdout
    client = MlflowClient(servers.tracking_uri)
    experiment = client.get_experiment_by_name("cifar10")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied: clients need no S3 access
    runs = client.search_runs([experiment.experiment_id])
    by_name = {
        name: [r for r in runs if r.data.tags.get("model", r.data.tags["stage"]) == name]
        for name in [*EPOCHS, "compare"]
    }
    assert {name: len(found) for name, found in by_name.items()} == {**dict.fromkeys(EPOCHS, 1), "compare": 1}
    assert by_name["cnn"][0].info.run_id == tracked.killed_run_id

    for name, epochs in EPOCHS.items():
        r = by_name[name][0]
        assert r.info.status == "FINISHED", name
        assert r.data.params["seed"] == "42" and r.data.params["epochs"] == str(epochs)
        for key in EPOCH_METRICS:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (name, key, steps)
        assert 0.0 <= r.data.metrics["test/accuracy"] <= 1.0  # evaluate logged into the same run
        artifacts = {
            a.path
            for folder in (None, "checkpoints", "evaluation")
            for a in client.list_artifacts(r.info.run_id, folder)
        }
        expected = {"checkpoints/best.pt", "checkpoints/last.pt", "confusion_matrix.png", "evaluation/metrics.json"}
        assert expected <= artifacts
        mlflow.set_tracking_uri(servers.tracking_uri)
        models = mlflow.search_logged_models(
            experiment_ids=[experiment.experiment_id],
            output_format="list",
            filter_string=f"source_run_id = '{r.info.run_id}'",
        )
        assert [m.name for m in models] == [name], name

    fetched = mlflow.artifacts.download_artifacts(
        run_id=tracked.killed_run_id,
        artifact_path="checkpoints/best.pt",
        dst_path=str(tmp_path),
        tracking_uri=servers.tracking_uri,
    )
    assert sha256(Path(fetched)) == sha256(tracked.repo / "models" / "cnn" / "best.pt")
    stored = bucket_keys(servers, "mlartifacts/")
    assert any(key.endswith(f"{tracked.killed_run_id}/artifacts/checkpoints/best.pt") for key in stored), stored

    with psycopg.connect(servers.postgres_uri.replace("+psycopg", "")) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),)
        ).fetchone()
    assert count == len(runs)


def test_ui_answers_only_its_allowed_host_name_and_origin(servers):
    """What a browser on another machine sends: the UI's host name, and its origin on the UI's POST requests."""
    port = servers.tracking_uri.rsplit(":", 1)[1]
    ui = f"{UI_HOST}:{port}"

    def status(host: str, origin: str | None = None) -> int:
        headers = {"Host": host, "Content-Type": "application/json", **({"Origin": origin} if origin else {})}
        request = urllib.request.Request(
            f"{servers.tracking_uri}/ajax-api/2.0/mlflow/experiments/search",
            data=b'{"max_results": 1}',
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status(ui) == 200
    assert status(ui, origin=f"http://{ui}") == 200
    assert status(f"attacker.test:{port}") == 403
    assert status(ui, origin=f"http://attacker.test:{port}") == 403


def test_dvc_push_then_fresh_clone_pulls_and_reruns_nothing(servers, tracked, tmp_path):
    repo = tracked.repo
    run(["dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/dvcstore"], repo)
    run(["dvc", "remote", "modify", "team", "endpointurl", servers.s3_endpoint], repo)
    run(["git", "commit", "-qam", "team remote"], repo)
    pushed = run(["dvc", "push"], repo, **S3_CREDENTIALS)
    assert "pushed" in pushed.stdout, pushed.stdout
    assert bucket_keys(servers, "dvcstore/files/md5/"), "dvc push stored nothing in the bucket"

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    run(["dvc", "pull"], clone, **S3_CREDENTIALS)
    for name in EPOCHS:
        assert sha256(clone / "models" / name / "best.pt") == sha256(repo / "models" / name / "best.pt")
    repro = run(["dvc", "repro"], clone, MLFLOW_TRACKING_URI=servers.tracking_uri)
    assert "Data and pipelines are up to date" in repro.stdout, repro.stdout
    assert (clone / "dvc.lock").read_bytes() == (repo / "dvc.lock").read_bytes()


def test_queued_experiments_run_in_parallel_against_the_server(servers, tracked):
    from mlflow import MlflowClient

    for lr in ("0.002", "0.003"):
        run(
            ["dvc", "exp", "run", "--queue", "-S", "cnn.epochs=1", "-S", f"cnn.optimizer.lr={lr}"],
            tracked.repo,
            MLFLOW_TRACKING_URI=servers.tracking_uri,
        )
    run(["dvc", "exp", "run", "--run-all", "--jobs", "2"], tracked.repo, MLFLOW_TRACKING_URI=servers.tracking_uri)

    client = MlflowClient(servers.tracking_uri)
    experiment = client.get_experiment_by_name("cifar10")
    runs = [
        r for r in client.search_runs([experiment.experiment_id], "tags.model = 'cnn'") if "dvc_exp_name" in r.data.tags
    ]
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == ["0.002", "0.003"]
    for r in runs:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "Val/acc")]
        assert steps == [1], steps
        assert "test/accuracy" in r.data.metrics
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time, "the two queued experiments did not overlap"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

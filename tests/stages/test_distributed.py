"""A training stage as 2 gloo ranks on the CPU (runtime.gpus: 2, runtime.device: cpu): one MLflow run, the
outputs of a 1-rank run, a kill of any process ending every rank, the resume, and the bad values."""

from __future__ import annotations

import hashlib
import os
import re
import select
import shutil
import signal
import sys
from pathlib import Path

import pytest

from helpers.data import make_archive
from helpers.outcomes import assert_one_complete_run, assert_same_weights, cnn_runs, final_weights
from helpers.processes import (
    assert_clean_failure,
    run,
    sigterm_after,
    stage,
    start_in_own_group,
    wait_for_line,
    wait_for_text,
)
from helpers.project import edit_params, make_project, read_params, write_params

EPOCHS = 3


def two_ranks(project: Path) -> Path:
    """The project with a deterministic 3-epoch CNN trained by 2 gloo ranks with SyncBatchNorm, data prepared."""
    params = read_params(project)
    params["runtime"].update(deterministic=True, gpus=2, sync_bn=True)
    params["cnn"].update(epochs=EPOCHS, batch_size=16)
    write_params(project, params)
    run(["git", "commit", "-qam", "cnn on 2 ranks"], project)
    stage("download", cwd=project)
    return project


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank `dvc repro train_cnn`."""
    folder = tmp_path_factory.mktemp("ranks")
    archive = make_archive(folder / "cifar-10-python.tar.gz")
    project = two_ranks(make_project(folder / "project", archive, hashlib.md5(archive.read_bytes()).hexdigest()))
    run(["dvc", "repro", "train_cnn"], project)
    return project


@pytest.fixture
def ranked(project) -> Path:
    return two_ranks(project)


def descendants(pid: int) -> list[int]:
    """The processes under pid (children, theirs, ...) that run the project's code, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit():
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return [p for p in found if b"cifar_pipeline" in read(f"/proc/{p}/cmdline")]


def read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def rank_of(pid: int) -> int | None:
    environ = read(f"/proc/{pid}/environ").split(b"\0")
    ranks = [int(v.split(b"=")[1]) for v in environ if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def still_running(pids: list[int], timeout: float = 60) -> list[int]:
    """Those of pids that have not ended within timeout: a process that closed its output may still be
    exiting, so wait on each one's pidfd (readable once it has ended)."""
    left = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if not select.select([fd], [], [], timeout)[0]:
                left.append(pid)
        finally:
            os.close(fd)
    return left


@pytest.mark.slow
def test_two_ranks_log_one_run_and_write_the_outputs_of_one_rank(reference, tmp_path):
    params = assert_one_complete_run(reference, EPOCHS)
    assert params["runtime.world_size"] == "2" and params["runtime.backend"] == "gloo"
    assert params["runtime.sync_bn"] == "True" and params["batch_size"] == "16"  # the global batch

    single = tmp_path / "single"
    shutil.copytree(reference, single, symlinks=True, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    edit_params(single, **{"runtime.gpus": 1})
    run(["dvc", "repro", "train_cnn"], single)
    assert assert_one_complete_run(single, EPOCHS)["runtime.world_size"] == "1"

    def outputs(project: Path) -> list[str]:
        files = [*sorted((project / "models" / "cnn").iterdir()), project / "reports" / "train" / "cnn.json"]
        return [str(p.relative_to(project)) for p in files]

    assert outputs(reference) == outputs(single)
    history = [(p / "reports" / "history" / "cnn.csv").read_text().splitlines() for p in (reference, single)]
    assert history[0][0] == history[1][0] and len(history[0]) == len(history[1]) == EPOCHS + 1
    ranked_weights, single_weights = final_weights(reference), final_weights(single)
    assert {k: v.shape for k, v in ranked_weights.items()} == {k: v.shape for k, v in single_weights.items()}
    assert not list((reference / "state" / "resume").glob("*.pt"))


@pytest.mark.slow
def test_sigkill_of_one_rank_ends_every_rank_and_repro_resumes_to_the_same_weights(ranked, reference):
    proc = start_in_own_group(["dvc", "repro", "train_cnn"], ranked)
    wait_for_line(proc, r"epoch 1:")  # rank 0 is in epoch 2
    processes = descendants(proc.pid)
    rank1 = [pid for pid in processes if rank_of(pid) == 1]
    assert len(rank1) == 1, processes
    os.kill(rank1[0], signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, out
    assert "rank 1 ended first (SIGKILL)" in out, out
    assert not still_running(processes), "a process of the killed run is still running"
    _, runs = cnn_runs(ranked)
    assert [r.info.status for r in runs] != ["RUNNING"]

    rerun = run(["dvc", "repro", "train_cnn"], ranked)
    assert re.search(r"resuming MLflow run \w+ after epoch [0-9]", rerun.stdout), rerun.stdout
    assert_one_complete_run(ranked, EPOCHS)
    assert_same_weights(final_weights(reference), final_weights(ranked))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_signal_to_the_repro_group_checkpoints_every_rank_mid_epoch_and_resumes(ranked, reference, signum):
    """SIGTERM as a scheduler (or Ctrl-C, with SIGINT) sends it: torchrun passes it on to the ranks. SIGKILL ends
    dvc and the launcher at once: the ranks, in sessions of their own, get SIGTERM as their launcher dies."""
    edit_params(ranked, progress=True)  # rank 0's bar tells when epoch 2 has begun
    proc = start_in_own_group(["dvc", "repro", "train_cnn"], ranked)
    wait_for_text(proc, rf"cnn epoch 2/{EPOCHS}")
    processes = descendants(proc.pid)
    os.killpg(proc.pid, signum)
    out = proc.communicate(timeout=300)[0]  # until the last rank closes its end of the pipe
    assert re.search(r"stopped by SIGTERM; checkpoint at epoch 2, step \d+", out), out
    assert not still_running(processes)
    _, runs = cnn_runs(ranked)
    assert [r.info.status for r in runs] == ["KILLED"]

    rerun = run(["dvc", "repro", "train_cnn"], ranked)
    assert re.search(r"resuming MLflow run \w+ after epoch 1 \(\+\d+ steps\)", rerun.stdout), rerun.stdout
    assert_one_complete_run(ranked, EPOCHS)
    assert_same_weights(final_weights(reference), final_weights(ranked))


@pytest.mark.slow
def test_a_checkpoint_of_another_number_of_ranks_is_named_and_a_fresh_run_starts(ranked):
    sigterm_after([sys.executable, "-m", "cifar_pipeline.stages.train", "cnn"], ranked, r"epoch 1:")
    edit_params(ranked, **{"runtime.gpus": 1})
    rerun = stage("train", "cnn", cwd=ranked)
    assert "written by a training of 2 rank(s) and this one has 1; starting a fresh run" in rerun.stderr
    assert "resuming" not in rerun.stdout
    _, runs = cnn_runs(ranked)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]


@pytest.mark.parametrize(
    ("runtime", "cnn", "fragments"),
    [
        ({"device": "auto"}, {}, ["runtime.gpus = 2 but", "GPU(s) are visible"]),
        ({"backend": "nccl"}, {}, ["runtime.backend = nccl needs CUDA GPUs"]),
        ({}, {"batch_size": 15}, ["cnn.batch_size = 15 does not split evenly over 2 ranks", "14 or 16"]),
        ({"device": "cuda:1"}, {}, ["runtime.device = cuda:1 names one device"]),
    ],
)
def test_values_two_ranks_cannot_run_are_one_error_before_any_work(project, runtime, cnn, fragments):
    params = read_params(project)
    params["runtime"].update(gpus=2, **runtime)
    params["cnn"].update(cnn)
    write_params(project, params)
    result = stage("train", "cnn", cwd=project, check=False)
    assert_clean_failure(result, *fragments)
    assert not (project / "mlflow.db").exists() and not (project / "state").exists()

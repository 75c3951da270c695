"""Killed training resumes: same MLflow run, no duplicate steps, the same final weights."""

from __future__ import annotations

import os
import re
import signal
import sys

import pytest
import torch

from cifar_pipeline.core.config import load_params
from cifar_pipeline.core.data import md5sum
from cifar_pipeline.training.stage import resume_key
from helpers.outcomes import assert_one_complete_run, assert_same_weights, cnn_runs, final_weights
from helpers.processes import run, sigterm_after, stage, start_in_own_group, wait_for_line, wait_for_text
from helpers.project import RESUMABLE_EPOCHS, make_project, make_resumable, read_params, write_params


@pytest.fixture(scope="module")
def reference_weights(tmp_path_factory, archive, archive_md5) -> dict[str, torch.Tensor]:
    """The final weights of the same training, never interrupted."""
    project = make_resumable(make_project(tmp_path_factory.mktemp("reference") / "project", archive, archive_md5))
    run(["dvc", "repro", "train_cnn"], project)
    return final_weights(project)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [r"epoch 2:", r"epoch 3:"])
def test_sigkill_then_repro_resumes_to_identical_weights(resumable, reference_weights, kill_after):
    proc = start_in_own_group(["dvc", "repro", "train_cnn"], resumable)
    wait_for_line(proc, kill_after)  # the previous epoch's checkpoint is on disk; this one's is being written
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (resumable / "models" / "cnn" / "last.pt").exists()

    rerun = run(["dvc", "repro", "train_cnn"], resumable)
    assert re.search(r"resuming MLflow run \w+ after epoch [1-9]", rerun.stdout), rerun.stdout
    assert_one_complete_run(resumable, RESUMABLE_EPOCHS)
    assert_same_weights(reference_weights, final_weights(resumable))
    assert not list((resumable / "state" / "resume").glob("*.pt")), "resume checkpoint left after success"


@pytest.mark.slow
def test_sigkill_right_after_start_resumes_the_started_run(resumable):
    proc = start_in_own_group(["dvc", "repro", "train_cnn"], resumable)
    lines = wait_for_line(proc, r"started MLflow run")  # printed once the first checkpoint is on disk
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run_id = re.search(r"started MLflow run (\w+)", lines[-1]).group(1)

    rerun = run(["dvc", "repro", "train_cnn"], resumable)

    assert f"resuming MLflow run {run_id} after epoch 0" in rerun.stdout, rerun.stdout
    assert_one_complete_run(resumable, RESUMABLE_EPOCHS)


@pytest.mark.slow
def test_sigterm_checkpoints_mid_epoch_marks_killed_and_resumes(resumable, reference_weights):
    params = read_params(resumable)
    params["progress"] = True  # its bar tells when epoch 2 has begun
    write_params(resumable, params)

    proc = start_in_own_group([sys.executable, "-m", "cifar_pipeline.stages.train", "cnn"], resumable)
    wait_for_text(proc, rf"cnn epoch 2/{RESUMABLE_EPOCHS}")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert re.search(r"stopped by SIGTERM; checkpoint at epoch 2, step \d+", out), out
    _, runs = cnn_runs(resumable)
    assert [r.info.status for r in runs] == ["KILLED"]
    assert len(list((resumable / "state" / "resume").glob("train_cnn-*.pt"))) == 1

    rerun = stage("train", "cnn", cwd=resumable)
    assert re.search(r"resuming MLflow run \w+ after epoch 1 \(\+\d+ steps\)", rerun.stdout), rerun.stdout
    assert_one_complete_run(resumable, RESUMABLE_EPOCHS)
    assert_same_weights(reference_weights, final_weights(resumable))


def interrupt_after_first_epoch(project) -> None:
    sigterm_after([sys.executable, "-m", "cifar_pipeline.stages.train", "cnn"], project, r"epoch 1:")


@pytest.mark.slow
def test_changed_params_never_resume_an_old_run(resumable):
    interrupt_after_first_epoch(resumable)
    params = read_params(resumable)
    params["cnn"]["optimizer"]["lr"] = 0.002
    write_params(resumable, params)
    rerun = stage("train", "cnn", cwd=resumable)
    assert "resuming" not in rerun.stdout
    _, runs = cnn_runs(resumable)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]


def test_corrupt_checkpoint_warns_and_starts_fresh(resumable):
    params = read_params(resumable)
    params["cnn"]["epochs"] = 1
    write_params(resumable, params)
    key = resume_key(
        load_params(resumable / "params.yaml"), "cnn", torch.device("cpu"), md5sum(resumable / "data" / "cifar10.npz")
    )
    bad = resumable / "state" / "resume" / f"train_cnn-{key}.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"PK\x03\x04 truncated")
    result = stage("train", "cnn", cwd=resumable)
    assert "unreadable" in result.stderr and "starting fresh" in result.stderr
    assert "Traceback" not in result.stderr
    assert "resuming" not in result.stdout
    assert (resumable / "models" / "cnn" / "best.pt").is_file()

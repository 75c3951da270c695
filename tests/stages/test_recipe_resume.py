"""A training stage under a per-step schedule, stopped mid-epoch by SIGTERM, resumes to the same weights
and the same logged lrs as an uninterrupted run: with the recipes' switches, and with every fast-training
switch (cnn-airbench94's, plus a residual block and Cutout)."""

from __future__ import annotations

import csv
import re
import shutil
import sys

import pytest

from cifar_pipeline.commands.recipes import merged
from helpers.outcomes import assert_one_complete_run, assert_same_weights, final_weights
from helpers.processes import run, sigterm_after, stage
from helpers.project import RESUMABLE_EPOCHS, read_params, write_params
from helpers.training import TINY_AIRBENCH

PER_STEP = {
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0005},
    "scheduler": {"name": "onecycle", "pct_start": 0.3},
    "label_smoothing": 0.1,
    "augment": {"crop_padding": 4, "hflip": True, "rotation": 10.0, "cutout": 8},
}
FAST = merged(  # every fast switch on
    TINY_AIRBENCH,
    {
        "wide": {"residual": True},
        "extra_convs": 1,
        "lookahead": {"decay": 0.95},
        "label_smoothing": 0.2,
        "augment": {"crop_padding": 2, "crop_reflect": True, "hflip": True, "alternate_flip": True, "cutout": 8},
    },
)


def logged_lrs(project) -> list[str]:
    with (project / "reports" / "history" / "cnn.csv").open() as fh:
        return [row["lr"] for row in csv.DictReader(fh)]


@pytest.mark.slow
@pytest.mark.parametrize("switches", [PER_STEP, FAST], ids=["onecycle", "fast"])
def test_sigterm_mid_epoch_under_a_per_step_schedule_resumes_exactly(resumable, tmp_path, switches):
    params = read_params(resumable)
    params["cnn"].update(switches)
    write_params(resumable, params)
    run(["git", "commit", "-qam", "per-step schedule"], resumable)
    reference = tmp_path / "reference"
    shutil.copytree(resumable, reference, symlinks=True)
    stage("train", "cnn", cwd=reference)
    params["progress"] = True  # its bar tells when epoch 2 has begun ("epoch 1:" comes before that)
    write_params(resumable, params)

    out = sigterm_after(
        [sys.executable, "-m", "cifar_pipeline.stages.train", "cnn"], resumable, r"cnn epoch 2/", raw=True
    )
    assert re.search(r"checkpoint at epoch 2, step \d+", out), out

    rerun = stage("train", "cnn", cwd=resumable)
    assert re.search(r"resuming MLflow run \w+ after epoch 1 \(\+\d+ steps\)", rerun.stdout), rerun.stdout
    assert_one_complete_run(resumable, RESUMABLE_EPOCHS)
    assert logged_lrs(resumable) == logged_lrs(reference)
    assert_same_weights(final_weights(reference), final_weights(resumable))

"""What the CPU can't measure of runtime.gpus (issue #24), for a machine with 2 GPUs and the CIFAR-10 archive
(CIFAR_ARCHIVE, default data/cifar-10-python.tar.gz): the resnet34-cifar recipe on 2 GPUs against 1, and two
queued 1-GPU experiments with `dvc queue start -j 2` against one alone. Marked `cuda`; skipped without 2
GPUs or the archive. DDP_EPOCHS (default 10) and DDP_SEEDS (default "0"; the issue asks for "0 1 2") size it.
Run: pytest -m cuda tests/gpu/test_ddp.py -s   (each result is printed as one JSON line with date, GPUs,
torch and commit)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cifar_pipeline.commands.recipes import load, merged
from helpers.processes import run
from helpers.project import ROOT, make_project, read_params, write_params

ARCHIVE = Path(os.environ.get("CIFAR_ARCHIVE", ROOT / "data" / "cifar-10-python.tar.gz"))
EPOCHS = int(os.environ.get("DDP_EPOCHS", "10"))
SEEDS = [int(s) for s in os.environ.get("DDP_SEEDS", "0").split()]

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
    pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"needs the CIFAR-10 archive at {ARCHIVE} (CIFAR_ARCHIVE)"),
]


def recipe_project(folder: Path, **runtime) -> Path:
    """A copy of the project on the real archive, resnet34 set to the resnet34-cifar recipe for EPOCHS epochs."""
    archive_md5 = hashlib.md5(ARCHIVE.read_bytes()).hexdigest()
    project = make_project(folder, ARCHIVE, archive_md5)
    params = merged(read_params(project), load("resnet34-cifar", ROOT).changes)
    params["data"].update(val_size=5000)
    params["runtime"].update(device="auto", **runtime)
    params["resnet34"].update(epochs=EPOCHS)
    write_params(project, params)
    run(["git", "commit", "-qam", "resnet34-cifar"], project)
    run(["dvc", "repro", "download"], project)
    return project


def record(what: str, **values) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "gpus": gpus, "torch": torch.__version__}
    print(json.dumps({"what": what, **meta, "commit": commit.stdout.strip(), **values}), flush=True)


def train(project: Path, seed: int) -> dict:
    run(["dvc", "exp", "run", "-S", f"seed={seed}", "train_resnet34"], project, timeout=7200)
    return json.loads((project / "reports" / "train" / "resnet34.json").read_text())


def test_resnet34_cifar_on_two_gpus_against_one(tmp_path):
    one = recipe_project(tmp_path / "one", gpus=1)
    two = recipe_project(tmp_path / "two", gpus=2)
    runs = {n: [train(p, seed) for seed in SEEDS] for n, p in ((1, one), (2, two))}
    seconds = {n: statistics.median(r["train_seconds"] for r in rs) for n, rs in runs.items()}
    accuracy = {n: statistics.mean(r["best_val_acc"] for r in rs) for n, rs in runs.items()}
    speedup = seconds[1] / seconds[2]
    record("resnet34-cifar 2 GPUs vs 1", epochs=EPOCHS, seeds=SEEDS, seconds=seconds, val_acc=accuracy, speedup=speedup)
    assert speedup >= 1.8  # the goal
    assert abs(accuracy[2] - accuracy[1]) <= 0.01  # equal within seed noise


def test_two_queued_experiments_on_two_gpus_take_as_long_as_one(tmp_path):
    project = recipe_project(tmp_path / "queue", gpus=1)
    start = time.monotonic()
    run(["dvc", "exp", "run", "-n", "alone", "train_resnet34"], project, timeout=7200)
    alone = time.monotonic() - start
    for seed in (1, 2):
        run(["dvc", "exp", "run", "--queue", "-n", f"seed{seed}", "-S", f"seed={seed}", "train_resnet34"], project)
    start = time.monotonic()
    run(["dvc", "exp", "run", "--run-all", "--jobs", "2"], project, timeout=7200)  # `dvc queue start -j 2`, blocking
    both = time.monotonic() - start
    record("two queued experiments, -j 2, vs one alone", epochs=EPOCHS, alone_s=alone, both_s=both, ratio=both / alone)
    assert both <= 1.15 * alone

"""What keeps `dvc repro` fast: compare never loads torch, the models that don't need torchvision don't load it
(it imports torch._dynamo), the archive is read in one pass whatever its
member order, and benchmarks/pipeline.py times every stage of a run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from cifar_pipeline.core.data import read_archive
from helpers.data import members, write_archive
from helpers.processes import run, stage_env
from helpers.project import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import pipeline

COMPARE_IMPORTS = """
import sys
import cifar_pipeline.stages.compare, cifar_pipeline.reporting.comparison, cifar_pipeline.tracking.registry
import cifar_pipeline.tracking.run_metadata, cifar_pipeline.tracking.store, mlflow, mlflow.entities
print(sorted(m for m in ("torch", "torchvision", "matplotlib") if m in sys.modules))
"""


def test_compare_stage_imports_neither_torch_nor_matplotlib():
    out = subprocess.run(
        [sys.executable, "-c", COMPARE_IMPORTS], env=stage_env(), capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


MODEL_IMPORTS = """
import sys
import cifar_pipeline.stages.evaluate, cifar_pipeline.commands.predict
from cifar_pipeline.core.config import load_params
from cifar_pipeline.engine.models import model_from_params
params = load_params(sys.argv[1])
for name in ("cnn", "resnet34", "resnet18"):
    model_from_params(params, name, pretrained=False)
    print(name, "torchvision" in sys.modules)
"""


def test_only_the_torchvision_models_import_torchvision():
    out = subprocess.run(
        [sys.executable, "-c", MODEL_IMPORTS, str(ROOT / "params.yaml")],
        env=stage_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["cnn", "False", "resnet34", "False", "resnet18", "True"]


def test_archive_members_in_any_order_and_with_extra_files_read_the_same(tmp_path):
    batches = members(n_train=50, n_test=20, seed=3)
    canonical = read_archive(write_archive(tmp_path / "a.tar.gz", batches))
    shuffled = {"readme.html": {"note": "not a batch"}, **dict(reversed(list(batches.items())))}
    other = read_archive(write_archive(tmp_path / "b.tar.gz", shuffled))
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(other, field), getattr(canonical, field))
    assert other.classes == canonical.classes


def test_record_merges_into_the_same_commits_run_else_adds_a_newer_one(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"gpu": "G", "commit": "abc", "date": "d0", "models": {"cnn": {}}, "history": []}))
    stages = {"download": {"wall": 1.0}, "train_cnn": {"wall": 9.0, "train_seconds": 5.0}}
    result = {
        "gpu": "G",
        "commit": "abc",
        "date": "d1",
        "torch": "2.x",
        "torch_bytecode_cached": False,
        "command": "c",
        "runs": {
            "cold": {"wall": 12.0, "stages": stages, "processes_left_after_1s": []},
            "warm": {"wall": 10.0, "stages": stages, "processes_left_after_1s": ["1 python -m cifar_pipeline.x"]},
        },
    }
    pipeline.record(result, results)
    merged = json.loads(results.read_text())
    assert merged["models"] == {"cnn": {}} and merged["history"] == []
    assert merged["pipeline_wall_seconds"] == {"cold": 12.0, "warm": 10.0}
    assert merged["pipeline_stage_wall_seconds"]["warm"] == {"download": 1.0, "train_cnn": 9.0}
    assert merged["pipeline_train_seconds"]["cold"] == {"train_cnn": 5.0}
    assert merged["pipeline_torch_bytecode_cached"] is False
    assert merged["pipeline_processes_left_after_1s"] == {"cold": [], "warm": ["1 python -m cifar_pipeline.x"]}

    pipeline.record({**result, "commit": "def"}, results)
    newer = json.loads(results.read_text())
    assert newer["commit"] == "def" and "models" not in newer
    assert newer["history"][0]["commit"] == "abc" and newer["history"][0]["pipeline_wall_seconds"]["cold"] == 12.0


@pytest.mark.slow
def test_pipeline_benchmark_times_every_stage_and_records_the_run(tmp_path, archive, archive_md5):
    tiny = {
        "data.md5": archive_md5,
        "data.train_limit": 200,
        "data.test_limit": 100,
        "data.val_size": 50,
        "runtime.device": "cpu",
        "progress": False,
        "cnn.epochs": 1,
        "cnn.batch_size": 32,
        "resnet34.epochs": 1,
        "resnet34.batch_size": 32,
        "resnet18.epochs": 1,
        "resnet18.batch_size": 32,
        "resnet18.image_size": 32,
        "resnet18.weights": "none",
    }
    overrides = [arg for key, value in tiny.items() for arg in ("-S", f"{key}={json.dumps(value)}")]
    results = tmp_path / "results.json"
    out = tmp_path / "out"
    run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "pipeline.py"),
            "--archive",
            str(archive),
            "--out",
            str(out),
            "--runs",
            "cold",  # a warm run (`dvc repro -f`) measures the same way
            "--record",
            "--results",
            str(results),
            *overrides,
        ],
        ROOT,
        timeout=3600,
    )

    result = json.loads((out / "pipeline.json").read_text())
    expected = []
    for stage, spec in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        expected += [f"{stage}@{item}" for item in spec["foreach"]] if "foreach" in spec else [stage]
    cold = result["runs"]["cold"]
    assert sorted(cold["stages"]) == sorted(expected)
    for stage, entry in cold["stages"].items():
        parts = entry["parts"]
        assert entry["wall"] > 0 and {"dvc_before", "exit", "dvc_after"} <= parts.keys(), stage
        if stage in pipeline.MODEL_OF_STAGE:
            assert {"start_up", "training", "outputs", "publish"} <= parts.keys() and entry["train_seconds"] > 0
        else:
            assert "run" in parts
    assert set(cold["probe"]) >= {"import_torch", "import_mlflow", "mlflow_store_open"}
    assert cold["processes_left_after_1s"] == []
    recorded = json.loads(results.read_text())
    assert set(recorded["pipeline_wall_seconds"]) == {"cold"}
    assert sorted(recorded["pipeline_stage_wall_seconds"]["cold"]) == sorted(expected)
    assert recorded["gpu"] == result["gpu"] and recorded["pipeline_torch"] == result["torch"]
    torch_bytecode = importlib.util.cache_from_source(importlib.util.find_spec("torch").origin)
    assert recorded["pipeline_torch_bytecode_cached"] is os.path.exists(torch_bytecode)
    assert "| train_cnn |" in (out / "pipeline.md").read_text()

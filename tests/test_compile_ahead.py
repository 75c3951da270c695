"""The background compiler (src/cifar_pipeline/compile_cache.py): when it starts, that a training stage
waits for the step it is compiling, and (on a GPU) that it fills the cache with exactly what the stage
compiles."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from cifar_pipeline import compile_cache
from cifar_pipeline.config import MODELS, load_params
from helpers.processes import start_in_own_group, wait_for_line
from helpers.project import ROOT

PARAMS = load_params(ROOT / "params.yaml")

HOLD_LOCK = """
import fcntl, sys
lock = open(sys.argv[1], "a+b")
fcntl.flock(lock, fcntl.LOCK_EX)
print("holding", flush=True)
sys.stdin.read()  # until the test closes stdin
"""

WAIT = """
from cifar_pipeline import compile_cache
compile_cache.wait_for("cnn-0123", "train_cnn")
print("returned", flush=True)
"""


@pytest.mark.parametrize(
    "runtime",
    [{"compile": False}, {"deterministic": True}, {"device": "cpu"}, {"device": "mps"}],
    ids=["compile-off", "deterministic", "cpu", "mps"],
)
def test_not_started_when_the_stages_will_not_compile(runtime, monkeypatch):
    monkeypatch.setenv("CIFAR_COMPILE_AHEAD", "1")
    params = PARAMS.model_copy(update={"runtime": PARAMS.runtime.model_copy(update=runtime)})
    assert not compile_cache.wanted(params)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("CIFAR_COMPILE_AHEAD", "0")
    assert not compile_cache.wanted(PARAMS)


@pytest.fixture
def compiling(tmp_path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """A compile cache in which another process holds the lock of step cnn-0123, as a compiler does;
    closing its stdin releases it."""
    cache = tmp_path / "cache"
    (cache / compile_cache.MARKS).mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(cache / compile_cache.MARKS / "cnn-0123.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        yield cache, holder
    finally:
        holder.kill()
        holder.wait()


def test_a_stage_waits_while_its_step_is_being_compiled(tmp_path, compiling):
    cache, holder = compiling
    stage = start_in_own_group([sys.executable, "-c", WAIT], tmp_path, TORCHINDUCTOR_CACHE_DIR=str(cache))
    seen = wait_for_line(stage, "waiting for the background compile")
    assert "train_cnn: waiting for the background compile of this step" in seen[-1]
    assert stage.poll() is None  # still waiting while the lock is held
    holder.stdin.close()  # the compiler is done
    out = stage.communicate(timeout=60)[0]
    assert stage.returncode == 0 and out == "returned\n", out


def test_a_compiled_step_is_not_waited_for(tmp_path, compiling):
    cache, _ = compiling
    (cache / compile_cache.MARKS / "cnn-0123").write_text("done\n")
    stage = start_in_own_group([sys.executable, "-c", WAIT], tmp_path, TORCHINDUCTOR_CACHE_DIR=str(cache))
    out = stage.communicate(timeout=60)[0]
    assert stage.returncode == 0 and out == "returned\n", out


def test_only_models_never_compiled_are_compiled_ahead(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert compile_cache.never_compiled(PARAMS) == list(MODELS)
    marks = compile_cache.marks_dir()
    cnn_graph = compile_cache.step_prefix(PARAMS, "cnn")
    (marks / f"{cnn_graph}-0badc0de").write_text("")  # another GPU's
    (marks / f"resnet34-{cnn_graph.removeprefix('cnn-')}-0badc0de").write_text("")  # not its graph
    assert compile_cache.never_compiled(PARAMS) == ["resnet34", "resnet18"]
    wider = PARAMS.model_copy(update={"cnn": PARAMS.cnn.model_copy(update={"width": 2.0})})
    assert compile_cache.never_compiled(wider) == list(MODELS)  # another graph
    longer = PARAMS.model_copy(update={"cnn": PARAMS.cnn.model_copy(update={"epochs": 99})})
    assert compile_cache.never_compiled(longer) == ["resnet34", "resnet18"]  # the same graph


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_stage_compiles_nothing_the_compiler_did_not(tmp_path, monkeypatch):
    """The background compiler's steps are cache hits for the stages: not one graph compiled again."""
    from torch._dynamo.utils import counters

    from cifar_pipeline.runtime import Settings
    from cifar_pipeline.trainer import build_trainer
    from test_cuda import device_data, tiny_params

    params = tiny_params().model_copy(
        update={"resnet18": PARAMS.resnet18.model_copy(update={"weights": "none", "image_size": 64})}
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    cache = tmp_path / "cache"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))
    assert compile_cache.never_compiled(params) == list(MODELS)
    settings = Settings.resolve(params.runtime)
    for name in MODELS:
        done = subprocess.run(
            [sys.executable, "-m", "cifar_pipeline.compile_ahead", str(params_file), name],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0 and " compiled " in done.stdout, done.stdout + done.stderr
    assert compile_cache.never_compiled(params) == []
    for name in MODELS:
        assert compile_cache.is_compiled(compile_cache.step_key(params, name, settings.device))
        torch._dynamo.reset()
        counters.clear()
        trainer = build_trainer(params, name, settings, device_data(64, 8))
        _, batches = trainer.loader.epoch()
        trainer.step(*next(batches))
        misses = counters["aot_autograd"]["autograd_cache_miss"] + counters["inductor"]["fxgraph_cache_miss"]
        hits = counters["aot_autograd"]["autograd_cache_hit"] + counters["inductor"]["fxgraph_cache_hit"]
        assert misses == 0 and hits > 0, (name, dict(counters["aot_autograd"]), dict(counters["inductor"]))

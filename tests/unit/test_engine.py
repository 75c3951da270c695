"""The trainer on CPU: the odd batch sizes and optimizers the GPU defaults never meet."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

from cifar_pipeline.core.config import RuntimeParams, load_params
from cifar_pipeline.engine.device import Settings
from helpers.project import ROOT
from helpers.training import tiny_trainer


def test_a_last_batch_of_one_image_is_dropped_not_fatal():
    # ResNet-34's last stage is 1x1 at 32 px: BatchNorm cannot train on a single image there.
    result = tiny_trainer("resnet34", n_train=17).train_epoch(1)  # 8 + 8 + 1
    assert 0 <= result.train_acc <= 1 and result.images_per_second > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_every_optimizer_choice_trains(optimizer):
    cfg = load_params(ROOT / "params.yaml").cnn.optimizer.model_copy(update={"name": optimizer})
    trainer = tiny_trainer("cnn", n_train=16, optimizer=cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train_epoch(1)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters(), strict=True))
    assert type(trainer.optimizer).__name__.lower() == optimizer


def test_cuda_only_switches_stay_off_on_the_cpu():
    settings = Settings.resolve(RuntimeParams(device="cpu"), compile=True)  # bf16, channels_last, graphs: all on
    assert settings.device.type == "cpu"
    assert not (settings.bf16 or settings.channels_last or settings.cuda_graphs or settings.compile)


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_step_and_compiles_one_graph(tmp_path, monkeypatch):
    # Compile is a CUDA default, but inductor also runs on CPU: this checks the wiring, not the speed.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    counters.clear()
    results = {}
    for compile in (False, True):  # 20 images at batch 8: two full (compiled) steps, one partial (eager)
        trainer = tiny_trainer("cnn", n_train=20, compile=compile, dropout=0.0)  # dropout RNG differs when compiled
        results[compile] = trainer.train_epoch(1)
    assert counters["stats"]["unique_graphs"] == 1  # the partial batch and validation stay eager
    assert trainer.step.first_step_seconds > 0
    assert results[True].train_loss == pytest.approx(results[False].train_loss, rel=1e-3)
    assert results[True].val_loss == pytest.approx(results[False].val_loss, rel=1e-2)  # Adam magnifies rounding


@pytest.mark.parametrize("user_dir", [None, "custom"])
def test_compile_cache_lives_at_the_project_root_unless_the_user_chose_one(tmp_path, user_dir):
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    if user_dir:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / user_dir)
    code = (
        "import torch\n"  # torch fills the variable with its /tmp default on import
        "from cifar_pipeline.engine.device import use_project_compile_cache\n"
        "from torch._inductor.runtime.cache_dir_utils import cache_dir\n"
        "use_project_compile_cache()\nprint(cache_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    expected = tmp_path / user_dir if user_dir else tmp_path.resolve() / "state" / "torch_compile"
    assert out == str(expected)

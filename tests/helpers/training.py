"""Tiny CPU trainers for the engine tests, and the recording and stop-and-restore steps they share with the
GPU tests."""

from __future__ import annotations

import signal

import pytest
import torch

from cifar_pipeline.core.config import load_params
from cifar_pipeline.core.errors import Interrupted
from cifar_pipeline.engine import checkpoint
from cifar_pipeline.engine.device import Settings
from cifar_pipeline.engine.loader import DeviceData
from cifar_pipeline.engine.optim import current_lr
from cifar_pipeline.engine.trainer import Trainer, build_trainer
from helpers.project import ROOT

# cnn-airbench94's switches on a wide net narrowed to 16-32-32 channels: seconds per epoch on a CPU
TINY_AIRBENCH = {
    "arch": "wide",
    "wide": {"widths": [16, 32, 32], "whiten": True, "whiten_bias_epochs": 1},
    "batchnorm": {"momentum": 0.4, "eps": 1e-12, "weight": False},
    "lookahead": {"every": 2},
    "optimizer": {
        "name": "sgd",
        "lr": 11.5,
        "momentum": 0.85,
        "nesterov": True,
        "weight_decay": 0.0153,
        "decoupled": True,
        "bias_lr_scale": 64.0,
    },
    "scheduler": {"name": "linear", "pct_start": 0.23, "start_factor": 0.2, "end_factor": 0.07},
    "tta": "flip_shift",
}


def tiny_trainer(name: str, n_train: int, compile: bool = False, **model_updates) -> Trainer:
    params = load_params(ROOT / "params.yaml")
    cfg = params.model(name).model_copy(update={"batch_size": 8, **model_updates})
    params = params.model_copy(update={name: cfg, "seed": 0})
    torch.manual_seed(0)
    images = torch.randint(0, 256, (n_train + 8, 32, 32, 3), dtype=torch.uint8).numpy()
    labels = torch.randint(0, 10, (n_train + 8,)).numpy()
    data = DeviceData.from_numpy(
        images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], torch.device("cpu")
    )
    settings = Settings(torch.device("cpu"), False, False, False, compile, 64, False)
    return build_trainer(params, name, settings, data)


class Recording:
    """The trainer's own step, noting the lr each call uses; `after` runs after each call."""

    def __init__(self, trainer, after=None):
        self.inner, self.trainer, self.after, self.lrs = trainer.step, trainer, after, []
        trainer.step = self

    def __call__(self, x, y):
        self.lrs.append(current_lr(self.trainer.optimizer))
        self.inner(x, y)
        if self.after:
            self.after(len(self.lrs))

    def __getattr__(self, name):
        return getattr(self.inner, name)


def lrs_per_step(trainer, epochs: int) -> list[float]:
    recording = Recording(trainer)
    for epoch in range(1, epochs + 1):
        trainer.train_epoch(epoch)
    return recording.lrs


def stop_and_restore(first, make) -> tuple:
    """Train `first` for an epoch and 2 steps of the next, stopped there by a SIGTERM as training.py is;
    then a fresh trainer from make(), restored from the saved state as training.py does from the resume
    checkpoint. Returns it and the Interrupted's cursor."""
    first.train_epoch(1)

    def stop_after_two(calls: int) -> None:
        if calls == 2:
            first.stop_signal = signal.SIGTERM

    Recording(first, after=stop_after_two)
    with pytest.raises(Interrupted) as stop:
        first.train_epoch(2)
    saved, rng = checkpoint.to_cpu(first.state()), checkpoint.rng_state()
    torch.manual_seed(1234)  # a new process starts elsewhere
    resumed = make()
    resumed.load_state(saved)
    checkpoint.set_rng_state(rng)
    return resumed, stop.value.cursor

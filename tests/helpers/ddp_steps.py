"""Run by tests/unit/test_ddp_math.py under torchrun (`python -m torch.distributed.run --module
helpers.ddp_steps OUT SYNC_BN`): each rank trains its share of a tiny CNN for EPOCHS epochs; rank 0 saves the
weights and the epochs' results to OUT. Without torchrun it is the one-process reference."""

from __future__ import annotations

import sys
from dataclasses import asdict

import numpy as np
import torch

from cifar_pipeline.core.config import OptimizerParams, load_params
from cifar_pipeline.engine import distributed
from cifar_pipeline.engine.device import Settings
from cifar_pipeline.engine.loader import DeviceData
from cifar_pipeline.engine.trainer import build_trainer
from helpers.data import make_images
from helpers.project import ROOT

N_TRAIN, N_VAL, EPOCHS = 32, 16, 3  # 2 steps an epoch, at a global batch of 16: 6 steps
# SGD, no dropout: each rank draws dropout masks for its share only, so only a dropout-free model can match
CNN = {"batch_size": 16, "dropout": 0.0, "width": 0.5, "optimizer": OptimizerParams(name="sgd", lr=0.02, momentum=0.9)}


def train(sync_bn: bool) -> tuple[dict, list[dict]] | None:
    """(weights, epoch results) of this process's training; None on ranks other than 0."""
    params = load_params(ROOT / "params.yaml")
    runtime = params.runtime.model_copy(update={"sync_bn": sync_bn, "device": "cpu"})
    params = params.model_copy(update={"cnn": params.cnn.model_copy(update=CNN), "runtime": runtime, "seed": 0})
    rows, labels = make_images(N_TRAIN + N_VAL, np.random.default_rng(0))  # learnable: one colour per class
    images, labels = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels)
    data = DeviceData.from_numpy(
        images[:N_TRAIN], labels[:N_TRAIN], images[N_TRAIN:], labels[N_TRAIN:], torch.device("cpu")
    )
    settings = distributed.join(Settings(torch.device("cpu"), False, False, False, False, 64, False), runtime)
    trainer = build_trainer(params, "cnn", settings, data)
    results = [asdict(trainer.train_epoch(epoch)) for epoch in range(1, EPOCHS + 1)]
    if settings.ranks and not settings.ranks.main:
        return None
    return trainer.model.state_dict(), results


if __name__ == "__main__":
    out = train(sys.argv[2] == "true")
    if out is not None:
        torch.save(out, sys.argv[1])

"""The training engine on CPU: the odd batch sizes and optimizers the GPU defaults never meet."""

from __future__ import annotations

import pytest
import torch

from cifar_pipeline.config import load_params
from cifar_pipeline.engine import DeviceData, Settings, Trainer
from cifar_pipeline.models import model_from_params
from conftest import ROOT


def tiny_trainer(name: str, n_train: int, **model_updates) -> Trainer:
    params = load_params(ROOT / "params.yaml")
    cfg = params.model(name).model_copy(update={"batch_size": 8, **model_updates})
    params = params.model_copy(update={name: cfg})
    images = torch.randint(0, 256, (n_train + 8, 32, 32, 3), dtype=torch.uint8).numpy()
    labels = torch.randint(0, 10, (n_train + 8,)).numpy()
    data = DeviceData.from_numpy(images[:n_train], labels[:n_train], images[n_train:], labels[n_train:],
                                 torch.device("cpu"))
    settings = Settings(torch.device("cpu"), False, False, False, False, 64, False)
    torch.manual_seed(0)
    return Trainer(name, model_from_params(params, name, pretrained=False), cfg, settings, data,
                   torch.Generator().manual_seed(0))


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
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters()))
    assert type(trainer.optimizer).__name__.lower() == optimizer

"""What only a GPU runs: the CUDA-graph step against the eager step, an exact resume with graphs on,
and bf16 inference against fp32. Marked `cuda`; skipped where torch sees no CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cifar_pipeline.commands.recipes import merged
from cifar_pipeline.core.config import load_params
from cifar_pipeline.engine.device import Settings, predict
from cifar_pipeline.engine.loader import DeviceData
from cifar_pipeline.engine.optim import current_lr
from cifar_pipeline.engine.trainer import build_trainer
from helpers.data import make_images
from helpers.project import ROOT
from helpers.training import TINY_AIRBENCH, lrs_per_step, stop_and_restore

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = torch.device("cuda")
PARAMS = load_params(ROOT / "params.yaml")
OPTIMIZERS = {  # Adam (capturable) under the CNN's own schedule; fused SGD under a per-step OneCycle
    "adam": {"optimizer": {"name": "adam", "lr": 1e-3}},
    "sgd_onecycle": {"optimizer": {"name": "sgd", "lr": 0.05, "nesterov": True}, "scheduler": {"name": "onecycle"}},
    # cnn-airbench94's switches, narrowed: three SGD groups (the stem's bias frozen after epoch 1 by a zero lr),
    # a linear schedule per group, Lookahead outside the graph, a whitening stem fitted on the GPU
    "airbench": TINY_AIRBENCH,
}


@pytest.fixture(autouse=True)
def full_precision_math():
    """TF32 alone moved graphed and eager weights 7 % apart; deterministic cuDNN kernels make reruns repeat."""
    switches = [
        (torch.backends.cuda.matmul, "allow_tf32"),
        (torch.backends.cudnn, "allow_tf32"),
        (torch.backends.cudnn, "benchmark"),
        (torch.backends.cudnn, "deterministic"),
    ]
    saved = [getattr(obj, name) for obj, name in switches]
    for (obj, name), value in zip(switches, (False, False, False, True), strict=True):
        setattr(obj, name, value)
    yield
    for (obj, name), value in zip(switches, saved, strict=True):
        setattr(obj, name, value)


def tiny_params(**cnn):
    """params.yaml with a quarter-width CNN at batch 8 and `cnn` merged over its section."""
    section = merged(PARAMS.cnn.model_dump(), {"width": 0.25, "batch_size": 8, "dropout": 0.0, **cnn})
    return PARAMS.model_copy(update={"cnn": type(PARAMS.cnn).model_validate(section), "seed": 0})


def device_data(n_train: int, n_val: int) -> DeviceData:
    """Learnable synthetic images (one colour per class), on the GPU."""
    rows, labels = make_images(n_train + n_val, np.random.default_rng(0))
    images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.asarray(labels)
    return DeviceData.from_numpy(images[:n_train], labels[:n_train], images[n_train:], labels[n_train:], DEVICE)


def settings(cuda_graphs: bool, bf16: bool = False, channels_last: bool = False) -> Settings:
    return Settings(DEVICE, bf16, channels_last, cuda_graphs, False, 64, False)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_captured_step_trains_like_the_eager_step(optimizer):
    params = tiny_params(epochs=2, label_smoothing=0.1, **OPTIMIZERS[optimizer])
    data = device_data(32, 8)  # 4 full steps an epoch: the first is captured, the rest replay it
    runs = {}
    for graphs in (False, True):
        trainer = build_trainer(params, "cnn", settings(graphs), data)
        runs[graphs] = (lrs_per_step(trainer, 2), trainer)
    (eager_lrs, eager), (graphed_lrs, graphed) = runs[False], runs[True]
    assert graphed.step.graph is not None and eager.step.graph is None
    assert graphed_lrs == pytest.approx(eager_lrs, rel=1e-6)  # the schedule's lrs, read from the device tensor
    for a, b in zip(eager.optimizer.state.values(), graphed.optimizer.state.values(), strict=True):
        if "step" in a:  # Adam's step count: the warm-up before the capture was undone
            assert float(a["step"]) == float(b["step"]) == 8
    eager_weights, graphed_weights = dict(eager.model.named_parameters()), dict(graphed.model.named_parameters())
    for name, weight in eager_weights.items():  # eager and captured kernels differ: 0.24 % apart after 8 steps
        assert (weight - graphed_weights[name]).abs().max() <= 1e-2 * weight.abs().max(), name


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_mid_epoch_resume_with_cuda_graphs_gives_the_same_weights(optimizer):
    """Stop after 2 steps of epoch 2 through the real signal path, restore a fresh trainer from the saved
    state as the training stage does (its graph is captured anew, mid-epoch), finish: weights, lr and
    schedule match an uninterrupted run."""
    params = tiny_params(epochs=3, augment={"crop_padding": 4, "hflip": True, "cutout": 8}, **OPTIMIZERS[optimizer])
    data = device_data(32, 8)

    def make():
        return build_trainer(params, "cnn", settings(True), data)

    reference = make()
    lrs_per_step(reference, 3)
    resumed, cursor = stop_and_restore(make(), make)
    assert (cursor.epoch, cursor.steps) == (2, 2)
    resumed.train_epoch(2, resume=cursor)
    resumed.train_epoch(3)
    assert resumed.step.graph is not None
    assert resumed.scheduler.last_epoch == reference.scheduler.last_epoch
    assert current_lr(resumed.optimizer) == current_lr(reference.optimizer)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_bf16_predictions_match_fp32():
    params = tiny_params(epochs=3, batch_size=64)
    data = device_data(2000, 1000)
    trainer = build_trainer(params, "cnn", settings(True), data)
    for epoch in range(1, 4):
        trainer.train_epoch(epoch)
    fp32 = predict(trainer.model, data.val_x, settings(False)).softmax(1)
    bf16 = predict(trainer.model, data.val_x, settings(False, bf16=True, channels_last=True)).softmax(1)
    assert bf16.dtype == fp32.dtype == torch.float32
    assert (bf16.argmax(1) == fp32.argmax(1)).float().mean().item() >= 0.99
    assert (fp32.argmax(1) == data.val_y).float().mean().item() >= 0.5  # a trained model, not near-uniform guesses
    assert (bf16 - fp32).abs().max().item() <= 0.05
    assert (bf16 - fp32).abs().mean().item() <= 0.005

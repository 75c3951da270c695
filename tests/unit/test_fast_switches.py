"""The fast-training switches (airbench's techniques) on CPU: the whitening stem, the wide CNN, BatchNorm
tweaks, decoupled SGD with its groups and linear schedule, Lookahead, alternating flip, reflect crops,
flip + shift TTA, and an exact mid-epoch resume with every switch on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from cifar_pipeline.commands.recipes import merged
from cifar_pipeline.core.config import AugmentParams, load_params
from cifar_pipeline.engine import tta
from cifar_pipeline.engine.augment import augment, to_unit_float
from cifar_pipeline.engine.device import loss_and_accuracy, predict
from cifar_pipeline.engine.loader import DeviceData, Loader
from cifar_pipeline.engine.models import Classifier, Preprocess, build_model
from cifar_pipeline.engine.whitening import EPS, WhiteningStem, patches, whitening_weights
from helpers.project import ROOT
from helpers.training import lrs_per_step, stop_and_restore, tiny_trainer

PARAMS = load_params(ROOT / "params.yaml")
AIRBENCH94 = yaml.safe_load((ROOT / "recipes" / "cnn-airbench94.yaml").read_text())["cnn"]
NARROW = {"widths": [8, 16, 16]}  # the recipe's code paths at a CPU test's size


def airbench(n_train: int = 40, **update):
    """A tiny CPU trainer (batch 8) of cnn-airbench94, narrowed, with `update` merged over the recipe."""
    section = merged({**AIRBENCH94, "epochs": 3, "batch_size": 8}, {"wide": NARROW, **update})
    full = type(PARAMS.cnn).model_validate(merged(PARAMS.cnn.model_dump(), section))
    return tiny_trainer("cnn", n_train, **{k: getattr(full, k) for k in section})


def named(trainer) -> dict[int, str]:
    return {id(p): n for n, p in trainer.model.named_parameters()}


# --- whitening stem ---------------------------------------------------------------------------------


def test_the_whitening_stem_is_computed_from_the_training_images_and_never_trains():
    trainer = airbench(wide={**NARROW, "whiten_bias_epochs": 0})
    stem = trainer.model.net.stem
    assert isinstance(stem, WhiteningStem) and not stem.weight.requires_grad and not stem.bias.requires_grad
    images = trainer.model.preprocess(to_unit_float(trainer.data.train_x))
    assert torch.equal(stem.weight, whitening_weights(images))  # from these images ...
    other = airbench(n_train=48, wide={**NARROW, "whiten_bias_epochs": 0}).model.net.stem.weight
    assert not torch.allclose(stem.weight, other)  # ... not from fixed numbers
    # the first 12 filters whiten the 2x2 patches: their outputs are uncorrelated, variance l / (l + EPS)
    flat = patches(images)
    out = flat @ stem.weight[:12].reshape(12, -1).T
    eigenvalues = torch.linalg.eigvalsh(flat.T @ flat / len(flat)).flip(0)
    expected = torch.diag(eigenvalues / (eigenvalues + EPS))
    torch.testing.assert_close(out.T @ out / len(out), expected, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(stem.weight[12:], -stem.weight[:12])

    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(stem.weight) not in optimized and id(stem.bias) not in optimized
    before = stem.weight.clone()
    trainer.train_epoch(1)
    assert torch.equal(stem.weight, before)


def test_the_stems_bias_trains_for_whiten_bias_epochs_only():
    trainer = airbench(wide={**NARROW, "whiten_bias_epochs": 1})
    bias = trainer.model.net.stem.bias
    start = bias.detach().clone()
    trainer.train_epoch(1)
    after_one = bias.detach().clone()
    trainer.train_epoch(2)
    assert not torch.equal(after_one, start) and torch.equal(bias, after_one)


# --- the wide CNN and BatchNorm -------------------------------------------------------------------


def test_the_wide_cnn_has_airbench94s_shape_and_batchnorm_its_tweaks():
    cfg = type(PARAMS.cnn).model_validate(merged(PARAMS.cnn.model_dump(), AIRBENCH94))
    model = build_model("cnn", cfg)
    convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape[:2]) for c in convs] == [
        (24, 3),
        (64, 24),
        (64, 64),
        (256, 64),
        (256, 256),
        (256, 256),
        (256, 256),
    ]
    assert sum(p.numel() for p in model.parameters()) == 1_972_792  # airbench94: about 1.97 million
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all((n.momentum, n.eps, n.weight.requires_grad) == (0.4, 1e-12, False) for n in norms)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    seed_norms = [m for m in build_model("cnn", PARAMS.cnn).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all((n.momentum, n.eps, n.weight.requires_grad) == (0.1, 1e-5, True) for n in seed_norms)


def test_a_residual_block_adds_its_first_layers_output_before_the_last_gelu():
    cfg = type(PARAMS.cnn).model_validate(
        merged(PARAMS.cnn.model_dump(), {"arch": "wide", "extra_convs": 1, "wide": {"residual": True, **NARROW}})
    )
    block = build_model("cnn", cfg).net.blocks[1].eval()
    x = torch.rand(2, 24, 16, 16)
    first = block.first(x)
    torch.testing.assert_close(block(x), F.gelu(block.rest(first) + first))
    assert len([m for m in block.rest if isinstance(m, torch.nn.Conv2d)]) == 2


# --- decoupled SGD, its groups and the linear schedule ----------------------------------------------


def test_decoupled_sgd_groups_lr_and_decay_as_airbench_does():
    trainer = airbench()
    names = named(trainer)
    rest, bn_biases, stem_bias = trainer.optimizer.param_groups
    kilo = 1024 * (1 + 1 / (1 - 0.85))
    lr, decay = 11.5 * 8 / kilo, 0.0153 * 8 / kilo  # per step at batch 8
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in bn_biases["params"]} == {id(n.bias) for n in norms}
    assert [names[id(p)] for p in stem_bias["params"]] == ["net.stem.bias"]
    assert not {names[id(p)] for p in rest["params"]} & {"net.stem.weight", "net.stem.bias"}
    assert not any(n.weight.requires_grad for n in norms)  # BatchNorm scales stay 1
    assert stem_bias["frozen_after_epochs"] == 3
    for group, scale in ((rest, 1), (bn_biases, 64), (stem_bias, 1)):
        assert float(group["lr"]) == pytest.approx(lr * 0.2 * scale)  # the schedule starts at 0.2
        assert group["weight_decay"] * lr * scale == pytest.approx(decay)  # the same decay step for all


def test_the_linear_schedule_rises_from_start_factor_then_falls_to_end_factor():
    trainer = airbench(epochs=2, wide={**NARROW, "whiten_bias_epochs": 1})  # 5 steps an epoch, 10 in all
    peak = 11.5 * 8 / (1024 * (1 + 1 / 0.15))
    warmup = int(0.23 * 10)  # 2 steps
    expected = [0.2 + 0.8 * t / warmup if t < warmup else 1 - 0.93 * (t - warmup) / (10 - warmup) for t in range(10)]
    stem_lrs = []
    group = trainer.optimizer.param_groups[2]
    original = trainer.scheduler.step

    def step():
        stem_lrs.append(float(group["lr"]))
        original()

    trainer.scheduler.step = step
    assert lrs_per_step(trainer, 2) == pytest.approx([peak * f for f in expected])
    assert stem_lrs[:5] == pytest.approx([peak * f for f in expected[:5]]) and stem_lrs[5:] == [0.0] * 5


# --- Lookahead ----------------------------------------------------------------------------------------


def test_the_lookahead_weights_are_the_ones_evaluated_and_saved():
    trainer = airbench(n_train=48, validate_tta=True)  # 6 steps: the epoch ends between two syncs every 5 steps
    look = trainer.lookahead
    trained = {}
    after_step = look.after_step

    def spy(step: int, epoch_end: bool) -> None:
        if epoch_end:
            trained["weights"] = [w.clone() for w in look.weights]
        after_step(step, epoch_end)

    look.after_step = spy
    result = trainer.train_epoch(1)
    state = trainer.model.state_dict()
    floats = [v for v in state.values() if v.is_floating_point()]
    assert all(torch.equal(a, w) for a, w in zip(look.average, floats, strict=True))  # the model holds the average
    assert any(not torch.equal(a, t) for a, t in zip(look.average, trained["weights"], strict=True))
    # validation scored the averaged weights: a copy of the model with the average gives the same loss
    copy = build_model("cnn", trainer.cfg)
    average_keys = [k for k, v in state.items() if v.is_floating_point()]
    copy.load_state_dict(dict(zip(average_keys, look.average, strict=True)), strict=False)
    loss, acc = loss_and_accuracy(predict(copy, trainer.data.val_x, trainer.settings), trainer.data.val_y)
    assert (result.val_loss, result.val_acc) == pytest.approx((loss, acc))


def test_lookahead_syncs_every_few_steps_with_the_cubic_decay_and_keeps_the_average_last():
    trainer = airbench(epochs=2)  # 5 steps an epoch, 10 in all
    look = trainer.lookahead
    w = look.weights[0]
    for step, epoch_end in ((1, False), (5, True), (10, True)):
        before_average = look.average[0].clone()
        with torch.no_grad():
            w.add_(1.0)
        moved = w.clone()
        look.after_step(step, epoch_end)
        if step == 1:  # no sync: the weights stay as trained
            assert torch.equal(w, moved) and torch.equal(look.average[0], before_average)
            continue
        d = 1.0 if step == 10 else 0.95**5 * (step / 10) ** 3
        torch.testing.assert_close(look.average[0], before_average + (1 - d) * (moved - before_average))
        assert torch.equal(w, look.average[0])


# --- augmentation -------------------------------------------------------------------------------------


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = DeviceData(images, torch.arange(64), torch.zeros(1, 3, 32, 32), torch.zeros(1))
    aug = AugmentParams(hflip=True, alternate_flip=True)
    loader = Loader(data, 64, aug, torch.Generator().manual_seed(1), lambda x: x)

    def by_label(epoch: int) -> torch.Tensor:
        [(x, y)] = list(loader.epoch(number=epoch)[1])
        return x[y.argsort()]

    plain = to_unit_float(images)
    first, second, third = by_label(1), by_label(2), by_label(3)
    flipped = (first != plain).flatten(1).any(1)
    assert 16 < flipped.sum() < 48  # a random half in epoch 1 ...
    assert torch.equal(second, first.flip(3)) and torch.equal(third, first)  # ... the others in epoch 2


def test_reflect_crop_pads_by_reflection():
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = augment(x, AugmentParams(crop_padding=2, crop_reflect=True), torch.Generator().manual_seed(0))
    padded = F.pad(to_unit_float(x), (2, 2, 2, 2), mode="reflect")
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # [N, 3, 5, 5, 32, 32]: every offset
    match = (windows == out[:, :, None, None]).flatten(4).all(4).all(1)
    assert match.any(2).any(1).all()  # each image is one window of its reflect-padded self
    assert (out == 0).float().mean() < 0.01  # no zero borders


# --- test-time augmentation -----------------------------------------------------------------------


def test_flip_shift_tta_averages_the_six_views_with_airbenchs_weights():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    views, weights = tta.views(x, "flip_shift")
    down_right = torch.cat([x[..., 1:2, :], x[..., :-1, :]], 2)  # reflect: row 0 shows row 1
    down_right = torch.cat([down_right[..., 1:2], down_right[..., :-1]], 3)
    up_left = torch.cat([x[..., 1:, :], x[..., -2:-1, :]], 2)
    up_left = torch.cat([up_left[..., 1:], up_left[..., -2:-1]], 3)
    expected = [x, x.flip(3), down_right, down_right.flip(3), up_left, up_left.flip(3)]
    assert all(torch.equal(v, e) for v, e in zip(views, expected, strict=True))
    assert weights == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    model = Classifier(Preprocess([0.0] * 3, [1.0] * 3), net, "flip_shift").eval()
    with torch.no_grad():
        by_hand = sum(w * net(v).softmax(1) for w, v in zip(weights, expected, strict=True)).log()
        torch.testing.assert_close(model(x), by_hand)
        model.train()
        torch.testing.assert_close(model(x), net(x))  # training sees single images


def test_without_validate_tta_each_epochs_validation_scores_one_plain_view():
    trainer = airbench(validate_tta=False)
    model, x, y = trainer.model, trainer.data.val_x, trainer.data.val_y
    with torch.no_grad():
        plain = loss_and_accuracy(model.eval().logits(x), y)
        views = loss_and_accuracy(predict(model, x, trainer.settings), y)
    assert plain[0] != pytest.approx(views[0])  # the six views score differently from one
    assert trainer.validate() == pytest.approx(plain)
    assert model.tta_mode == "flip_shift"  # the saved model, evaluate and serving still average the views
    assert airbench(validate_tta=True).validate() == pytest.approx(views)  # with it on, validation averages them


# --- resume -------------------------------------------------------------------------------------------


def test_a_mid_epoch_resume_with_every_fast_switch_on_is_exact():
    """cnn-airbench94 (whitening with a bias trained 1 epoch, BatchNorm tweaks, decoupled SGD, linear
    schedule, Lookahead, alternating flip, reflect crop, TTA) plus a residual block and Cutout: stopped after
    2 steps of epoch 2 and restored into a fresh trainer, it ends with the same weights and average."""
    setup = dict(
        epochs=3,
        extra_convs=1,
        wide={**NARROW, "residual": True, "whiten_bias_epochs": 1},
        lookahead={"every": 2},
        augment={**AIRBENCH94["augment"], "cutout": 8},
    )
    reference = airbench(**setup)
    for epoch in (1, 2, 3):
        reference.train_epoch(epoch)
    resumed, cursor = stop_and_restore(airbench(**setup), lambda: airbench(**setup))
    assert cursor.steps == 2
    resumed.train_epoch(2, resume=cursor)
    resumed.train_epoch(3)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(reference.lookahead.average, resumed.lookahead.average, strict=True))


# --- off by default ---------------------------------------------------------------------------------


def test_with_the_switches_off_the_seed_recipe_runs_as_before():
    trainer = tiny_trainer("cnn", 16, width=0.25)
    assert trainer.lookahead is None and trainer.loader.first_flips is None
    assert torch.equal(trainer.loader.generator.get_state(), torch.Generator().manual_seed(0).get_state())  # no draw
    (group,) = trainer.optimizer.param_groups  # one group, as before
    assert group["weight_decay"] == PARAMS.cnn.optimizer.weight_decay and "frozen_after_epochs" not in group
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = build_model("cnn", PARAMS.cnn.model_copy(update={"tta": "flip"})).eval()
    with torch.no_grad():
        plain, mirrored = model.logits(torch.cat([x, x.flip(3)])).float().chunk(2)
        assert torch.equal(model(x), ((plain.softmax(1) + mirrored.softmax(1)) / 2).log())  # the old flip TTA

"""What each recipe switch does, on CPU: augmentations, models, lr groups and schedules, label smoothing,
an exact mid-epoch resume under a per-step schedule, and one short training run per recipe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from cifar_pipeline.commands.recipes import merged
from cifar_pipeline.core.config import AugmentParams, load_params
from cifar_pipeline.engine.augment import augment, cutout, random_rotation, rotate
from cifar_pipeline.engine.models import SeedCNN, build_model
from cifar_pipeline.engine.optim import current_lr
from helpers.project import ROOT
from helpers.training import lrs_per_step, stop_and_restore, tiny_trainer

PARAMS = load_params(ROOT / "params.yaml")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cfg(name: str, **update):
    """The repo's params for `name`, with nested sections given as dicts merged over them."""
    return type(PARAMS.model(name)).model_validate(merged(PARAMS.model(name).model_dump(), update))


# --- augmentation ---------------------------------------------------------------------------------


def test_cutout_zeroes_one_square_per_image_clipped_at_the_border():
    x = torch.ones(500, 3, 32, 32)
    out = cutout(x, 8, gen())
    zero = out[:, 0] == 0
    assert torch.equal(zero, (out == 0).all(1))  # all channels together
    rows, cols = zero.any(2), zero.any(1)
    for r, c, z in zip(rows, cols, zero, strict=True):
        assert torch.equal(z, r[:, None] & c[None, :])  # a rectangle ...
        height, width = int(r.sum()), int(c.sum())
        assert 4 <= height <= 8 and 4 <= width <= 8  # ... of side 8, cut by the border at most to half
        for line in (r, c):
            idx = line.nonzero().flatten()
            assert idx[-1] - idx[0] + 1 == len(idx)  # contiguous
    full = (rows.sum(1) == 8) & (cols.sum(1) == 8)
    assert 0.5 < full.float().mean() < 0.75  # whole when the centre is in 4..28 of 0..31 on both axes: 0.61
    assert torch.equal(out[~zero[:, None].expand_as(out)], x[~zero[:, None].expand_as(x)])


def test_rotate_by_90_degrees_is_rot90_and_by_0_is_identity():
    x = torch.rand(4, 3, 32, 32, generator=gen())
    assert torch.allclose(rotate(x, torch.zeros(4)), x, atol=1e-6)
    turned = rotate(x, torch.full((4,), 90.0))
    assert min((turned - torch.rot90(x, k, (2, 3))).abs().max() for k in (1, -1)) < 1e-5


def test_random_rotation_keeps_shape_stays_in_range_and_is_seeded():
    x = torch.rand(64, 3, 32, 32, generator=gen(1))
    a, b = random_rotation(x, 15, gen(3)), random_rotation(x, 15, gen(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, random_rotation(x, 15, gen(4)))
    assert a.min() >= 0 and a.max() <= 1
    centre = x[:, :, 15:17, 15:17]  # the centre moves by under a pixel at 15 degrees
    assert (a[:, :, 15:17, 15:17] - centre).abs().mean() < (a - x).abs().mean()


def test_rotation_and_cutout_draw_from_the_trainers_generator():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=gen())
    both = AugmentParams(crop_padding=4, hflip=True, rotation=10, cutout=8)
    g1, g2 = gen(7), gen(7)
    assert torch.equal(augment(images, both, g1), augment(images, both, g2))
    assert torch.equal(g1.get_state(), g2.get_state())
    plain = gen(7)
    augment(images, AugmentParams(crop_padding=4, hflip=True), plain)
    assert not torch.equal(g1.get_state(), plain.get_state())  # the new draws advance it further


# --- models ---------------------------------------------------------------------------------------


def test_default_cnn_is_unchanged_and_width_and_depth_grow_it():
    seed = SeedCNN()
    shapes = [tuple(p.shape) for p in seed.parameters()]
    assert shapes[0] == (64, 3, 3, 3) and shapes[-2] == (10, 512) and len(shapes) == 5 * 4 + 4
    wide = SeedCNN(width=2.0, extra_convs=1)
    convs = [m for m in wide if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 128, 256, 256, 256, 512, 512]
    assert wide(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def layer1_input_size(model: torch.nn.Module, layer1: torch.nn.Module) -> int:
    seen = []
    layer1.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].shape[-1]))
    model.eval()(torch.rand(2, 3, 32, 32))
    return seen[0]


@pytest.mark.parametrize("arch", ["pipeline", "torchvision"])
@pytest.mark.parametrize("stem, size", [("cifar", 32), ("imagenet", 8)])
def test_the_cifar_stem_keeps_32x32_into_layer1(arch, stem, size):
    model = build_model("resnet34", cfg("resnet34", arch=arch, stem=stem))
    net = model.net
    layer1 = net.stages[0] if arch == "pipeline" else net.layer1
    assert layer1_input_size(model, layer1) == size
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_resnet34_is_the_same_architecture():
    def shapes(model):
        return sorted(tuple(p.shape) for p in model.parameters())

    for stem in ("cifar", "imagenet"):
        ours, theirs = (
            build_model("resnet34", cfg("resnet34", arch=arch, stem=stem)) for arch in ("pipeline", "torchvision")
        )
        assert shapes(ours) == shapes(theirs)


# --- optimizer, lr groups and schedules ------------------------------------------------------------


def test_backbone_lr_gets_its_own_group_and_lr_scaling_applies_to_both():
    trainer = make_trainer(
        "resnet18",
        n_train=16,
        trainable=["layer3", "layer4", "fc"],
        backbone_lr=1e-4,
        weights="none",
        image_size=32,
        optimizer={"lr": 1e-3, "reference_batch_size": 4},
    )  # batch 8: lrs doubled
    head, backbone = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert {names[id(p)] for p in head["params"]} == {"net.fc.weight", "net.fc.bias"}
    assert {names[id(p)].split(".")[1] for p in backbone["params"]} == {"layer3", "layer4"}
    assert (float(head["lr"]), float(backbone["lr"])) == pytest.approx((2e-3, 2e-4))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_epoch(1)
    moved = {n.split(".")[1] for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert moved == {"layer3", "layer4", "fc"}


def make_trainer(name: str, n_train: int, **section):
    """test_engine's tiny CPU trainer (batch 8) with `section` merged into the model's params and validated
    (the CNN tests use width 0.25: a quarter of the channels, the same code paths, 1/16 of the compute)."""
    full = cfg(name, **{"batch_size": 8, **section})
    return tiny_trainer(name, n_train, **{k: getattr(full, k) for k in section})


def test_onecycle_lr_follows_the_one_cycle_per_step():
    sched = {"name": "onecycle", "pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0}
    trainer = make_trainer(
        "cnn",
        width=0.25,
        n_train=40,
        epochs=2,
        scheduler=sched,  # 5 steps an epoch, 10 in all
        optimizer={"name": "sgd", "lr": 0.4},
    )
    peak, start = 0.4, 0.04
    end = start / 100
    up = 0.25 * 10 - 1  # steps to the peak (torch counts the phase end as pct_start * total - 1)

    def expected(t):
        if t <= up:
            return start + (peak - start) * (1 - math.cos(math.pi * t / up)) / 2
        return end + (peak - end) * (1 + math.cos(math.pi * (t - up) / (9 - up))) / 2

    assert lrs_per_step(trainer, 2) == pytest.approx([expected(t) for t in range(10)], rel=1e-6)


def test_warmup_cosine_rises_linearly_then_falls_to_zero():
    trainer = make_trainer(
        "cnn", width=0.25, n_train=40, epochs=2, scheduler={"name": "warmup_cosine", "warmup_epochs": 0.8}
    )
    lr = PARAMS.cnn.optimizer.lr  # 4 warm-up steps of 10
    expected = [lr * (t + 1) / 4 for t in range(4)] + [
        lr * (1 + math.cos(math.pi * (t - 4) / 6)) / 2 for t in range(4, 10)
    ]
    assert lrs_per_step(trainer, 2) == pytest.approx(expected, rel=1e-6)


def test_epoch_schedulers_still_step_once_per_epoch():
    trainer = make_trainer(
        "cnn", width=0.25, n_train=40, epochs=3, scheduler={"name": "step", "step_size": 1, "gamma": 0.5}
    )
    assert lrs_per_step(trainer, 2) == pytest.approx([1e-3] * 5 + [5e-4] * 5)


def test_label_smoothing_is_the_smoothed_cross_entropy_of_the_training_loss():
    trainer = make_trainer("cnn", width=0.25, n_train=16, label_smoothing=0.2, dropout=0.0)
    x, y = torch.rand(8, 3, 32, 32, generator=gen()), torch.arange(8)
    trainer.model.eval()
    with torch.no_grad():
        trainer.model.net[-1].weight.mul_(300)  # confident logits, where smoothing matters
    logits, loss = trainer.step._forward(x, y)
    logp = logits.log_softmax(1)
    by_hand = (0.8 * -logp[torch.arange(8), y] + 0.2 * -logp.mean(1)).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert abs(loss.item() - F.cross_entropy(logits, y).item()) > 0.01


# --- resume -----------------------------------------------------------------------------------------


def test_a_mid_epoch_resume_under_a_per_step_schedule_is_exact():
    """Stop after 2 steps of epoch 2, restore a fresh trainer from the saved state (as training.py does
    from the resume checkpoint), finish: weights, optimizer and schedule match an uninterrupted run."""
    setup = dict(
        n_train=32,
        epochs=3,
        width=0.25,
        label_smoothing=0.1,
        optimizer={"name": "sgd", "lr": 0.05, "nesterov": True},
        scheduler={"name": "onecycle"},
        augment={"crop_padding": 4, "hflip": True, "rotation": 10, "cutout": 8},
    )

    reference = make_trainer("cnn", **setup)
    lrs = lrs_per_step(reference, 3)

    resumed, cursor = stop_and_restore(make_trainer("cnn", **setup), lambda: make_trainer("cnn", **setup))
    assert cursor.steps == 2 and resumed.scheduler.last_epoch == 4 + 2
    result = resumed.train_epoch(2, resume=cursor)
    assert result.lr == pytest.approx(lrs[4])  # the lr at the start of epoch 2, not at the stop
    resumed.train_epoch(3)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.scheduler.last_epoch == reference.scheduler.last_epoch == 12
    assert current_lr(resumed.optimizer) == current_lr(reference.optimizer)


# --- every recipe trains ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipe",
    [  # ResNet-34 at 32x32 is minutes of CPU on a busy machine: slow suite
        pytest.param(p.stem, marks=pytest.mark.slow) if p.stem.startswith("resnet34") else p.stem
        for p in sorted((ROOT / "recipes").glob("*.yaml"))
    ],
)
def test_every_recipe_trains_a_short_epoch_on_the_cpu(recipe):
    changes = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    ((name, section),) = changes.items()
    section = {**section, "epochs": 3, "batch_size": 8}
    if section.get("arch") == "wide":  # the same layers, narrowed to a CPU test's size
        section["wide"] = {**section["wide"], "widths": [8, 16, 16]}
    if name == "resnet18":
        section.update(weights="none", image_size=32)
    trainer = make_trainer(name, n_train=16, **section)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.train_epoch(1)
    assert math.isfinite(result.train_loss) and 0 <= result.val_acc <= 1
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters(), strict=True))

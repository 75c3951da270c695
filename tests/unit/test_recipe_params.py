"""The recipe switches: off in params.yaml, each validated with a clear message; the recipes themselves."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from cifar_pipeline.commands.recipes import hydra, load
from cifar_pipeline.core.config import load_params, parse_params
from cifar_pipeline.core.errors import ParamsError
from helpers.project import ROOT, mutated

RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml"))


def test_every_switch_is_off_in_params_yaml():
    p = load_params(ROOT / "params.yaml")
    for name in ("cnn", "resnet34", "resnet18"):
        cfg = p.model(name)
        assert cfg.label_smoothing == 0 and cfg.lr_scale() == 1.0
        assert not cfg.optimizer.nesterov and cfg.optimizer.reference_batch_size is None
        assert cfg.augment.rotation == 0 and cfg.augment.cutout == 0
        assert cfg.tta == "none"
        assert cfg.scheduler.name in ("none", "step")
    assert (p.cnn.width, p.cnn.extra_convs, p.cnn.arch) == (1.0, 0, "seed")
    for name in ("cnn", "resnet34", "resnet18"):
        cfg = p.model(name)
        assert (cfg.batchnorm.momentum, cfg.batchnorm.eps, cfg.batchnorm.weight) == (0.1, 1e-5, True)
        assert cfg.lookahead.every == 0 and not cfg.optimizer.decoupled and cfg.optimizer.bias_lr_scale == 1
        assert not cfg.augment.alternate_flip and not cfg.augment.crop_reflect
    assert (p.resnet34.arch, p.resnet34.stem) == ("pipeline", "imagenet")
    assert p.resnet18.backbone_lr is None


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("cnn.label_smoothing", 1.0, "cnn.label_smoothing must be < 1, got 1.0"),
        ("cnn.label_smoothing", -0.1, "cnn.label_smoothing must be >= 0, got -0.1"),
        ("cnn.augment.cutout", 33, "cnn.augment.cutout must be <= 32, got 33"),
        ("cnn.augment.cutout", -1, "cnn.augment.cutout must be >= 0, got -1"),
        ("cnn.augment.rotation", 181, "cnn.augment.rotation must be <= 180, got 181"),
        ("cnn.width", 0, "cnn.width must be > 0, got 0"),
        ("resnet34.tta", "rotate", "resnet34.tta must be one of 'none', 'flip' or 'flip_shift', got 'rotate'"),
        ("cnn.extra_convs", 5, "cnn.extra_convs must be <= 4, got 5"),
        ("cnn.arch", "vgg", "cnn.arch must be one of 'seed' or 'wide', got 'vgg'"),
        ("cnn.wide", {"widths": [64, 256]}, "cnn.wide.widths: List should have at least 3 items"),
        ("cnn.batchnorm", {"momentum": 0}, "cnn.batchnorm.momentum must be > 0, got 0"),
        ("cnn.lookahead", {"every": 5, "decay": 1.0}, "cnn.lookahead.decay must be < 1, got 1.0"),
        (
            "cnn.optimizer",
            {"name": "adam", "lr": 1.0, "decoupled": True},
            "decoupled = true needs name = sgd and reference_batch_size = null",
        ),
        (
            "cnn.augment",
            {"hflip": False, "alternate_flip": True},
            "alternate_flip = true needs hflip = true",
        ),
        (
            "cnn.wide",
            {"whiten": True, "whiten_bias_epochs": 3},  # params.yaml's cnn.scheduler is step
            "wide.whiten_bias_epochs needs a scheduler of name none, warmup_cosine or linear (got step)",
        ),
        ("resnet34.stem", "tiny", "resnet34.stem must be one of 'imagenet' or 'cifar', got 'tiny'"),
        ("resnet34.arch", "timm", "resnet34.arch must be one of 'pipeline' or 'torchvision', got 'timm'"),
        ("resnet18.backbone_lr", 0, "resnet18.backbone_lr must be > 0, got 0"),
        ("cnn.optimizer.reference_batch_size", 0, "cnn.optimizer.reference_batch_size must be > 0, got 0"),
        ("cnn.scheduler", {"name": "onecycle", "pct_start": 1.0}, "cnn.scheduler.pct_start must be < 1, got 1.0"),
        ("cnn.scheduler", {"name": "onecycle", "div_factor": 0.5}, "cnn.scheduler.div_factor must be >= 1, got 0.5"),
        (
            "cnn.scheduler",
            {"name": "warmup_cosine", "warmup_epochs": -1},
            "cnn.scheduler.warmup_epochs must be >= 0, got -1",
        ),
        (
            "cnn.scheduler",
            {"name": "warmup_cosine", "warmup_epochs": 30},
            "cnn: scheduler.warmup_epochs = 30.0 must be below epochs = 30",
        ),
        (
            "cnn.optimizer",
            {"name": "adam", "lr": 0.001, "nesterov": True},
            "cnn.optimizer: nesterov = true needs name = sgd and momentum > 0 (got name = adam",
        ),
        (
            "cnn.optimizer",
            {"name": "sgd", "lr": 0.1, "momentum": 0, "nesterov": True},
            "nesterov = true needs name = sgd and momentum > 0 (got name = sgd, momentum = 0.0)",
        ),
        (
            "resnet18.optimizer",
            {"name": "sgd", "lr": 0.1, "bias_lr_scale": 64.0},
            None,  # valid alone; with a backbone lr it is not (below)
        ),
        ("resnet18.trainable", ["fc"], None),  # valid alone; with a backbone lr it is not (below)
    ],
)
def test_bad_switches_are_rejected_with_a_clear_message(path, value, message):
    if message is None:
        parse_params(mutated(path, value))
        return
    with pytest.raises(ParamsError) as error:
        parse_params(mutated(path, value))
    assert message in str(error.value)


def test_a_backbone_lr_needs_a_trainable_backbone_layer():
    params = mutated("resnet18.trainable", ["fc"])
    params["resnet18"]["backbone_lr"] = 1e-4
    with pytest.raises(ParamsError, match=r"backbone_lr = 0.0001 is set but trainable = \['fc'\] has no backbone"):
        parse_params(params)


def test_lr_scale_is_linear_in_the_batch_size():
    params = mutated("cnn.optimizer", {"name": "sgd", "lr": 0.1, "reference_batch_size": 128})
    params["cnn"]["batch_size"] = 512
    assert parse_params(params).cnn.lr_scale() == 4.0


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_is_valid_and_changes_one_model(name):
    recipe = load(name, ROOT)
    assert recipe.model in name
    assert recipe.command()[:6] == ["dvc", "exp", "run", "--temp", "-n", name]
    assert recipe.command()[-1] == f"evaluate@{recipe.model}"


def test_the_required_recipes_exist():
    assert {"cnn-fast", "cnn-best", "resnet34-cifar", "resnet18-unfreeze"} <= set(RECIPES)


def test_hydra_values_round_trip_through_dvc_syntax():
    assert [hydra(v) for v in (True, None, 0.0005, 512, "none", ["layer3", "fc"])] == [
        "true",
        "null",
        "0.0005",
        "512",
        "none",
        "[layer3,fc]",
    ]


def test_a_recipe_that_breaks_the_schema_is_one_error_line(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "bad.yaml").write_text(yaml.safe_dump({"cnn": {"augment": {"cutuot": 8}}}))
    (tmp_path / "recipes" / "two.yaml").write_text(yaml.safe_dump({"cnn": {"epochs": 1}, "resnet34": {"epochs": 1}}))
    for name, message in [
        ("bad", "unknown key `cnn.augment.cutuot` (did you mean `cutout`?)"),
        ("two", "must change exactly one of the sections"),
        ("missing", "no recipe 'missing': recipes/missing.yaml not found; recipes here: bad, two"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "cifar_pipeline.commands.recipes", name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_a_backbone_lr_cant_go_with_airbenchs_param_groups():
    params = mutated("resnet18.optimizer", {"name": "sgd", "lr": 0.1, "bias_lr_scale": 64.0})
    params["resnet18"]["backbone_lr"] = 1e-4
    with pytest.raises(ParamsError, match=r"backbone_lr can.t go with optimizer\.decoupled or optimizer\.bias_lr"):
        parse_params(params)

"""The three classifiers: output shapes, layer structure, the fine-tune's frozen layers and weight loading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from cifar_pipeline.core.config import load_params
from cifar_pipeline.core.errors import WeightsError
from cifar_pipeline.engine.models import (
    ResidualUnit,
    SeedCNN,
    build_model,
    count_parameters,
    imagenet_state_dict,
    model_from_params,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def params():
    """The repo's params.yaml, with resnet18 made cheap: small images, no ImageNet download."""
    p = load_params(ROOT / "params.yaml")
    return p.model_copy(update={"resnet18": p.resnet18.model_copy(update={"image_size": 64, "weights": "none"})})


@pytest.fixture
def random_resnet18_state() -> dict[str, torch.Tensor]:
    """torchvision resnet18's keys and shapes, with values no fresh model will have."""
    torch.manual_seed(0)
    state = resnet18(weights=None).state_dict()
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


def r18_cfg(params, **update):
    return params.resnet18.model_copy(update=update)


@pytest.mark.parametrize("name", ["cnn", "resnet34", "resnet18"])
def test_output_is_batch_by_ten_logits(params, name):
    model = model_from_params(params, name).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def describe(m: nn.Module) -> tuple:
    if isinstance(m, nn.Conv2d):
        return ("conv", m.in_channels, m.out_channels, m.kernel_size, m.padding)
    if isinstance(m, nn.BatchNorm2d):
        return ("bn", m.num_features)
    if isinstance(m, nn.Linear):
        return ("linear", m.in_features, m.out_features)
    if isinstance(m, nn.Dropout):
        return ("dropout", m.p)
    if isinstance(m, nn.MaxPool2d):
        return ("pool", m.kernel_size)
    return (type(m).__name__,)


def test_seed_cnn_matches_the_seed_spec():
    def block(cin, cout):
        return [("conv", cin, cout, (3, 3), (1, 1)), ("bn", cout), ("ReLU",)]

    expected = [
        *block(3, 64),
        *block(64, 64),
        ("pool", 2),
        *block(64, 128),
        *block(128, 128),
        ("pool", 2),
        *block(128, 256),
        ("pool", 2),
        ("Flatten",),
        ("linear", 256 * 4 * 4, 512),
        ("ReLU",),
        ("dropout", 0.5),
        ("linear", 512, 10),
    ]
    assert [describe(m) for m in SeedCNN()] == expected


def test_resnet34_stages_and_skips(params):
    net = model_from_params(params, "resnet34").net
    stem = [describe(m) for m in net.stem]
    assert stem[0] == ("conv", 3, 64, (7, 7), (3, 3)) and net.stem[0].stride == (2, 2)
    assert isinstance(net.stem[3], nn.MaxPool2d) and (net.stem[3].kernel_size, net.stem[3].stride) == (3, 2)

    assert [len(s) for s in net.stages] == [3, 4, 6, 3]
    for i, (stage, width) in enumerate(zip(net.stages, [64, 128, 256, 512], strict=True)):
        for u, unit in enumerate(stage):
            assert isinstance(unit, ResidualUnit)
            assert [unit.main[0].out_channels, unit.main[3].out_channels] == [width, width]
            if i > 0 and u == 0:  # first unit of stages 2-4: stride 2 with a projected skip
                assert unit.main[0].stride == (2, 2)
                conv, bn = unit.skip
                assert describe(conv) == ("conv", width // 2, width, (1, 1), (0, 0)) and conv.stride == (2, 2)
                assert describe(bn) == ("bn", width)
            else:
                assert unit.main[0].stride == (1, 1)
                assert isinstance(unit.skip, nn.Identity)
    assert describe(net.head[-1]) == ("linear", 512, 10)


def test_identity_unit_passes_input_through_when_main_branch_is_zero():
    unit = ResidualUnit(8, 8).eval()
    nn.init.zeros_(unit.main[4].weight)  # last BN scales the main branch to 0
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(unit(x), torch.relu(x))


def test_downsampling_unit_halves_resolution():
    assert ResidualUnit(8, 16, stride=2)(torch.randn(2, 8, 6, 6)).shape == (2, 16, 3, 3)


def test_resnet18_trains_only_layer4_and_fc(params):
    net = model_from_params(params, "resnet18").net
    assert describe(net.fc) == ("linear", 512, 10)
    for name, p in net.named_parameters():
        assert p.requires_grad == name.startswith(("layer4.", "fc.")), name


def test_count_parameters_follows_requires_grad(params):
    model = model_from_params(params, "resnet18")
    tail = [*model.net.layer4.parameters(), *model.net.fc.parameters()]
    total = sum(p.numel() for p in model.net.parameters())
    assert count_parameters(model) == (sum(p.numel() for p in tail), total)

    model.net.fc.weight.requires_grad = False
    assert count_parameters(model) == (sum(p.numel() for p in tail) - 512 * 10, total)


def test_count_parameters_of_seed_cnn():
    # conv: 9*cin*cout + cout, BN: 2*c, linear: in*out + out
    total = (
        9 * 3 * 64
        + 64
        + 9 * 64 * 64
        + 64
        + 9 * 64 * 128
        + 128
        + 9 * 128 * 128
        + 128
        + 9 * 128 * 256
        + 256
        + 2 * (64 + 64 + 128 + 128 + 256)
        + 4096 * 512
        + 512
        + 512 * 10
        + 10
    )
    assert count_parameters(SeedCNN()) == (total, total)


def test_weights_path_is_loaded(params, tmp_path, random_resnet18_state):
    path = tmp_path / "r18.pth"
    torch.save(random_resnet18_state, path)
    model = build_model("resnet18", r18_cfg(params, weights_path=str(path), weights="IMAGENET1K_V1"))
    for key, value in model.net.layer1.state_dict().items():
        assert torch.equal(value, random_resnet18_state[f"layer1.{key}"]), key


def test_torchvision_weights_come_from_torch_home_cache(params, tmp_path, monkeypatch, random_resnet18_state):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(random_resnet18_state, cache / Path(ResNet18_Weights.IMAGENET1K_V1.url).name)

    state = imagenet_state_dict(r18_cfg(params, weights="IMAGENET1K_V1"))
    assert state.keys() == random_resnet18_state.keys()
    assert all(torch.equal(state[k], v) for k, v in random_resnet18_state.items())


def test_no_weights_means_random_init(params):
    assert imagenet_state_dict(r18_cfg(params, weights="none")) is None


def test_missing_weights_file(params, tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(WeightsError, match=re.escape(str(path)) + ".*does not exist"):
        imagenet_state_dict(r18_cfg(params, weights_path=str(path)))


def test_garbage_weights_file(params, tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(WeightsError, match=re.escape(str(path)) + ".*not a loadable state dict"):
        imagenet_state_dict(r18_cfg(params, weights_path=str(path)))


@pytest.mark.parametrize("broken", ["wrong_keys", "wrong_shape"])
def test_state_dict_that_does_not_fit_resnet18(params, tmp_path, random_resnet18_state, broken):
    state = dict(random_resnet18_state)
    if broken == "wrong_keys":
        state["extra.weight"] = state.pop("layer1.0.conv1.weight")
    else:
        state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="do not fit torchvision's resnet18"):
        build_model("resnet18", r18_cfg(params, weights_path=str(path)))


def test_flip_tta_averages_an_image_and_its_mirror_at_inference_only(params):
    seed_cfg = params.cnn.model_copy(update={"dropout": 0.0})
    plain = build_model("cnn", seed_cfg)
    tta = build_model("cnn", seed_cfg.model_copy(update={"tta": "flip"}))
    tta.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 32, 32)
    plain.eval(), tta.eval()
    with torch.no_grad():
        by_hand = ((plain(x).softmax(1) + plain(x.flip(3)).softmax(1)) / 2).log()
        torch.testing.assert_close(tta(x), by_hand)
        torch.testing.assert_close(tta(x.flip(3)), tta(x))  # a mirrored image gets the same answer
        plain.train(), tta.train()
        torch.testing.assert_close(tta(x), plain(x))  # training sees single images, as without TTA

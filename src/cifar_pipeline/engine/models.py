"""The three classifiers. Each takes float images in [0, 1] and normalizes (and resizes) itself,
so a saved model is complete: evaluation needs no preprocessing params."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cifar_pipeline.core.config import CnnParams, ModelParams, Params, Resnet18Params, Resnet34Params
from cifar_pipeline.core.errors import WeightsError
from cifar_pipeline.core.fast_params import BatchNormParams
from cifar_pipeline.engine import tta
from cifar_pipeline.engine.wide_net import WideCNN

NUM_CLASSES = 10


class Preprocess(nn.Module):
    def __init__(self, mean: list[float], std: list[float], size: int | None = None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x


class Classifier(nn.Module):
    """preprocess -> net. With a tta mode (engine/tta.py), inference (eval mode) averages the class
    probabilities of each image's views and returns their log, which works as logits; training is unchanged."""

    def __init__(self, preprocess: Preprocess, net: nn.Module, tta_mode: str = "none"):
        super().__init__()
        self.preprocess = preprocess
        self.net = net
        self.tta_mode = tta_mode

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))

    @contextmanager
    def plain_view(self, on: bool = True) -> Iterator[None]:
        """While `on`, inference scores each image as it is, without the tta views."""
        mode = self.tta_mode
        self.tta_mode = "none" if on else mode
        try:
            yield
        finally:
            self.tta_mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.tta_mode == "none":
            return self.logits(x)
        return tta.averaged(self.logits, x, self.tta_mode)


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def conv_block(cin: int, cout: int, convs: int) -> list[nn.Module]:
    """`convs` conv-BN-ReLU layers (the first changes the width), then a 2x2 max-pool."""
    layers = conv_bn_relu(cin, cout)
    for _ in range(convs - 1):
        layers += conv_bn_relu(cout, cout)
    return [*layers, nn.MaxPool2d(2)]


class SeedCNN(nn.Sequential):
    """The seed notebook's CNN, layer for layer at the defaults; `width` multiplies every layer's channels
    and hidden units, `extra_convs` adds that many conv-BN-ReLU layers to each of the three blocks."""

    def __init__(self, dropout: float = 0.5, width: float = 1.0, extra_convs: int = 0):
        c1, c2, c3, hidden = (max(1, round(c * width)) for c in (64, 128, 256, 512))
        super().__init__(
            *conv_block(3, c1, 2 + extra_convs),
            *conv_block(c1, c2, 2 + extra_convs),
            *conv_block(c2, c3, 1 + extra_convs),
            nn.Flatten(),
            nn.Linear(c3 * 4 * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, NUM_CLASSES),
        )


class ResidualUnit(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a skip (identity, or conv1x1+BN when downsampling), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.main(x) + self.skip(x))


def cifar_stem_conv() -> nn.Conv2d:
    """3x3 stride-1 conv: at 32x32 input, layer1 sees 32x32 (the ImageNet stem gives it 8x8)."""
    return nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)


class ResNet34(nn.Module):
    UNITS = (3, 4, 6, 3)
    WIDTHS = (64, 128, 256, 512)

    def __init__(self, stem: str = "imagenet"):
        super().__init__()
        if stem == "cifar":
            self.stem = nn.Sequential(cifar_stem_conv(), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages, cin = [], 64
        for i, (units, width) in enumerate(zip(self.UNITS, self.WIDTHS, strict=True)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    *(ResidualUnit(cin if u == 0 else width, width, stride if u == 0 else 1) for u in range(units))
                )
            )
            cin = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def torchvision_resnet34(stem: str) -> nn.Module:
    """torchvision's resnet34 with a 10-class head; the CIFAR stem swaps conv1 and drops the max-pool."""
    from torchvision.models import resnet34  # torchvision only where it builds a model: it imports torch._dynamo

    net = resnet34(weights=None, num_classes=NUM_CLASSES)
    if stem == "cifar":
        net.conv1 = cifar_stem_conv()
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits convs
        net.maxpool = nn.Identity()
    return net


def check_weights_path(cfg: Resnet18Params) -> Path:
    """cfg.weights_path as a Path, if it names a readable file (checked before any heavy work)."""
    path = Path(cfg.weights_path)
    fix = "point it at a torchvision resnet18 state dict (.pth)"
    if path.is_dir():
        raise WeightsError(f"resnet18.weights_path = {cfg.weights_path} is a directory, not a file; {fix}")
    if not path.is_file():
        raise WeightsError(f"resnet18.weights_path = {cfg.weights_path} does not exist; {fix}")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"resnet18.weights_path = {cfg.weights_path} is not readable; make it readable or {fix}")
    return path


def imagenet_state_dict(cfg: Resnet18Params) -> dict[str, torch.Tensor] | None:
    """ImageNet weights from cfg.weights_path, else torchvision's weights API (cache, then download)."""
    if cfg.weights_path:
        path = check_weights_path(cfg)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a bad file
            raise WeightsError(f"resnet18.weights_path = {path} is not a loadable state dict ({exc})") from None
        if not isinstance(state, dict):
            raise WeightsError(f"resnet18.weights_path = {path} holds a {type(state).__name__}, not a state dict")
        return state
    if cfg.weights == "none":
        return None
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights[cfg.weights]
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, hash mismatch, OSError: all mean "not available"
        cache = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
        raise WeightsError(
            f"ImageNet weights {cfg.weights} could not be loaded ({type(exc).__name__}: {exc}).\n"
            f"Offline? Put {Path(weights.url).name} into {cache} (or set $TORCH_HOME), "
            "or set resnet18.weights_path to a local copy, "
            "or set resnet18.weights: none to train from random initialisation."
        ) from None


def key_mismatch(net: nn.Module, state_dict: dict, shown: int = 3) -> str:
    """A short account of how state_dict differs from net's (torch's own lists every key)."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [k for k in expected if k in state_dict and getattr(state_dict[k], "shape", None) != expected[k].shape]
    parts = [
        f"{len(keys)} {what} (e.g. {', '.join(keys[:shown])})"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("keys of another shape", reshaped),
        )
        if keys
    ]
    return "; ".join(parts) or "the values are not tensors"


def finetune_resnet18(cfg: Resnet18Params, state_dict: dict[str, torch.Tensor] | None) -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if state_dict is not None:
        try:
            net.load_state_dict(state_dict)
        except RuntimeError:
            raise WeightsError(
                "the resnet18 weights do not fit torchvision's resnet18: "
                f"{key_mismatch(net, state_dict)}. "
                "Use the state dict of torchvision.models.resnet18 (resnet18-f37072fd.pth)"
            ) from None
    net.fc = nn.Linear(net.fc.in_features, NUM_CLASSES)
    trainable = tuple(cfg.trainable)
    for name, param in net.named_parameters():
        param.requires_grad = name.split(".")[0] in trainable
    return net


def build_model(name: str, cfg: ModelParams, *, pretrained: bool = True) -> Classifier:
    """Build one of the three models. pretrained=False skips the ImageNet load (for restoring checkpoints)."""
    size = None
    if name == "cnn":
        assert isinstance(cfg, CnnParams)
        if cfg.arch == "wide":
            net: nn.Module = WideCNN(cfg.wide, cfg.extra_convs)
        else:
            net = SeedCNN(cfg.dropout, cfg.width, cfg.extra_convs)
    elif name == "resnet34":
        assert isinstance(cfg, Resnet34Params)
        net = ResNet34(cfg.stem) if cfg.arch == "pipeline" else torchvision_resnet34(cfg.stem)
    elif name == "resnet18":
        assert isinstance(cfg, Resnet18Params)
        net = finetune_resnet18(cfg, imagenet_state_dict(cfg) if pretrained else None)
        size = cfg.image_size
    else:
        raise ValueError(f"unknown model {name!r}")
    if cfg.batchnorm != BatchNormParams():
        tune_batchnorm(net, cfg.batchnorm)
    return Classifier(Preprocess(cfg.normalize.mean, cfg.normalize.std, size), net, cfg.tta)


def tune_batchnorm(net: nn.Module, cfg: BatchNormParams) -> None:
    """Set every BatchNorm layer's momentum and eps; with weight false its scale stays 1 (frozen)."""
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum, m.eps = cfg.momentum, cfg.eps
            if not cfg.weight:
                m.weight.requires_grad_(False)


def model_from_params(params: Params, name: str, *, pretrained: bool = True) -> Classifier:
    return build_model(name, params.model(name), pretrained=pretrained)


def split_head(model: nn.Module, head: str = "net.fc.") -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The trainable parameters as (backbone, head): head is the fine-tune's new classifier `fc`."""
    backbone, head_params = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head_params if name.startswith(head) else backbone).append(param)
    return backbone, head_params


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

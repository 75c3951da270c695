"""The wide shallow CNN of airbench (Jordan 2024): a 2x2 stem (frozen patch whitening, or trained), then
three blocks of conv-BN-GELU with max-pooling, a global max-pool and a linear head with scaled logits."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from cifar_pipeline.core.fast_params import WideParams
from cifar_pipeline.engine.whitening import KERNEL, WIDTH, WhiteningStem

NUM_CLASSES = 10
LOGIT_SCALE = 1 / 9  # airbench's: small initial logits suit its lr and label smoothing


def conv(cin: int, cout: int) -> nn.Conv2d:
    """3x3 'same' conv without bias; its first cin filters start as the identity (dirac), as airbench's do."""
    layer = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(layer.weight[: min(cin, cout)])
    return layer


class Block(nn.Module):
    """conv-maxpool-BN-GELU, then `depth` conv-BN(-GELU) layers; with residual the first layer's output is
    added before the last GELU."""

    def __init__(self, cin: int, cout: int, depth: int, residual: bool):
        super().__init__()
        self.first = nn.Sequential(conv(cin, cout), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.GELU())
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [conv(cout, cout), nn.BatchNorm2d(cout), nn.GELU()]
        self.rest = nn.Sequential(*(layers[:-1] if residual else layers))
        self.residual = residual
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        return self.act(self.rest(x) + x) if self.residual else self.rest(x)


class WideCNN(nn.Module):
    def __init__(self, cfg: WideParams, extra_convs: int = 0):
        super().__init__()
        self.stem = WhiteningStem() if cfg.whiten else nn.Conv2d(3, WIDTH, KERNEL, padding=0, bias=True)
        if cfg.whiten and not cfg.whiten_bias_epochs:
            self.stem.bias.requires_grad_(False)
        widths = [WIDTH, *cfg.widths]
        self.blocks = nn.Sequential(
            nn.GELU(),
            *(Block(cin, cout, 1 + extra_convs, cfg.residual) for cin, cout in itertools.pairwise(widths)),
        )
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[-1], NUM_CLASSES, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x))) * LOGIT_SCALE

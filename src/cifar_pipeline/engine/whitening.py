"""A frozen patch-whitening first layer (airbench): a 2x2 conv whose filters are the eigenvectors of the
training images' 2x2-patch covariance, scaled to unit variance, and their negatives (so a GELU after it
keeps both signs). Its weights are computed from the data once, before training, and never trained."""

from __future__ import annotations

import torch
from torch import nn

from cifar_pipeline.engine.augment import to_unit_float

KERNEL = 2
WIDTH = 2 * 3 * KERNEL**2  # 24 channels: 12 eigenvectors and their negatives
FIT_IMAGES = 5000
EPS = 5e-4  # added to the eigenvalues: tempers the smallest directions


class WhiteningStem(nn.Conv2d):
    """3 -> 24 channels, 2x2, no padding. The weight never trains; the bias may (its own param group)."""

    def __init__(self):
        super().__init__(3, WIDTH, KERNEL, padding=0, bias=True)
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.bias)


def patches(x: torch.Tensor) -> torch.Tensor:
    """Every 2x2 patch of every image, flattened: [N * 31 * 31, 12]."""
    c = x.shape[1]
    return x.unfold(2, KERNEL, 1).unfold(3, KERNEL, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * KERNEL**2)


def whitening_weights(x: torch.Tensor) -> torch.Tensor:
    """The stem's weights for normalized images x [N, 3, H, W]: [24, 3, 2, 2], largest variance first."""
    flat = patches(x.float())
    covariance = flat.T @ flat / flat.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    scaled = (eigenvectors / torch.sqrt(eigenvalues + EPS)).T.flip(0)  # rows: directions, largest first
    filters = scaled.reshape(-1, 3, KERNEL, KERNEL)
    return torch.cat([filters, -filters])


@torch.no_grad()
def fit_whitening(model: nn.Module, train_images: torch.Tensor) -> None:
    """Set every WhiteningStem of `model` (a Classifier: preprocess, net) from the first FIT_IMAGES
    training images (uint8 [N, 3, H, W]); a model without one is left as it is."""
    stems = [m for m in model.modules() if isinstance(m, WhiteningStem)]
    if stems:
        weights = whitening_weights(model.preprocess(to_unit_float(train_images[:FIT_IMAGES])))
        for stem in stems:
            stem.weight.copy_(weights)

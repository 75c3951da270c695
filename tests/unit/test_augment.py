"""Batched augmentation: ranges, exact crops, uniform offsets, flip rate, colour jitter vs torchvision."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import ColorJitter

from cifar_pipeline.core.config import AugmentParams
from cifar_pipeline.engine.augment import augment, color_jitter, random_crop, random_hflip

FULL = AugmentParams(crop_padding=4, hflip=True, brightness=0.2, contrast=0.2)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen(seed))


def test_output_is_unit_float32():
    images = uint8_images(64)
    out = augment(images, FULL, gen())
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1


def test_no_augmentation_is_plain_scaling():
    images = uint8_images(16)
    assert torch.equal(augment(images, AugmentParams(), gen()), images.float() / 255)


def test_same_seed_same_output_other_seed_differs():
    images = uint8_images(16)
    assert torch.equal(augment(images, FULL, gen(1)), augment(images, FULL, gen(1)))
    assert not torch.equal(augment(images, FULL, gen(1)), augment(images, FULL, gen(2)))


def test_crop_matches_pad_then_slice():
    x = torch.rand(16, 3, 32, 32)
    out = random_crop(x, 4, gen(5))
    replay = gen(5)  # the same draws: dy for every image, then dx
    dy = torch.randint(0, 9, (16,), generator=replay)
    dx = torch.randint(0, 9, (16,), generator=replay)
    for i in range(16):
        padded = np.pad(x[i].numpy(), ((0, 0), (4, 4), (4, 4)))
        expected = padded[:, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        assert np.array_equal(out[i].numpy(), expected), i


def test_crop_offsets_are_uniform():
    # 9x9 image whose pixel (y, x) holds 9y + x: with padding 4 the output's centre (4, 4)
    # is original pixel (dy, dx), so it reads back 9*dy + dx
    n = 8100
    x = torch.arange(81, dtype=torch.float32).view(1, 1, 9, 9).expand(n, 1, 9, 9)
    codes = random_crop(x, 4, gen(0))[:, 0, 4, 4].long()
    counts = torch.bincount(codes, minlength=81)
    assert counts.numel() == 81 and counts.min() > 0
    expected = n / 81
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 124.8  # chi-square critical value for 80 dof at p = 0.001


def test_flip_rate_is_half():
    n = 4000
    x = torch.arange(32, dtype=torch.float32).expand(n, 1, 32, 32)
    out = random_hflip(x, gen(0))
    flipped = out[:, 0, 0, 0] == 31
    assert torch.equal(out[flipped], x[flipped].flip(3)) and torch.equal(out[~flipped], x[~flipped])
    assert abs(flipped.float().mean().item() - 0.5) < 0.04  # ~5 standard errors


def test_brightness_factor_range():
    x = torch.full((2000, 3, 4, 4), 0.5)
    out = color_jitter(x, brightness=0.2, contrast=0.0, gen=gen(0))
    per_image = out.flatten(1)
    assert torch.equal(per_image.min(1).values, per_image.max(1).values)  # one factor per image
    assert per_image.min() >= 0.4 and per_image.max() <= 0.6  # 0.5 * [0.8, 1.2]
    assert per_image.min() < 0.41 and per_image.max() > 0.59  # the whole range is used


def test_contrast_scales_distance_to_grayscale_mean():
    x = 0.4 + 0.2 * torch.rand(2000, 3, 4, 4, generator=gen(1))  # no clamping at factor <= 1.2
    out = color_jitter(x, brightness=0.0, contrast=0.2, gen=gen(0))
    gray = 0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    mean = gray.mean((1, 2))[:, None, None, None]
    d = (x - mean).flatten(1)
    factor = ((out - mean).flatten(1) * d).sum(1) / (d * d).sum(1)
    assert torch.allclose(out, mean + factor[:, None, None, None] * (x - mean), atol=1e-5)
    assert factor.min() >= 0.8 - 1e-5 and factor.max() <= 1.2 + 1e-5
    assert factor.min() < 0.82 and factor.max() > 1.18


def test_jitter_distribution_matches_torchvision():
    n = 2000
    image = torch.rand(3, 8, 8, generator=gen(2))  # one image, so only the jitter varies
    ours = color_jitter(image.expand(n, 3, 8, 8), 0.2, 0.2, gen(0))
    torch.manual_seed(0)
    jitter = ColorJitter(brightness=0.2, contrast=0.2)  # one draw per call, so one image per call
    theirs = torch.stack([jitter(image) for _ in range(n)])
    # per-image mean tracks brightness, per-image std tracks brightness and contrast
    for stat in (lambda x: x.mean((1, 2, 3)), lambda x: x.std((1, 2, 3))):
        a, b = stat(ours), stat(theirs)
        assert abs(a.mean() - b.mean()) < 0.01
        assert abs(a.std() - b.std()) < 0.1 * b.std()

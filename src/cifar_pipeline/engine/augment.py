"""Batched augmentation on whole uint8 image tensors, on whatever device they live.

Matches torchvision's RandomCrop(32, padding, fill=0 or padding_mode="reflect"), RandomHorizontalFlip,
RandomRotation(degrees, bilinear, fill=0) and ColorJitter(brightness, contrast) in distribution, then
applies Cutout (DeVries & Taylor 2017: a zeroed square at a uniform centre, clipped at the border).
Every random draw comes from one generator, so a run is reproducible and its state can be checkpointed.
Alternating flip (airbench) takes the flips from the loader instead: each image's random first choice,
inverted in every other epoch.
"""

from __future__ import annotations

import torch

from cifar_pipeline.core.config import AugmentParams

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
CHUNK = 8192  # images per pass, bounds peak memory


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 in [0, 1]."""
    return images.float().div_(255)


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator, reflect: bool = False) -> torch.Tensor:
    """Pad by `padding` (zeros, or reflection) and take a random HxW window per image (offsets uniform in
    0..2*padding)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4, mode="reflect" if reflect else "constant")
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=gen)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate image i about its centre by degrees[i] (bilinear); corners outside the source fill with 0."""
    angle = torch.deg2rad(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_rotation(x: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image by an angle uniform in [-degrees, degrees]."""
    return rotate(x, (torch.rand(x.shape[0], device=x.device, generator=gen) * 2 - 1) * degrees)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero a size x size square per image, centred at a uniform pixel (the square may leave the image)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), device=x.device, generator=gen)
    cx = torch.randint(0, w, (n,), device=x.device, generator=gen)
    top, left = cy - size // 2, cx - size // 2
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
    square = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return x.masked_fill(square, 0.0)


def _factor(n: int, strength: float, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, device=x.device, generator=gen)
    return (1 - strength + 2 * strength * u)[:, None, None, None]


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor).clamp_(0, 1)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype)[None, :, None, None]
    mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    return (factor * x + (1 - factor) * mean).clamp_(0, 1)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, gen: torch.Generator) -> torch.Tensor:
    """Brightness and contrast jitter applied in a random order per image, as ColorJitter does."""
    n = x.shape[0]
    b = _factor(n, brightness, x, gen)
    c = _factor(n, contrast, x, gen)
    brightness_first = (torch.rand(n, device=x.device, generator=gen) < 0.5)[:, None, None, None]
    return torch.where(
        brightness_first,
        _contrast(_brightness(x, b), c),
        _brightness(_contrast(x, c), b),
    )


def augment(
    images: torch.Tensor, cfg: AugmentParams, gen: torch.Generator, flips: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> augmented float32 [N, 3, H, W] in [0, 1], processed in chunks. `flips` (bool [N],
    with cfg.alternate_flip) says which images to mirror."""
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    for start in range(0, images.shape[0], CHUNK):
        x = to_unit_float(images[start : start + CHUNK])
        if cfg.crop_padding:
            x = random_crop(x, cfg.crop_padding, gen, cfg.crop_reflect)
        if cfg.alternate_flip:
            x = torch.where(flips[start : start + CHUNK, None, None, None], x.flip(3), x)
        elif cfg.hflip:
            x = random_hflip(x, gen)
        if cfg.rotation:
            x = random_rotation(x, cfg.rotation, gen)
        if cfg.brightness or cfg.contrast:
            x = color_jitter(x, cfg.brightness, cfg.contrast, gen)
        if cfg.cutout:
            x = cutout(x, cfg.cutout, gen)
        out[start : start + CHUNK] = x
    return out

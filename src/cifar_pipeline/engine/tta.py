"""Test-time augmentation: the views of each image a model averages over at inference, and their weights.

flip: the image and its mirror image, 1/2 each. flip_shift (airbench's): those two at 1/4 each, plus the
image shifted by one pixel up-left and down-right (reflection-padded), each with its mirror, at 1/8 each."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def shifted(x: torch.Tensor) -> list[torch.Tensor]:
    """x moved one pixel down-right and one pixel up-left, borders filled by reflection."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    return [padded[..., :h, :w], padded[..., 2 : h + 2, 2 : w + 2]]


def views(x: torch.Tensor, mode: str) -> tuple[list[torch.Tensor], list[float]]:
    """The views of x [N, C, H, W] and their weights (summing to 1)."""
    if mode == "flip":
        return [x, x.flip(3)], [0.5, 0.5]
    if mode == "flip_shift":
        a, b = shifted(x)
        return [x, x.flip(3), a, a.flip(3), b, b.flip(3)], [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    raise ValueError(f"unknown tta mode {mode!r}")


def averaged(logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str) -> torch.Tensor:
    """The log of the weighted mean class probabilities over the views (usable as logits); all the views
    go through the model as one batch."""
    images, weights = views(x, mode)
    probs = logits_of(torch.cat(images)).float().softmax(1).chunk(len(images))
    mean = sum(w * p for w, p in zip(weights, probs, strict=True))
    return mean.log()

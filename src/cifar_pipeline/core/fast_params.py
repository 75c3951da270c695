"""The params sections of the fast-training switches (airbench's techniques, docs/recipes.md): batch norm,
Lookahead and the wide CNN. Each default leaves a model as it was."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from cifar_pipeline.core.strict import STRICT

PositiveInt = Annotated[int, Field(gt=0)]


class Strict(BaseModel):
    model_config = STRICT


class BatchNormParams(Strict):
    """Every BatchNorm layer of the model (torch's defaults leave it unchanged)."""

    momentum: Annotated[float, Field(gt=0, le=1)] = 0.1  # torch's convention: weight of the new batch's statistics
    eps: Annotated[float, Field(gt=0, le=1)] = 1e-5
    weight: bool = True  # false: the scale stays 1 (not trained); only the shift (bias) learns


class LookaheadParams(Strict):
    """Every `every` steps the averaged weights move toward the trained ones and the trained ones jump back
    to them (0 = off); validation, test and the saved model use the averaged weights."""

    every: Annotated[int, Field(ge=0)] = 0
    decay: Annotated[float, Field(gt=0, lt=1)] = 0.95  # per step; the sync uses decay**every * (t / T)**3


class WideParams(Strict):
    """cnn.arch: wide, a wide shallow net: a 2x2 stem conv (24 channels), then per width a block of
    conv3x3-maxpool-BN-GELU and 1 + cnn.extra_convs conv-BN-GELU layers, max-pool, linear."""

    widths: Annotated[list[PositiveInt], Field(min_length=3, max_length=3)] = [64, 256, 256]
    residual: bool = False  # add each block's first layer's output to its last (before the last GELU)
    whiten: bool = False  # the stem is a frozen patch-whitening conv computed from the training images
    whiten_bias_epochs: Annotated[int, Field(ge=0)] = 0  # with whiten: the stem's bias trains this many epochs


def fast_switch_conflict(section) -> str | None:
    """Why a model section's (config.ModelParams) fast switches can't work together, or None."""
    wide = getattr(section, "wide", None)
    if wide and wide.whiten_bias_epochs and section.scheduler.name in ("step", "cosine", "onecycle"):
        return (
            f"wide.whiten_bias_epochs needs a scheduler of name none, warmup_cosine or linear "
            f"(got {section.scheduler.name}); set it to 0 or change the scheduler"
        )
    opt = section.optimizer
    if opt.decoupled and (opt.name != "sgd" or opt.reference_batch_size is not None):
        return "optimizer.decoupled = true needs name = sgd and reference_batch_size = null (it scales the lr)"
    if section.augment.alternate_flip and not section.augment.hflip:
        return "augment.alternate_flip = true needs hflip = true (it changes how images are flipped)"
    if getattr(section, "backbone_lr", None) is not None and (opt.decoupled or opt.bias_lr_scale != 1):
        return (
            "backbone_lr can't go with optimizer.decoupled or optimizer.bias_lr_scale (their param groups "
            "replace the backbone's); set backbone_lr: null or switch those off"
        )
    return None

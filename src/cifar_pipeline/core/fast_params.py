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

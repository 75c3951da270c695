"""Typed schema for params.yaml, validated before any heavy work."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from cifar_pipeline.core import yaml12
from cifar_pipeline.core.errors import ParamsError
from cifar_pipeline.core.fast_params import BatchNormParams, LookaheadParams, WideParams, fast_switch_conflict
from cifar_pipeline.core.mlflow_params import MlflowParams
from cifar_pipeline.core.param_errors import describe
from cifar_pipeline.core.strict import STRICT

MODELS = ("cnn", "resnet34", "resnet18")
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"

PositiveInt = Annotated[int, Field(gt=0)]
BatchSize = Annotated[int, Field(ge=2)]  # BatchNorm can't train on one image per batch
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # the range numpy's legacy seeding accepts
MIN_TRAIN_IMAGES = 2
Probability = Annotated[float, Field(ge=0, le=1)]
RGB = Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=3, max_length=3)]
RGBStd = Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)]


class Strict(BaseModel):
    model_config = STRICT


class DataParams(Strict):
    archive: str = "data/cifar-10-python.tar.gz"
    url: str = OFFICIAL_URL
    md5: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] = OFFICIAL_MD5
    train_limit: Annotated[int, Field(ge=0)] = 0
    test_limit: Annotated[int, Field(ge=0)] = 0
    val_size: PositiveInt = 5000

    @model_validator(mode="after")
    def _room_for_training(self) -> DataParams:
        if self.train_limit and self.val_size > self.train_limit - MIN_TRAIN_IMAGES:
            raise ValueError(
                f"data.val_size = {self.val_size} must be at most data.train_limit - {MIN_TRAIN_IMAGES} = "
                f"{self.train_limit - MIN_TRAIN_IMAGES} so that at least {MIN_TRAIN_IMAGES} images remain for training"
            )
        return self


class RuntimeParams(Strict):
    device: str = "auto"
    bf16: bool = True
    channels_last: bool = True
    cuda_graphs: bool = True
    cudnn_benchmark: bool = False
    deterministic: bool = False
    eval_batch_size: PositiveInt = 1024
    # One training across processes (docs/setup.md#one-training-across-gpus): torchrun ranks per machine,
    # each on its own GPU (on a CPU, device: cpu, gloo ranks); batch sizes stay global (split across ranks).
    gpus: PositiveInt = 1
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: nccl on CUDA, gloo on a CPU
    sync_bn: bool = False  # batch statistics over the global batch, not each rank's share (gpus > 1)

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v not in ("auto", "cuda", "mps", "cpu") and not re.fullmatch(r"cuda:\d+", v):
            raise ValueError("must be auto, cuda, cuda:N (one GPU by index), mps or cpu")
        return v


class OptimizerParams(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0, le=100)]  # up to 100: a decoupled lr is per 1024 images (airbench: 11.5)
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False  # SGD only
    # Linear scaling rule: the lr used is lr * batch_size / reference_batch_size (null: lr as given).
    reference_batch_size: PositiveInt | None = None
    # airbench's form (SGD): lr is the step per 1024 images whatever the momentum, weight_decay the decay per
    # 1024 images whatever the lr (the lr used: lr * batch_size / (1024 * (1 + 1 / (1 - momentum))))
    decoupled: bool = False
    bias_lr_scale: Annotated[float, Field(gt=0)] = 1.0  # BatchNorm biases: lr times this, the same decay step

    @model_validator(mode="after")
    def _nesterov_needs_sgd_momentum(self) -> OptimizerParams:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError(
                f"nesterov = true needs name = sgd and momentum > 0 (got name = {self.name}, "
                f"momentum = {self.momentum}); set nesterov: false or use SGD with momentum"
            )
        return self


class SchedulerParams(Strict):
    """step and cosine change the lr once per epoch; onecycle, warmup_cosine and linear once per step."""

    name: Literal["none", "step", "cosine", "onecycle", "warmup_cosine", "linear"] = "none"
    step_size: PositiveInt = 10
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.5
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.3  # onecycle, linear: share of steps rising to the peak lr
    div_factor: Annotated[float, Field(ge=1)] = 25.0  # onecycle: starts at peak lr / div_factor
    final_div_factor: Annotated[float, Field(ge=1)] = 1e4  # onecycle: ends at start lr / final_div_factor
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0  # warmup_cosine: linear rise from 0, then cosine to 0
    start_factor: Annotated[float, Field(ge=0, le=1)] = 0.2  # linear: lr factor at the first step, rising to 1
    end_factor: Annotated[float, Field(ge=0, le=1)] = 0.0  # linear: lr factor at the last step, falling from 1


class AugmentParams(Strict):
    crop_padding: Annotated[int, Field(ge=0, le=16)] = 0
    hflip: bool = False
    brightness: Annotated[float, Field(ge=0, lt=1)] = 0.0
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.0
    rotation: Annotated[float, Field(ge=0, le=180)] = 0.0  # max degrees, uniform in [-rotation, rotation]
    cutout: Annotated[int, Field(ge=0, le=32)] = 0  # side of the zeroed square, in pixels (0 = off)
    alternate_flip: bool = False  # with hflip: each image flips in every other epoch (a random first one)
    crop_reflect: bool = False  # crop_padding pads by reflection, not zeros


class NormalizeParams(Strict):
    mean: RGB = [0.5, 0.5, 0.5]
    std: RGBStd = [0.5, 0.5, 0.5]


class ModelParams(Strict):
    epochs: PositiveInt
    batch_size: BatchSize = 64
    optimizer: OptimizerParams
    scheduler: SchedulerParams = SchedulerParams()
    augment: AugmentParams = AugmentParams()
    normalize: NormalizeParams = NormalizeParams()
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0  # of the training loss only
    # inference (validation, test, serving): flip = average with the mirror image; flip_shift also 1-px shifts
    tta: Literal["none", "flip", "flip_shift"] = "none"
    validate_tta: bool = True  # false: each epoch's validation scores one plain view, as airbench does (faster)
    batchnorm: BatchNormParams = BatchNormParams()
    lookahead: LookaheadParams = LookaheadParams()
    compile: bool = False  # torch.compile the train step on a CUDA GPU (never with runtime.deterministic)

    @model_validator(mode="after")
    def _warmup_within_training(self) -> ModelParams:
        sched = self.scheduler
        if sched.name == "warmup_cosine" and sched.warmup_epochs >= self.epochs:
            raise ValueError(
                f"scheduler.warmup_epochs = {sched.warmup_epochs} must be below "
                f"epochs = {self.epochs}, so that the cosine part has steps left"
            )
        return self

    @model_validator(mode="after")
    def _fast_switches_fit(self) -> ModelParams:
        problem = fast_switch_conflict(self)
        if problem:
            raise ValueError(problem)
        return self

    def lr_scale(self) -> float:
        """Factor on every learning rate: batch_size / optimizer.reference_batch_size (linear scaling)."""
        opt = self.optimizer
        if opt.decoupled:
            return self.batch_size / (1024 * (1 + 1 / (1 - opt.momentum)))
        return self.batch_size / opt.reference_batch_size if opt.reference_batch_size else 1.0


class CnnParams(ModelParams):
    dropout: Probability = 0.5
    width: Annotated[float, Field(gt=0, le=8)] = 1.0  # multiplies every layer's channels (and the hidden units)
    extra_convs: Annotated[int, Field(ge=0, le=4)] = 0  # more conv-BN-ReLU layers per block, at its width
    arch: Literal["seed", "wide"] = "seed"  # wide: the wide shallow GELU net of `wide` (no dropout, no width)
    wide: WideParams = WideParams()


class Resnet34Params(ModelParams):
    arch: Literal["pipeline", "torchvision"] = "pipeline"  # this package's ResNet34 or torchvision's resnet34
    stem: Literal["imagenet", "cifar"] = "imagenet"  # 7x7/2 conv + max-pool, or 3x3/1 conv (32x32 into layer1)


class Resnet18Params(ModelParams):
    image_size: Annotated[int, Field(ge=32, le=512)] = 224
    weights: Literal["IMAGENET1K_V1", "none"] = "IMAGENET1K_V1"
    weights_path: str | None = None
    trainable: Annotated[list[Literal["layer1", "layer2", "layer3", "layer4", "fc"]], Field(min_length=1)] = [
        "layer4",
        "fc",
    ]
    # lr of the trainable layers other than fc, before lr scaling (null: optimizer.lr)
    backbone_lr: Annotated[float, Field(gt=0, le=10)] | None = None

    @field_validator("trainable")
    @classmethod
    def _fc_trainable(cls, v: list[str]) -> list[str]:
        if "fc" not in v:
            raise ValueError("must include 'fc' (the new 10-class head)")
        return v

    @model_validator(mode="after")
    def _backbone_to_train(self) -> Resnet18Params:
        if self.backbone_lr is not None and self.trainable == ["fc"]:
            raise ValueError(
                f"backbone_lr = {self.backbone_lr} is set but trainable = ['fc'] has no backbone "
                "layer; add one (e.g. layer4) to trainable or set backbone_lr: null"
            )
        return self


SWEEP_NAME = r"^[A-Za-z][A-Za-z0-9_-]{0,39}$"


class SweepParams(Strict):
    """Set by `commands.sweep` in each of its experiments: the runs are tagged with it (tracking/tags.py)."""

    name: Annotated[str, Field(pattern=SWEEP_NAME)]
    keys: list[str] = []  # the swept params.yaml keys other than seed: a run's configuration is their values


class Params(Strict):
    seed: Seed = 42
    progress: bool = True  # per-batch progress bars; no stage lists it, so it reruns nothing
    sweep: SweepParams | None = None  # likewise reruns nothing; commands/sweep.py sets it
    data: DataParams = DataParams()
    runtime: RuntimeParams = RuntimeParams()
    mlflow: MlflowParams = MlflowParams()
    cnn: CnnParams
    resnet34: Resnet34Params
    resnet18: Resnet18Params

    def model(self, name: str) -> ModelParams:
        return getattr(self, name)

    def stage_params(self, name: str) -> dict:
        """The params a training stage reads: its model section plus data, runtime and seed."""
        return {
            "seed": self.seed,
            "data": self.data.model_dump(),
            "runtime": self.runtime.model_dump(),
            name: self.model(name).model_dump(),
        }

    def stage_key(self, name: str) -> str:
        """Hash of the params that change a training run's result (resume is keyed to it). runtime.gpus is left
        out: the checkpoint records its number of ranks, and the training stage names a change of it."""
        view = self.stage_params(name)
        del view["runtime"]["gpus"]
        blob = json.dumps(view, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source} must be a YAML mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {describe(e, Params)}" for e in exc.errors())
        raise ParamsError(f"{source} is invalid:\n{problems}\nFix these values and rerun.") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the project root, where params.yaml lives")
    try:
        raw = yaml12.load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, str(path))

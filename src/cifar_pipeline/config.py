"""Typed schema for params.yaml, validated before any heavy work."""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from .errors import ParamsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODELS = ("cnn", "resnet34", "resnet18")
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"

PositiveInt = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
RGB = Annotated[list[Annotated[float, Field(ge=0, le=1)]], Field(min_length=3, max_length=3)]
RGBStd = Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Strict):
    archive: str = "data/cifar-10-python.tar.gz"
    url: str = OFFICIAL_URL
    md5: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] = OFFICIAL_MD5
    train_limit: Annotated[int, Field(ge=0)] = 0
    test_limit: Annotated[int, Field(ge=0)] = 0
    val_size: PositiveInt = 5000


    @model_validator(mode="after")
    def _room_for_training(self) -> "DataParams":
        if self.train_limit and self.val_size >= self.train_limit:
            raise ValueError(
                f"data.val_size = {self.val_size} must be below data.train_limit = {self.train_limit} "
                "so that some images remain for training"
            )
        return self


class RuntimeParams(Strict):
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    bf16: bool = True
    channels_last: bool = True
    cuda_graphs: bool = True
    compile: bool = True
    cudnn_benchmark: bool = False
    deterministic: bool = False
    eval_batch_size: PositiveInt = 1024
    progress: bool = True


class MlflowParams(Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: Annotated[str, Field(min_length=1)] = "cifar10"
    system_metrics: bool = False


class OptimizerParams(Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0, le=10)]
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9


class SchedulerParams(Strict):
    name: Literal["none", "step", "cosine"] = "none"
    step_size: PositiveInt = 10
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.5


class AugmentParams(Strict):
    crop_padding: Annotated[int, Field(ge=0, le=16)] = 0
    hflip: bool = False
    brightness: Annotated[float, Field(ge=0, lt=1)] = 0.0
    contrast: Annotated[float, Field(ge=0, lt=1)] = 0.0


class NormalizeParams(Strict):
    mean: RGB = [0.5, 0.5, 0.5]
    std: RGBStd = [0.5, 0.5, 0.5]


class ModelParams(Strict):
    epochs: PositiveInt
    batch_size: PositiveInt = 64
    optimizer: OptimizerParams
    scheduler: SchedulerParams = SchedulerParams()
    augment: AugmentParams = AugmentParams()
    normalize: NormalizeParams = NormalizeParams()


class CnnParams(ModelParams):
    dropout: Probability = 0.5


class Resnet34Params(ModelParams):
    pass


class Resnet18Params(ModelParams):
    image_size: Annotated[int, Field(ge=32, le=512)] = 224
    weights: Literal["IMAGENET1K_V1", "none"] = "IMAGENET1K_V1"
    weights_path: str | None = None
    trainable: Annotated[list[Literal["layer1", "layer2", "layer3", "layer4", "fc"]], Field(min_length=1)] = [
        "layer4",
        "fc",
    ]

    @field_validator("trainable")
    @classmethod
    def _fc_trainable(cls, v: list[str]) -> list[str]:
        if "fc" not in v:
            raise ValueError("must include 'fc' (the new 10-class head)")
        return v


class Params(Strict):
    seed: Annotated[int, Field(ge=0)] = 42
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
        """Hash of the params that change a training run's result (resume is keyed to it)."""
        relevant = self.stage_params(name)
        relevant["runtime"] = {k: v for k, v in relevant["runtime"].items() if k != "progress"}
        blob = json.dumps(relevant, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _schema_keys(model: type[BaseModel] | None) -> list[str]:
    return list(model.model_fields) if model else []


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at `loc` (for did-you-mean hints)."""
    current: type[BaseModel] | None = Params
    for part in loc[:-1]:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return current


def _describe(error: dict) -> str:
    loc = error["loc"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    value = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        valid = _schema_keys(_model_at(loc))
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return f"unknown key `{path}`{hint}; valid keys here: {', '.join(valid)}"
    if kind == "missing":
        return f"`{path}` is required but missing"
    ctx = error.get("ctx", {})
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"{path} must be {op} {bound}, got {value!r}"
    if kind == "literal_error":
        return f"{path} must be one of {ctx.get('expected')}, got {value!r}"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):  # a whole-section check: its message names the keys and values itself
        return f"{path}: {message}"
    return f"{path}: {message}, got {value!r}"


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source} must be a YAML mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(e)}" for e in exc.errors())
        raise ParamsError(f"{source} is invalid:\n{problems}\nFix these values and rerun.") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run from the project root, where params.yaml lives")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw, str(path))

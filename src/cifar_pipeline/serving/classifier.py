"""A trained model as users call it: images in, class names and probabilities out.

Used by the predict CLI and by the MLflow model (pyfunc.py), so both give the same answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from cifar_pipeline.core.config import MODELS, Params
from cifar_pipeline.core.errors import PipelineError
from cifar_pipeline.engine.models import build_model

CIFAR_SIZE = 32
CLASS_COLUMN = "class"
MODEL_FILE_ARTIFACT = "model_file"  # the logged MLflow model's copy of models/<name>/best.pt


class ModelFileError(PipelineError):
    """A model file or URI that is not a trained classifier of this pipeline."""


class ImageInputError(PipelineError, ValueError):
    """Images the model can't take (wrong shape, dtype or value range)."""


def resize_to_cifar(images: torch.Tensor) -> torch.Tensor:
    """Float [N, 3, H, W] -> [N, 3, 32, 32], the whole image squeezed to a square with an antialiased
    (area-averaging) downscale, as the tiny images behind CIFAR-10 were made. 32x32 input is unchanged."""
    if images.shape[-2:] == (CIFAR_SIZE, CIFAR_SIZE):
        return images
    return F.interpolate(images, size=(CIFAR_SIZE, CIFAR_SIZE), mode="bilinear", antialias=True, align_corners=False)


def check_images(images: object) -> None:
    """Images must be an array (N, H, W, 3): uint8 (or any integer type) in 0..255, or float in [0, 1]."""
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
        shape = list(images.shape) if isinstance(images, np.ndarray) else type(images).__name__
        raise ImageInputError(f"expected RGB images as an array (N, H, W, 3), got {shape}")
    if np.issubdtype(images.dtype, np.integer):
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise ImageInputError(f"integer images must be in 0..255, got values {low}..{high}")
    elif np.issubdtype(images.dtype, np.floating):
        low, high = float(np.min(images)), float(np.max(images))
        if not (low >= 0.0 and high <= 1.0):  # also catches NaN
            raise ImageInputError(f"float images must be in [0, 1], got values {low}..{high}; pass uint8 for 0..255")
    else:
        raise ImageInputError(f"images must be uint8 (0..255) or float (0..1), got dtype {images.dtype}")


def to_unit_nchw(images: np.ndarray) -> torch.Tensor:
    """Checked images (N, H, W, 3) -> float [N, 3, H, W] in [0, 1], as the training stages scale them."""
    if np.issubdtype(images.dtype, np.integer):
        return torch.from_numpy(images.astype(np.uint8)).permute(0, 3, 1, 2).float().div_(255)
    return torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)


def read_model_file(path: Path) -> dict:
    """A models/<name>/best.pt (or last.pt) file, checked; read with weights_only=True."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not a torch checkpoint
        first_line = (str(exc).splitlines() or [""])[0][:200]
        raise ModelFileError(
            f"{path} is not a model file written by a training stage ({type(exc).__name__}: {first_line})"
        ) from None
    if not isinstance(saved, dict) or not {"arch", "params", "state_dict", "classes"} <= saved.keys():
        raise ModelFileError(
            f"{path} is not a model file written by a training stage of this pipeline "
            "(models/<name>/best.pt holds arch, params, classes and state_dict)"
        )
    if saved["arch"] not in MODELS:
        raise ModelFileError(f"{path} holds a model '{saved['arch']}'; this pipeline knows {', '.join(MODELS)}")
    return saved


def build_from_file(path: Path) -> tuple[torch.nn.Module, list[str]]:
    """The model in a model file, rebuilt from the params saved with it, and its class names."""
    saved = read_model_file(path)
    name = saved["arch"]
    try:
        cfg = Params.model_fields[name].annotation.model_validate(saved["params"])
    except ValidationError as exc:
        raise ModelFileError(
            f"{path}: its saved {name} params are invalid ({exc.error_count()} errors); retrain it with this code"
        ) from None
    with torch.device("meta"):  # no weights initialised only to be replaced: the file's are assigned
        model = build_model(name, cfg, pretrained=False)
    try:  # in the default layout, as copying into freshly built weights would leave them
        model.load_state_dict({k: v.contiguous() for k, v in saved["state_dict"].items()}, assign=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ModelFileError(f"{path} says it holds a {name}, but its weights do not fit one ({first})") from None
    return model.eval(), list(saved["classes"])


class ImageClassifier:
    """A trained model plus its class names; predicts on image arrays in batches on one device."""

    def __init__(self, model: torch.nn.Module, classes: list[str], device: torch.device):
        self.model, self.classes, self.device = model.to(device).eval(), classes, device

    @classmethod
    def from_file(cls, path: Path, device: torch.device) -> ImageClassifier:
        return cls(*build_from_file(path), device)

    def to(self, device: torch.device) -> ImageClassifier:
        return ImageClassifier(self.model, self.classes, device)

    def probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, 10) float32 class probabilities for images (N, H, W, 3); see check_images."""
        return np.concatenate(list(self.batches(images, batch_size)))

    def batches(self, images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        """Probabilities batch by batch (for progress bars on long inputs)."""
        check_images(images)
        for start in range(0, len(images), batch_size):
            with torch.inference_mode():
                x = resize_to_cifar(to_unit_nchw(images[start : start + batch_size]).to(self.device))
                probabilities = torch.softmax(self.model(x).float(), dim=1).cpu().numpy()
            yield probabilities

    def frame(self, probabilities: np.ndarray):
        """A DataFrame, one row per image: the predicted class name, then one probability column per class."""
        import pandas as pd  # only the MLflow model answers with a DataFrame

        table = pd.DataFrame(probabilities, columns=self.classes)
        table.insert(0, CLASS_COLUMN, np.asarray(self.classes)[probabilities.argmax(1)])
        return table

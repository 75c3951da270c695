"""How a model runs on this machine: the device, torch's backend switches, autocast and memory layout
(Settings), batched inference, and out-of-memory errors that name the param to lower."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cifar_pipeline.core.config import RuntimeParams
from cifar_pipeline.core.errors import TrainingError
from cifar_pipeline.core.paths import COMPILE_CACHE_DIR, GPU_LOCK_DIR, project_root
from cifar_pipeline.engine.gpus import claim_free_gpu

if TYPE_CHECKING:
    from cifar_pipeline.engine.distributed import Ranks


def use_project_compile_cache() -> None:
    """Keep torch.compile's cache at the project root, so reruns, `dvc exp run --temp` copies and queued
    experiments reuse compiled kernels. A TORCHINDUCTOR_CACHE_DIR set by the user wins, unless it is
    torch's own default (<tempdir>/torchinductor_<user>), which torch puts into that variable on import."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or _is_torch_default(Path(current)):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(project_root() / COMPILE_CACHE_DIR)


def _is_torch_default(folder: Path) -> bool:
    return folder.name.startswith("torchinductor_") and folder.parent.resolve() == Path(tempfile.gettempdir()).resolve()


@contextmanager
def explain_oom(activity: str, param: str, batch_size: int) -> Iterator[None]:
    """Turn a device out-of-memory error into one that names the batch-size param to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise TrainingError(
            f"{activity} ran out of device memory at {param} = {batch_size}. "
            f"Set {param} to {max(batch_size // 2, 1)} or less in params.yaml and rerun."
        ) from None


def pick_device(choice: str) -> torch.device:
    """The device `runtime.device` names; `auto` and `cuda` take a free GPU when several are visible."""
    if choice == "auto":
        if torch.cuda.is_available():
            return _cuda_device()
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = choice.partition(":")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if not available[kind]:
        raise TrainingError(f"runtime.device = {choice} but no {kind} device is available; use auto or cpu")
    if kind == "cuda":
        return _cuda_device(int(index) if index else None)
    return torch.device(kind)


def _cuda_device(index: int | None = None) -> torch.device:
    count = torch.cuda.device_count()
    if index is None:
        index = claim_free_gpu(count, project_root() / GPU_LOCK_DIR) if count > 1 else 0
    elif index >= count:
        raise TrainingError(
            f"runtime.device = cuda:{index} but only {count} GPU(s) are visible "
            f"(cuda:0 to cuda:{count - 1}); pick one of those, or auto"
        )
    torch.cuda.set_device(index)  # graphs, streams and RNG calls without a device use this one
    return torch.device("cuda", index)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def configure_backends(deterministic: bool, cudnn_benchmark: bool) -> None:
    """torch's process-wide switches: deterministic kernels, cuDNN autotuning, TF32 matmuls and convolutions."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


@dataclass
class Settings:
    """How the engine runs on this device (resolved from runtime params)."""

    device: torch.device
    bf16: bool
    channels_last: bool
    cuda_graphs: bool
    compile: bool
    eval_batch_size: int
    progress: bool
    ranks: Ranks | None = None  # this process's place among torchrun's ranks (distributed.join); None: alone

    @classmethod
    def resolve(cls, runtime: RuntimeParams, progress: bool = False, compile: bool = False) -> Settings:
        """Pick the device, set the torch backends for it, and apply the CUDA-only switches. Deterministic runs
        never compile: compiled kernels are chosen by timing when first compiled, so they can differ between caches."""
        device = pick_device(runtime.device)
        configure_backends(runtime.deterministic, runtime.cudnn_benchmark)
        cuda = device.type == "cuda"
        compile = compile and cuda and not runtime.deterministic
        return cls(
            device,
            runtime.bf16 and cuda,
            runtime.channels_last and cuda,
            runtime.cuda_graphs and cuda,
            compile,
            runtime.eval_batch_size,
            progress,
        )

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, settings: Settings) -> torch.Tensor:
    """Logits (float32) for float images in [0, 1], in large batches."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, images.shape[0], settings.eval_batch_size):
        with settings.autocast():
            out.append(model(settings.layout(images[start : start + settings.eval_batch_size])).float())
    model.train(was_training)
    return torch.cat(out)


def loss_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = F.cross_entropy(logits, labels)
    acc = (logits.argmax(1) == labels).float().mean()
    pair = torch.stack([loss, acc]).tolist()
    return pair[0], pair[1]

"""One training across processes (torchrun's ranks, DistributedDataParallel): joining the process group, the
model's wrap and batch-norm sync, the ranks' agreement on stopping, and the sums they add up.

Every rank draws the same seeded permutation and augmentation and trains on its share of each global batch, so
the order is the one-process order, and the checkpoint of rank 0 (its generator and RNG states) serves every rank.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed import _functional_collectives as funcol  # its all_reduce is differentiable

from cifar_pipeline.core.config import RuntimeParams
from cifar_pipeline.engine.device import Settings, predict

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class Ranks:
    """This process's place among the ranks of one training."""

    rank: int
    world_size: int
    backend: str
    control: dist.ProcessGroup  # gloo: agreement on the host, without waiting for the GPU

    @property
    def main(self) -> bool:
        return self.rank == 0

    def agreed_stop(self, signum: int | None) -> int | None:
        """The signal any rank got (all stop at the same step), or None: a collective call, on every rank."""
        flag = torch.tensor(signum or 0)
        dist.all_reduce(flag, dist.ReduceOp.MAX, group=self.control)
        return int(flag) or None

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over the ranks."""
        values = values.clone()
        dist.all_reduce(values)
        return values

    def from_main(self, obj: object) -> object:
        """Rank 0's `obj` on every rank (the others pass None)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


def launched() -> bool:
    """True in a process torchrun started as a rank."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join(settings: Settings, runtime: RuntimeParams) -> Settings:
    """In a rank: join the process group and return the settings with the ranks, CUDA graphs off (DDP's
    gradient all-reduce is not captured) and progress bars on rank 0 only. Elsewhere: the settings as given."""
    if not launched():
        return settings
    die_with_launcher()
    cuda = settings.device.type == "cuda"
    backend = runtime.backend if runtime.backend != "auto" else ("nccl" if cuda else "gloo")
    dist.init_process_group(backend, device_id=settings.device if cuda else None)
    control = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), backend, control)
    return dataclasses.replace(settings, cuda_graphs=False, progress=settings.progress and ranks.main, ranks=ranks)


def die_with_launcher() -> None:
    """torchrun starts each rank in a session of its own, out of reach of a signal to `dvc repro`'s process
    group: on Linux a rank gets SIGTERM when its launcher ends, killed or not, and stops as on any SIGTERM."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the launcher was already gone
        os.kill(os.getpid(), signal.SIGTERM)


def wrap(model: nn.Module, settings: Settings) -> nn.Module:
    """The model as DistributedDataParallel: gradients are averaged over the ranks in the backward pass.
    Buffers (BatchNorm's running statistics) are rank 0's at the start, then not broadcast each step:
    validation takes rank 0's."""
    device_ids = [settings.device.index] if settings.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch: torch's SyncBatchNorm on GPUs; on a CPU, where torch's
    refuses to run, GlobalBatchNorm2d. Both keep BatchNorm2d's state_dict, so the saved models load as usual."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the whole global batch's, from differentiable all-reduces
    (their backward adds up the gradients of every rank's loss): each channel's sum and count, then its sum of
    squared deviations (two passes, as exact as one process's BatchNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        c, dims = self.num_features, (0, 2, 3)
        x32 = x.float()
        count = torch.full((1,), x.numel() // c, dtype=torch.float32, device=x.device)
        sums = total(torch.cat([x32.sum(dims), count]))
        n = sums[c]
        mean = sums[:c] / n
        centred = x32 - mean[None, :, None, None]
        var = total((centred * centred).sum(dims)) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return (centred * scale[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def total(t: torch.Tensor) -> torch.Tensor:
    """The sum over the ranks, differentiable."""
    return funcol.all_reduce(t, "sum", dist.group.WORLD)


def validate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: Settings) -> tuple[float, float]:
    """Loss and accuracy over the whole set: each rank predicts its slice with rank 0's BatchNorm statistics,
    and the sums are added up."""
    ranks = settings.ranks
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
    share = torch.tensor_split(torch.arange(x.shape[0], device=x.device), ranks.world_size)[ranks.rank]
    logits = predict(model, x[share], settings)
    sums = torch.stack(
        [F.cross_entropy(logits, y[share], reduction="sum"), (logits.argmax(1) == y[share]).sum().float()]
    )
    loss_sum, correct = ranks.total(sums).tolist()
    return loss_sum / x.shape[0], correct / x.shape[0]

"""A training stage run as several ranks: this process (the one DVC started) checks the runtime params, runs
torchrun's engine (torch.distributed.run) in itself with `runtime.gpus` ranks of the same command, and waits
for them. Several machines: torchrun's own PET_* variables (PET_NNODES, PET_RDZV_ENDPOINT, ...) add the
rendezvous options (docs/setup.md)."""

from __future__ import annotations

import os
import signal
import sys

from cifar_pipeline.core.config import ModelParams, RuntimeParams
from cifar_pipeline.core.errors import ParamsError
from cifar_pipeline.engine import distributed


def nodes() -> int:
    """The number of machines torchrun's PET_NNODES names (1 if unset)."""
    value = os.environ.get("PET_NNODES", "1")
    if not value.isdigit() or int(value) < 1:
        raise ParamsError(f"PET_NNODES = {value!r} must be a number of machines such as 2 (a fixed number, no range)")
    return int(value)


def wanted(runtime: RuntimeParams) -> bool:
    """True where this process should start ranks rather than train: several GPUs or machines asked for,
    and not itself a rank."""
    return (runtime.gpus > 1 or nodes() > 1) and not distributed.launched()


def check(runtime: RuntimeParams, cfg: ModelParams, model: str) -> None:
    """One clear error for runtime params that can't run as ranks here, before any work."""
    import torch

    n = runtime.gpus
    if runtime.device in ("mps",) or runtime.device.startswith("cuda:"):
        raise ParamsError(
            f"runtime.device = {runtime.device} names one device, but runtime.gpus = {n} needs one GPU per rank; "
            "set runtime.device: auto (or cuda), or runtime.gpus: 1"
        )
    cuda = runtime.device != "cpu" and torch.cuda.is_available()
    visible = torch.cuda.device_count() if cuda else 0
    if runtime.device != "cpu" and n > visible:
        fix = f"at most {visible}" if visible else f"1, or runtime.device: cpu for {n} gloo ranks on the CPU"
        raise ParamsError(f"runtime.gpus = {n} but {visible} GPU(s) are visible; set runtime.gpus to {fix}")
    if runtime.backend == "nccl" and not cuda:
        raise ParamsError("runtime.backend = nccl needs CUDA GPUs, and the ranks run on the CPU; use gloo or auto")
    world = n * nodes()
    if cfg.batch_size % world:
        below = cfg.batch_size - cfg.batch_size % world
        raise ParamsError(
            f"{model}.batch_size = {cfg.batch_size} does not split evenly over {world} ranks (runtime.gpus x "
            f"machines); use a multiple of {world}, e.g. {below or world} or {below + world}"
        )


def run_ranks(runtime: RuntimeParams, command: list[str]) -> int:
    """Run `python -m <command>` as runtime.gpus ranks under torchrun's engine and wait for them; returns the
    exit status for DVC: rank 0's when it ended first (it printed why), else 1 with a line naming the rank."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.parse_args(["--nproc-per-node", str(runtime.gpus), "--module", *command])
    try:
        torchrun.run(args)
    except SignalException as stop:  # the ranks got the same signal and saved a checkpoint
        return 128 + stop.sigval
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        if rank != 0:
            how = signal.Signals(-failure.exitcode).name if failure.exitcode < 0 else f"exit status {code}"
            print(
                f"rank {rank} ended first ({how}) and every rank was stopped; `dvc repro` resumes from the last "
                "checkpoint",
                file=sys.stderr,
            )
            return 1
        return code
    return 0

"""Training engine shared by the three training stages.

The whole dataset lives on the device as uint8; each epoch is augmented there in one batched pass.
On CUDA the step (forward, backward, optimizer) is captured once as a CUDA graph and replayed, with
its forward compiled by torch.compile, bf16 autocast and channels_last inputs; loss and accuracy sums
stay on the device and are read once per epoch.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .augment import augment, to_unit_float
from .config import ModelParams, RuntimeParams
from .data import Cifar10, split_indices
from .errors import TrainingError
from .gpus import claim_free_gpu
from .models import split_head
from .paths import GPU_LOCK_DIR, project_root

GRAPH_WARMUP_STEPS = 3


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; training stopped after the current step. `partial` is what
    Trainer.train_epoch(resume=...) needs to finish the epoch exactly as it would have gone."""

    def __init__(self, signum: int, partial: dict):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.partial = partial


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
        raise TrainingError(f"runtime.device = cuda:{index} but only {count} GPU(s) are visible "
                            f"(cuda:0 to cuda:{count - 1}); pick one of those, or auto")
    torch.cuda.set_device(index)  # graphs, streams and RNG calls without a device use this one
    return torch.device("cuda", index)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def configure_backends(runtime: RuntimeParams, device: torch.device) -> None:
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = runtime.cudnn_benchmark
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

    @classmethod
    def resolve(cls, runtime: RuntimeParams) -> Settings:
        """Pick the device, set the torch backends for it, and apply the CUDA-only switches."""
        device = pick_device(runtime.device)
        configure_backends(runtime, device)
        cuda = device.type == "cuda"
        # Compiled kernels are chosen by timing when first compiled, so they can differ between caches.
        compile = runtime.compile and cuda and not runtime.deterministic
        return cls(device, runtime.bf16 and cuda, runtime.channels_last and cuda, runtime.cuda_graphs and cuda,
                   compile, runtime.eval_batch_size, runtime.progress)

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


PER_STEP_SCHEDULERS = ("onecycle", "warmup_cosine")


def effective_lrs(cfg: ModelParams) -> dict[str, float]:
    """The learning rates training starts from (or peaks at, for onecycle): the params' lr times the
    linear-scaling factor batch_size / optimizer.reference_batch_size; the fine-tune's backbone lr if set."""
    lrs = {"effective_lr": cfg.optimizer.lr * cfg.lr_scale()}
    backbone_lr = getattr(cfg, "backbone_lr", None)
    if backbone_lr is not None:
        lrs["effective_backbone_lr"] = backbone_lr * cfg.lr_scale()
    return lrs


def param_groups(model: nn.Module, cfg: ModelParams) -> list[dict]:
    """One group of all trainable parameters, or (with a backbone_lr) the head first, then the backbone."""
    lrs = effective_lrs(cfg)
    if "effective_backbone_lr" not in lrs:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lrs["effective_lr"]}]
    backbone, head = split_head(model)
    return [{"params": head, "lr": lrs["effective_lr"]}, {"params": backbone, "lr": lrs["effective_backbone_lr"]}]


def make_optimizer(model: nn.Module, cfg: ModelParams, settings: Settings) -> torch.optim.Optimizer:
    """The optimizer with float lrs; graph_safe_lr makes them device tensors where the step is captured."""
    groups = param_groups(model, cfg)
    opt = cfg.optimizer
    cuda = settings.device.type == "cuda"
    if opt.name == "sgd":
        # Fused SGD reads a tensor lr on the device (torch's FusedSgdKernel), so its step can be captured.
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=opt.momentum, nesterov=opt.nesterov,
                               weight_decay=opt.weight_decay, fused=cuda or None)
    extra = {"fused": True} if cuda else {}
    if settings.cuda_graphs:
        extra["capturable"] = True
    adam = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return adam(groups, lr=groups[0]["lr"], weight_decay=opt.weight_decay, **extra)


def graph_safe_lr(optimizer: torch.optim.Optimizer, settings: Settings) -> None:
    """A captured CUDA graph bakes in every host-side number of the step, so under cuda_graphs each
    group's lr becomes a device tensor that the captured kernels read (Adam: capturable, SGD: fused).
    Schedulers fill it in place between replays (torch's _update_param_group_val), never re-capturing."""
    if settings.cuda_graphs:
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=settings.device)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """lr factor: linear rise to 1 over warmup_steps, then a half cosine down to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: ModelParams,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Step and cosine step once per epoch; onecycle and warmup_cosine once per training step."""
    sched = cfg.scheduler
    lr_scheduler = torch.optim.lr_scheduler
    total_steps = cfg.epochs * steps_per_epoch
    if sched.name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=sched.step_size, gamma=sched.gamma)
    if sched.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if sched.name == "onecycle":  # momentum stays fixed: the captured step bakes it in
        return lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                       total_steps=total_steps, pct_start=sched.pct_start,
                                       div_factor=sched.div_factor, final_div_factor=sched.final_div_factor,
                                       cycle_momentum=False)
    if sched.name == "warmup_cosine":
        warmup_steps = min(round(sched.warmup_epochs * steps_per_epoch), total_steps - 1)
        return lr_scheduler.LambdaLR(optimizer, partial(warmup_cosine, warmup_steps=warmup_steps,
                                                        total_steps=total_steps))
    return lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def steps_per_epoch(n: int, batch_size: int) -> tuple[int, int]:
    """(images used, steps) per epoch: BatchNorm can't train on one image, so a last batch of one is
    dropped (the dropped image is in a random place each epoch)."""
    if n % batch_size == 1:
        n -= 1
    return n, -(-n // batch_size)


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


class TrainStep:
    """One optimizer step on a batch; sums of loss and correct predictions accumulate on the device.

    Steps at the full batch size run the forward pass through torch.compile (when on) and replay a
    CUDA graph of the whole step (when on). Other batch sizes (the epoch's last, partial batch) run
    eagerly on the same tensors, so exactly one graph is compiled and captured.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, settings: Settings, batch_size: int,
                 label_smoothing: float = 0.0):
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.label_smoothing = label_smoothing
        self.loss_sum = torch.zeros((), device=settings.device)
        self.correct = torch.zeros((), dtype=torch.long, device=settings.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.batch_size = batch_size
        self.full_forward = torch.compile(self._forward, dynamic=False) if settings.compile else self._forward
        self.first_step_seconds: float | None = None  # warm-up, compile and capture of the first full step

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.correct.zero_()

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.settings.autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return logits, loss

    def _step(self, x: torch.Tensor, y: torch.Tensor, forward: Callable) -> None:
        self.optimizer.zero_grad(set_to_none=False)
        logits, loss = forward(x, y)
        loss.backward()
        self.optimizer.step()
        self.loss_sum.add_(loss.detach().float() * y.shape[0])
        self.correct.add_((logits.argmax(1) == y).sum())

    def full_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.graph is None:
            self._step(x, y, self.full_forward)
            return
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape[0] != self.batch_size:
            self._step(x, y, self._forward)
        elif self.first_step_seconds is None:
            start = time.perf_counter()
            if self.settings.cuda_graphs:
                self._capture(x, y)
            self.full_step(x, y)
            synchronize(self.settings.device)
            self.first_step_seconds = time.perf_counter() - start
        else:
            self.full_step(x, y)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Warm up (and compile) on a side stream, undo the warm-up's updates, then capture the step."""
        model_state = copy.deepcopy(self.model.state_dict())
        optim_state = copy.deepcopy(self.optimizer.state_dict())["state"]
        sums = (self.loss_sum.clone(), self.correct.clone())
        rng = torch.cuda.get_rng_state()
        self.static_x, self.static_y = x.clone(), y.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP_STEPS):
                self._step(self.static_x, self.static_y, self.full_forward)
        torch.cuda.current_stream().wait_stream(stream)
        self.model.load_state_dict(model_state)
        restore_optimizer_state(self.optimizer, optim_state)
        self.loss_sum.copy_(sums[0])
        self.correct.copy_(sums[1])
        torch.cuda.set_rng_state(rng)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(self.static_x, self.static_y, self.full_forward)
        self.graph = graph


def restore_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Copy saved per-parameter state into the live tensors in place (zero where none was saved),
    so tensors a CUDA graph captured stay valid."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        for key, value in optimizer.state[param].items():
            if torch.is_tensor(value):
                if index in saved and key in saved[index]:
                    value.copy_(saved[index][key])
                else:
                    value.zero_()


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


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_seconds: float
    images_per_second: float


@dataclass
class DeviceData:
    """Train and validation data resident on the device."""

    train_x: torch.Tensor  # uint8 [N, 3, 32, 32]
    train_y: torch.Tensor
    val_x: torch.Tensor  # float [M, 3, 32, 32] in [0, 1]
    val_y: torch.Tensor

    @classmethod
    def from_numpy(cls, train_x, train_y, val_x, val_y, device: torch.device) -> DeviceData:
        def images(a):
            return torch.from_numpy(a).to(device).permute(0, 3, 1, 2).contiguous()

        def labels(a):
            return torch.from_numpy(a).long().to(device)

        return cls(images(train_x), labels(train_y), to_unit_float(images(val_x)), labels(val_y))

    @classmethod
    def split(cls, data: Cifar10, val_size: int, seed: int, device: torch.device) -> DeviceData:
        """The seeded train/validation split of the training images, moved to the device."""
        train_idx, val_idx = split_indices(len(data.train_y), val_size, seed)
        return cls.from_numpy(data.train_x[train_idx], data.train_y[train_idx],
                              data.train_x[val_idx], data.train_y[val_idx], device)


@dataclass
class Trainer:
    name: str
    model: nn.Module
    cfg: ModelParams
    settings: Settings
    data: DeviceData
    generator: torch.Generator
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False)
    stop_signal: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.model.to(self.settings.device)
        if self.settings.channels_last and not self.settings.compile:
            # Under compile inductor picks the weights' layout (channels_last weights made it fail an
            # assertion in convolution_backward for ResNet-34).
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, self.cfg, self.settings)
        self.images, self.steps = steps_per_epoch(self.data.train_x.shape[0], self.cfg.batch_size)
        self.scheduler = make_scheduler(self.optimizer, self.cfg, self.steps)
        self.per_step = self.cfg.scheduler.name in PER_STEP_SCHEDULERS
        graph_safe_lr(self.optimizer, self.settings)
        self.step = TrainStep(self.model, self.optimizer, self.settings, self.cfg.batch_size,
                              self.cfg.label_smoothing)

    def validate(self) -> tuple[float, float]:
        with explain_oom(f"validating {self.name}", "runtime.eval_batch_size", self.settings.eval_batch_size):
            logits = predict(self.model, self.data.val_x, self.settings)
        return loss_and_accuracy(logits, self.data.val_y)

    def train_epoch(self, epoch: int, resume: dict | None = None) -> EpochResult:
        """One epoch; `resume` (from Interrupted.partial) continues an interrupted one."""
        start = time.perf_counter()
        if resume is not None:
            self.generator.set_state(resume["generator"])
        generator_at_start = self.generator.get_state()
        order = torch.randperm(self.data.train_x.shape[0], device=self.settings.device, generator=self.generator)
        xs = self.settings.layout(augment(self.data.train_x[order], self.cfg.augment, self.generator))
        ys = self.data.train_y[order]
        lr = current_lr(self.optimizer)  # the lr logged for the epoch: at its start
        self.model.train()
        self.step.reset()
        done, earlier_seconds = 0, 0.0
        if resume is not None:
            done, earlier_seconds, lr = resume["steps"], resume["seconds"], resume["lr"]
            self.step.loss_sum.fill_(resume["loss_sum"])
            self.step.correct.fill_(resume["correct"])
        batch, n, steps = self.cfg.batch_size, self.images, self.steps
        with self._progress(steps, done, epoch) as advance:
            for index in range(done, steps):
                self.step(xs[index * batch : (index + 1) * batch], ys[index * batch : (index + 1) * batch])
                if self.per_step:
                    self.scheduler.step()
                advance()
                if self.stop_signal is not None and index + 1 < steps:
                    raise Interrupted(self.stop_signal, {
                        "epoch": epoch, "steps": index + 1, "generator": generator_at_start, "lr": lr,
                        "loss_sum": self.step.loss_sum.item(), "correct": self.step.correct.item(),
                        "seconds": earlier_seconds + time.perf_counter() - start})
            train_loss, train_acc = (torch.stack([self.step.loss_sum, self.step.correct.float()]) / n).tolist()
        train_seconds = earlier_seconds + time.perf_counter() - start
        if not self.per_step:
            self.scheduler.step()
        val_loss, val_acc = self.validate()
        return EpochResult(epoch, train_loss, train_acc, val_loss, val_acc, lr,
                           earlier_seconds + time.perf_counter() - start, n / train_seconds)

    @contextmanager
    def _progress(self, steps: int, done: int, epoch: int) -> Iterator[Callable[[], None]]:
        from tqdm import tqdm

        with tqdm(total=steps, initial=done, desc=f"{self.name} epoch {epoch}/{self.cfg.epochs}", unit="step",
                  disable=not self.settings.progress, leave=False, mininterval=0.5) as bar:
            yield bar.update

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM finish the current step, then raise Interrupted."""

        def handler(signum, _frame):
            self.stop_signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        graph_safe_lr(self.optimizer, self.settings)
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])

"""The optimizer and learning-rate schedule for a model's params.

CUDA graphs (runtime.cuda_graphs): a captured step bakes in every host-side number it reads, so the
optimizer must read its lr from a device tensor that schedulers fill in place between replays (torch's
_update_param_group_val): Adam and AdamW run `capturable`, SGD runs `fused` (torch's FusedSgdKernel
reads a tensor lr). make_optimizer and load_state are the only places that apply this rule.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from cifar_pipeline.core.config import CnnParams, ModelParams
from cifar_pipeline.engine.device import Settings
from cifar_pipeline.engine.models import split_head
from cifar_pipeline.engine.whitening import WhiteningStem

PER_STEP_SCHEDULERS = ("onecycle", "warmup_cosine", "linear")
Scheduler = torch.optim.lr_scheduler.LRScheduler


def effective_lrs(cfg: ModelParams) -> dict[str, float]:
    """The learning rates training starts from (or peaks at, for onecycle): the params' lr times the
    linear-scaling factor batch_size / optimizer.reference_batch_size; the fine-tune's backbone lr if set."""
    lrs = {"effective_lr": cfg.optimizer.lr * cfg.lr_scale()}
    backbone_lr = getattr(cfg, "backbone_lr", None)
    if backbone_lr is not None:
        lrs["effective_backbone_lr"] = backbone_lr * cfg.lr_scale()
    return lrs


def param_groups(model: nn.Module, cfg: ModelParams) -> list[dict]:
    """One group of all trainable parameters, or (with a backbone_lr) the head first, then the backbone,
    or (with the fast-training switches) the groups of fast_param_groups."""
    lrs = effective_lrs(cfg)
    opt = cfg.optimizer
    if opt.decoupled or opt.bias_lr_scale != 1 or (isinstance(cfg, CnnParams) and cfg.wide.whiten_bias_epochs):
        return fast_param_groups(model, cfg, lrs["effective_lr"])
    if "effective_backbone_lr" not in lrs:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lrs["effective_lr"]}]
    backbone, head = split_head(model)
    return [{"params": head, "lr": lrs["effective_lr"]}, {"params": backbone, "lr": lrs["effective_backbone_lr"]}]


def fast_param_groups(model: nn.Module, cfg: ModelParams, lr: float) -> list[dict]:
    """airbench's groups: BatchNorm biases at lr * bias_lr_scale, the whitening stem's bias (trained for its
    first wide.whiten_bias_epochs only: `frozen_after_epochs`), the rest at lr. Each group's weight_decay is
    set so that every parameter decays by the same step (decoupled: weight_decay * the lr scale)."""
    opt = cfg.optimizer
    decay_per_lr = opt.weight_decay / opt.lr if opt.decoupled else opt.weight_decay
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    stem_biases = {id(m.bias) for m in model.modules() if isinstance(m, WhiteningStem)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in bn_biases | stem_biases], "lr": lr},
        {"params": [p for p in trainable if id(p) in bn_biases], "lr": lr * opt.bias_lr_scale},
    ]
    if stem_biases and isinstance(cfg, CnnParams) and cfg.wide.whiten_bias_epochs:
        frozen = {"frozen_after_epochs": cfg.wide.whiten_bias_epochs}
        groups.append({"params": [p for p in trainable if id(p) in stem_biases], "lr": lr, **frozen})
    for group in groups:
        group["weight_decay"] = decay_per_lr * lr / group["lr"]
    return [g for g in groups if g["params"]]


def make_optimizer(
    model: nn.Module, cfg: ModelParams, settings: Settings, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Scheduler]:
    """The optimizer and its scheduler; the scheduler is built on float lrs, then (under cuda_graphs) the
    lrs become device tensors."""
    groups = param_groups(model, cfg)
    opt = cfg.optimizer
    cuda = settings.device.type == "cuda"
    if opt.name == "sgd":
        optimizer = torch.optim.SGD(
            groups,
            lr=groups[0]["lr"],
            momentum=opt.momentum,
            nesterov=opt.nesterov,
            weight_decay=opt.weight_decay,
            fused=cuda or None,
        )
    else:
        extra = {"fused": True} if cuda else {}
        if settings.cuda_graphs:
            extra["capturable"] = True
        adam = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
        optimizer = adam(groups, lr=groups[0]["lr"], weight_decay=opt.weight_decay, **extra)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    _graph_safe_lr(optimizer, settings)
    return optimizer, scheduler


def load_state(optimizer: torch.optim.Optimizer, scheduler: Scheduler, state: dict, settings: Settings) -> None:
    """Restore what state_dict() saved ({"optimizer", "scheduler"}); the lrs become device tensors again."""
    optimizer.load_state_dict(state["optimizer"])
    _graph_safe_lr(optimizer, settings)
    scheduler.load_state_dict(state["scheduler"])


def _graph_safe_lr(optimizer: torch.optim.Optimizer, settings: Settings) -> None:
    if settings.cuda_graphs:
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), device=settings.device)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """lr factor: linear rise to 1 over warmup_steps, then a half cosine down to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))


def linear(step: int, warmup_steps: int, total_steps: int, start: float, end: float) -> float:
    """lr factor: linear from `start` to 1 over warmup_steps, then linear to `end` at total_steps."""
    if step < warmup_steps:
        return start + (1 - start) * step / warmup_steps
    return 1 + (end - 1) * (step - warmup_steps) / (total_steps - warmup_steps)


def until(step: int, factor, last: int) -> float:
    """factor(step) before step `last`, 0 from then on: a param group that stops training."""
    return factor(step) if step < last else 0.0


def per_group(optimizer: torch.optim.Optimizer, factor, steps_per_epoch: int) -> list:
    """`factor` for each param group, cut to 0 after a group's frozen_after_epochs."""
    return [
        partial(until, factor=factor, last=g["frozen_after_epochs"] * steps_per_epoch)
        if "frozen_after_epochs" in g
        else factor
        for g in optimizer.param_groups
    ]


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: ModelParams, steps_per_epoch: int) -> Scheduler:
    """Step and cosine step once per epoch; onecycle, warmup_cosine and linear once per training step."""
    sched = cfg.scheduler
    lr_scheduler = torch.optim.lr_scheduler
    total_steps = cfg.epochs * steps_per_epoch
    if sched.name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=sched.step_size, gamma=sched.gamma)
    if sched.name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    if sched.name == "onecycle":  # momentum stays fixed: the captured step bakes it in
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=sched.pct_start,
            div_factor=sched.div_factor,
            final_div_factor=sched.final_div_factor,
            cycle_momentum=False,
        )
    if sched.name == "warmup_cosine":
        warmup_steps = min(round(sched.warmup_epochs * steps_per_epoch), total_steps - 1)
        factor = partial(warmup_cosine, warmup_steps=warmup_steps, total_steps=total_steps)
    elif sched.name == "linear":
        warmup_steps = min(int(sched.pct_start * total_steps), total_steps - 1)
        factor = partial(
            linear, warmup_steps=warmup_steps, total_steps=total_steps, start=sched.start_factor, end=sched.end_factor
        )
    else:
        factor = constant
    if any("frozen_after_epochs" in g for g in optimizer.param_groups):
        return lr_scheduler.LambdaLR(optimizer, per_group(optimizer, factor, steps_per_epoch))
    return lr_scheduler.LambdaLR(optimizer, factor)


def constant(_step: int) -> float:
    return 1.0


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])

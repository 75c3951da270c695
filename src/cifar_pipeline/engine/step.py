"""One training step: forward, loss, backward and optimizer step, compiled and captured as a CUDA graph
where the settings say so. Loss and accuracy sums accumulate on the device."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cifar_pipeline.engine.device import Settings, synchronize

GRAPH_WARMUP_STEPS = 3


class TrainStep:
    """Steps at the full batch size run the forward pass through torch.compile (when on) and replay a
    CUDA graph of the whole step (when on). Other batch sizes (the epoch's last, partial batch) run
    eagerly on the same tensors, so exactly one graph is compiled and captured.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        settings: Settings,
        batch_size: int,
        label_smoothing: float = 0.0,
    ):
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.label_smoothing = label_smoothing
        self.loss_sum = torch.zeros((), device=settings.device)
        self.correct = torch.zeros((), dtype=torch.long, device=settings.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.batch_size = batch_size
        self.full_forward = torch.compile(self._forward, dynamic=False) if settings.compile else self._forward
        self.first_step_seconds: float | None = None  # warm-up, compile and capture of the first full step

    def reset(self, loss_sum: float = 0.0, correct: int = 0) -> None:
        """Start the sums afresh, or from an interrupted epoch's."""
        self.loss_sum.fill_(loss_sum)
        self.correct.fill_(correct)

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

"""Lookahead on the weights (airbench): a running average of every float tensor of the model's state
(weights and BatchNorm statistics) that the trained weights are pulled back to every few steps.

At step t of T the sync is `average += (1 - d) * (weights - average); weights = average` with
d = decay**every * (t / T)**3: early on the average follows the weights, late in training it averages
over many steps. A sync also closes each epoch, so validation, the best checkpoint and the saved model use
the averaged weights; the final one keeps the average as it is (d = 1)."""

from __future__ import annotations

import torch
from torch import nn

from cifar_pipeline.core.fast_params import LookaheadParams


class Lookahead:
    def __init__(self, model: nn.Module, cfg: LookaheadParams, total_steps: int):
        self.every, self.decay, self.total_steps = cfg.every, cfg.decay, total_steps
        self.weights = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.average = [t.clone() for t in self.weights]

    def after_step(self, step: int, epoch_end: bool) -> None:
        """Called after training step `step` (1-based, counted over the whole run)."""
        if step >= self.total_steps:
            decay = 1.0
        elif step % self.every == 0 or epoch_end:
            decay = self.decay**self.every * (step / self.total_steps) ** 3
        else:
            return
        torch._foreach_lerp_(self.average, self.weights, 1 - decay)
        torch._foreach_copy_(self.weights, self.average)

    def state_dict(self) -> dict:
        return {"average": list(self.average)}

    def load_state_dict(self, state: dict) -> None:
        torch._foreach_copy_(
            self.average, [t.to(a.device) for t, a in zip(state["average"], self.average, strict=True)]
        )


def make_lookahead(model: nn.Module, cfg: LookaheadParams, total_steps: int) -> Lookahead | None:
    return Lookahead(model, cfg, total_steps) if cfg.every else None

"""Typed training progress: where an interrupted epoch stopped (EpochCursor), one finished epoch
(EpochResult), and a run's progress (RunProgress). The resume checkpoint stores them as plain dicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class EpochCursor:
    """An epoch stopped after `steps` steps: what Trainer.train_epoch needs to finish it exactly as it
    would have gone."""

    epoch: int
    steps: int
    generator: torch.Tensor  # the data generator's state at the epoch's start
    lr: float  # the lr logged for the epoch: at its start
    loss_sum: float
    correct: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


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
class RunProgress:
    """A run so far: the last finished epoch, an unfinished epoch's cursor, the history (one row per
    finished epoch), the best epoch and its weights (on the CPU), and the MLflow run it logs to."""

    run_id: str
    best_model: dict
    epoch: int = 0
    partial: EpochCursor | None = None
    history: list[dict] = field(default_factory=list)
    best_val_acc: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0

    def finish_epoch(self, result: EpochResult, weights: Callable[[], dict]) -> None:
        """Record a finished epoch; if it is the best so far, weights() (a CPU copy) is the best model."""
        self.epoch, self.partial = result.epoch, None
        self.train_seconds += result.epoch_seconds
        self.history.append(asdict(result))
        if result.val_acc > self.best_val_acc:
            self.best_val_acc, self.best_epoch = result.val_acc, result.epoch
            self.best_model = weights()

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "partial": self.partial.to_dict() if self.partial else None,
            "history": list(self.history),
            "best": {"val_acc": self.best_val_acc, "epoch": self.best_epoch},
            "train_seconds": self.train_seconds,
            "best_model": self.best_model,
            "run_id": self.run_id,
        }

    @classmethod
    def from_dict(cls, state: dict) -> RunProgress:
        partial = state["partial"]
        return cls(
            state["run_id"],
            state["best_model"],
            state["epoch"],
            EpochCursor(**partial) if partial else None,
            list(state["history"]),
            state["best"]["val_acc"],
            state["best"]["epoch"],
            state["train_seconds"],
        )

"""What a rank other than 0 runs in a training of several ranks: rank 0's epochs, collective for collective
(the same start or resume, steps, stop agreements and reductions), writing and logging nothing."""

from __future__ import annotations

from cifar_pipeline.core import paths
from cifar_pipeline.core.config import Params
from cifar_pipeline.core.errors import Interrupted
from cifar_pipeline.engine import checkpoint
from cifar_pipeline.engine.device import Settings
from cifar_pipeline.engine.loader import DeviceData
from cifar_pipeline.engine.progress import EpochCursor
from cifar_pipeline.engine.trainer import Trainer, build_trainer
from cifar_pipeline.training.stage import check_finite


class RankRun:
    def __init__(self, params: Params, name: str, settings: Settings, data: DeviceData):
        self.params, self.name, self.settings, self.data = params, name, settings, data

    def run(self) -> None:
        state = self.settings.ranks.from_main(None)  # rank 0's resume checkpoint, or None for a fresh start
        trainer, done, partial = self._resume(state) if state is not None else (None, 0, None)
        if trainer is None:
            trainer = build_trainer(self.params, self.name, self.settings, self.data, pretrained=True)
        epochs = self.params.model(self.name).epochs
        with trainer.stop_on_signals():
            for epoch in range(done + 1, epochs + 1):
                result = trainer.train_epoch(epoch, partial)
                partial = None
                check_finite(result, trainer, paths.STAGES[self.name])
                stop = trainer.agreed_stop()
                if stop is not None and epoch < epochs:
                    raise Interrupted(stop)

    def _resume(self, state: dict) -> tuple[Trainer | None, int, EpochCursor | None]:
        """As StageRun._resume: a checkpoint that doesn't fit this code starts afresh there and here."""
        try:
            trainer = build_trainer(self.params, self.name, self.settings, self.data)
            trainer.load_state(state["trainer"])
            checkpoint.set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError):
            return None, 0, None
        partial = state["partial"]
        return trainer, state["epoch"], EpochCursor(**partial) if partial else None

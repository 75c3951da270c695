"""The training loop: a model, its optimizer and step, and its data loader; one epoch at a time,
stoppable by SIGINT/SIGTERM mid-epoch and resumable from where it stopped."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from cifar_pipeline.core.config import ModelParams, Params
from cifar_pipeline.core.errors import Interrupted
from cifar_pipeline.engine import distributed, optim
from cifar_pipeline.engine.device import Settings, explain_oom, loss_and_accuracy, predict, use_project_compile_cache
from cifar_pipeline.engine.loader import DeviceData, Loader
from cifar_pipeline.engine.lookahead import Lookahead, make_lookahead
from cifar_pipeline.engine.models import model_from_params
from cifar_pipeline.engine.progress import EpochCursor, EpochResult
from cifar_pipeline.engine.step import TrainStep
from cifar_pipeline.engine.whitening import fit_whitening


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """A model with its optimizer, schedule, step and loader (build one with build_trainer)."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        cfg: ModelParams,
        settings: Settings,
        loader: Loader,
        optimizer: torch.optim.Optimizer,
        scheduler: optim.Scheduler,
        step: TrainStep,
        lookahead: Lookahead | None = None,
    ):
        self.name, self.model, self.cfg, self.settings, self.loader = name, model, cfg, settings, loader
        self.optimizer, self.scheduler, self.step, self.lookahead = optimizer, scheduler, step, lookahead
        self.per_step = cfg.scheduler.name in optim.PER_STEP_SCHEDULERS
        self.stop_signal: int | None = None

    @property
    def data(self) -> DeviceData:
        return self.loader.data

    def validate(self) -> tuple[float, float]:
        oom = explain_oom(f"validating {self.name}", "runtime.eval_batch_size", self.settings.eval_batch_size)
        with oom, self.model.plain_view(not self.cfg.validate_tta):
            if self.settings.ranks:
                return distributed.validate(self.model, self.data.val_x, self.data.val_y, self.settings)
            logits = predict(self.model, self.data.val_x, self.settings)
        return loss_and_accuracy(logits, self.data.val_y)

    def agreed_stop(self) -> int | None:
        """The signal that stops training now: this process's, or with several ranks any rank's (a collective
        call: every rank makes it at the same step)."""
        ranks = self.settings.ranks
        return ranks.agreed_stop(self.stop_signal) if ranks else self.stop_signal

    def _sums(self) -> torch.Tensor:
        """The epoch's loss and correct-prediction sums so far, over all ranks."""
        sums = torch.stack([self.step.loss_sum, self.step.correct.float()])
        return self.settings.ranks.total(sums) if self.settings.ranks else sums

    def train_epoch(self, epoch: int, resume: EpochCursor | None = None) -> EpochResult:
        """One epoch; `resume` (from Interrupted.cursor) finishes an interrupted one."""
        start = time.perf_counter()
        done = resume.steps if resume else 0
        start_state, batches = self.loader.epoch(resume.generator if resume else None, done, epoch)
        lr, earlier_seconds, sums = optim.current_lr(self.optimizer), 0.0, (0.0, 0)  # the lr logged: at the start
        if resume is not None:
            lr, earlier_seconds, sums = resume.lr, resume.seconds, (resume.loss_sum, resume.correct)
            if self.settings.ranks and not self.settings.ranks.main:  # the cursor holds all ranks' sums
                sums = (0.0, 0)
        self.model.train()
        self.step.reset(*sums)
        steps = self.loader.steps
        with self._progress(steps, done, epoch) as advance:
            for index, (x, y) in enumerate(batches, start=done):
                self.step(x, y)
                if self.per_step:
                    self.scheduler.step()
                if self.lookahead:
                    self.lookahead.after_step((epoch - 1) * steps + index + 1, index + 1 == steps)
                advance()
                if index + 1 < steps and (stop := self.agreed_stop()) is not None:
                    loss_sum, correct = self._sums().tolist()
                    seconds = earlier_seconds + time.perf_counter() - start
                    raise Interrupted(
                        stop, EpochCursor(epoch, index + 1, start_state, lr, loss_sum, int(correct), seconds)
                    )
            n = self.loader.images
            train_loss, train_acc = (self._sums() / n).tolist()
        train_seconds = earlier_seconds + time.perf_counter() - start
        if not self.per_step:
            self.scheduler.step()
        val_loss, val_acc = self.validate()
        return EpochResult(
            epoch,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            lr,
            earlier_seconds + time.perf_counter() - start,
            n / train_seconds,
        )

    @contextmanager
    def _progress(self, steps: int, done: int, epoch: int) -> Iterator:
        from tqdm import tqdm

        with tqdm(
            total=steps,
            initial=done,
            desc=f"{self.name} epoch {epoch}/{self.cfg.epochs}",
            unit="step",
            disable=not self.settings.progress,
            leave=False,
            mininterval=0.5,
        ) as bar:
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
            "generator": self.loader.generator.get_state(),
            **({"lookahead": self.lookahead.state_dict()} if self.lookahead else {}),
            "world_size": self.settings.ranks.world_size if self.settings.ranks else 1,
        }

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        optim.load_state(self.optimizer, self.scheduler, state, self.settings)
        self.loader.generator.set_state(state["generator"])
        if self.lookahead:
            self.lookahead.load_state_dict(state["lookahead"])


def build_trainer(params: Params, name: str, settings: Settings, data: DeviceData, pretrained: bool = False) -> Trainer:
    """Model `name` ready to train on `data`, seeded from params.seed: what the training stage and the
    benchmarks run."""
    if settings.compile:
        use_project_compile_cache()
    cfg = params.model(name)
    seed_everything(params.seed)
    model = model_from_params(params, name, pretrained=pretrained)
    ranks = settings.ranks
    if ranks and params.runtime.sync_bn:
        model = distributed.sync_batchnorm(model, settings.device)
    generator = torch.Generator(device=settings.device).manual_seed(params.seed)
    model.to(settings.device)
    if settings.channels_last and not settings.compile:
        # Under compile inductor picks the weights' layout (channels_last weights made it fail an
        # assertion in convolution_backward for ResNet-34).
        model.to(memory_format=torch.channels_last)
    fit_whitening(model, data.train_x)
    place = (ranks.rank, ranks.world_size) if ranks else (0, 1)
    loader = Loader(data, cfg.batch_size, cfg.augment, generator, settings.layout, *place)
    optimizer, scheduler = optim.make_optimizer(model, cfg, settings, loader.steps)
    stepped = distributed.wrap(model, settings) if ranks else model
    step = TrainStep(stepped, optimizer, settings, loader.local_batch, cfg.label_smoothing)
    lookahead = make_lookahead(model, cfg.lookahead, cfg.epochs * loader.steps)
    return Trainer(name, model, cfg, settings, loader, optimizer, scheduler, step, lookahead)

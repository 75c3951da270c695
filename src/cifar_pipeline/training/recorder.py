"""A training run's record: after each epoch, the resume checkpoint (written off the training thread)
and then the epoch's metrics in MLflow, each epoch logged once even across resumes."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

from cifar_pipeline.engine import checkpoint
from cifar_pipeline.engine.progress import RunProgress
from cifar_pipeline.engine.trainer import Trainer
from cifar_pipeline.tracking.run_metadata import epoch_metric
from cifar_pipeline.tracking.store import Tracker


class BackgroundWriter:
    """Runs one job at a time off the training thread (checkpoint write, then its metric log)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                job()
            except BaseException as exc:  # re-raised on the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class Recorder:
    """Checkpoints and logs one stage's run; `logged` holds the epochs already in MLflow."""

    def __init__(self, stage: str, tracker: Tracker, resume_file: Path, key: str):
        self.stage, self.tracker, self.resume_file, self.key = stage, tracker, resume_file, key
        self.writer = BackgroundWriter()
        self.logged: set[int] = set()

    def snapshot(self, trainer: Trainer, progress: RunProgress) -> dict:
        """What the resume checkpoint holds, copied to the CPU now (training goes on while it is written)."""
        return {
            "format": checkpoint.RESUME_FORMAT,
            "key": self.key,
            "trainer": checkpoint.to_cpu(trainer.state()),
            "rng": checkpoint.rng_state(),
            **progress.to_dict(),
        }

    def save(self, trainer: Trainer, progress: RunProgress) -> None:
        checkpoint.save(self.snapshot(trainer, progress), self.resume_file)

    def save_in_background(self, trainer: Trainer, progress: RunProgress, then: Callable[[], None]) -> None:
        """Write the checkpoint of this moment, then call `then`, in the background."""
        snapshot = self.snapshot(trainer, progress)

        def job() -> None:
            checkpoint.save(snapshot, self.resume_file)
            then()

        self.writer.submit(job)

    def epoch_done(self, trainer: Trainer, progress: RunProgress) -> None:
        """Write the checkpoint, then log the epoch, in the background."""
        row = progress.history[-1]
        self.save_in_background(trainer, progress, lambda: self.log_epoch(row))

    def log_epoch(self, row: dict) -> None:
        if row["epoch"] not in self.logged:
            metrics = {epoch_metric(k): v for k, v in row.items() if k != "epoch"}
            self.tracker.log_metrics(metrics, step=row["epoch"])
            self.logged.add(row["epoch"])

    def catch_up(self, progress: RunProgress) -> None:
        """After a resume: log the epochs checkpointed just before a kill but not yet logged."""
        self.logged = self.tracker.logged_steps(epoch_metric("val_acc"))
        for row in progress.history:
            self.log_epoch(row)

    def wait(self) -> None:
        self.writer.wait()

    def settle(self) -> None:
        """Wait for the background write; its own failure is reported, not allowed to hide the first."""
        try:
            self.writer.wait()
        except Exception as exc:
            print(f"{self.stage}: background checkpoint/log write failed too: {exc}", file=sys.stderr)

"""One training-stage execution: resume or start, train with per-epoch checkpoints, track, publish."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from cifar_pipeline.core import paths
from cifar_pipeline.core.config import Params, load_params
from cifar_pipeline.core.data import in_background, load_arrays, md5sum
from cifar_pipeline.core.errors import Diverged, Interrupted, ParamsError
from cifar_pipeline.core.paths import project_root
from cifar_pipeline.engine import checkpoint, distributed
from cifar_pipeline.engine.device import Settings, explain_oom
from cifar_pipeline.engine.loader import DeviceData
from cifar_pipeline.engine.models import finetune_resnet18, imagenet_state_dict
from cifar_pipeline.engine.optim import effective_lrs
from cifar_pipeline.engine.progress import EpochResult, RunProgress
from cifar_pipeline.engine.trainer import Trainer, build_trainer
from cifar_pipeline.tracking.connection import signals_deferred
from cifar_pipeline.tracking.run_metadata import (
    SPLIT_TAG,
    dataset,
    model_description,
    run_name,
    run_params,
    validation_split,
)
from cifar_pipeline.tracking.store import Tracker
from cifar_pipeline.tracking.tags import base_tags, flatten, sweep_tags
from cifar_pipeline.training.adopt import adopt, remember
from cifar_pipeline.training.publish import parameter_counts, write_outputs
from cifar_pipeline.training.recorder import Recorder


def resume_key(params: Params, name: str, device: torch.device, data_md5: str) -> str:
    """Covers the params, the prepared data and the device: a checkpoint made under any other is ignored."""
    return f"{params.stage_key(name)}-{data_md5[:8]}-{device.type}"


def train(params: Params, name: str, params_file: Path = paths.PARAMS) -> dict:
    """Train model `name` as its DVC stage does, once its CLI has checked the outputs and the store
    (preflight.py); returns the summary written to reports/train/."""
    settings = distributed.join(
        Settings.resolve(params.runtime, params.progress, params.model(name).compile), params.runtime
    )
    if settings.ranks and not settings.ranks.main:  # trains alongside rank 0, which alone writes and logs
        from cifar_pipeline.training.ranks import RankRun  # it imports this module

        data = DeviceData.split(load_arrays(paths.DATA), params.data.val_size, params.seed, settings.device)
        return RankRun(params, name, settings, data).run()
    if name == "resnet18":  # missing, broken or mismatched ImageNet weights fail before the data and the store
        finetune_resnet18(params.resnet18, imagenet_state_dict(params.resnet18))
    # Broken data or too few training images fail before the tracking store is touched.
    data_md5 = in_background(md5sum, paths.DATA)
    arrays = load_arrays(paths.DATA)
    data = DeviceData.split(arrays, params.data.val_size, params.seed, settings.device)
    tracker = Tracker(params.mlflow)
    digest = data_md5()
    key = resume_key(params, name, settings.device, digest)
    resume_file = checkpoint.resume_path(project_root() / paths.RESUME_DIR, paths.STAGES[name], key)
    with checkpoint.exclusive(resume_file):
        adopted = adopt(tracker, name, resume_file)
        if adopted is not None:
            return adopted
        return StageRun(
            params,
            name,
            settings,
            tracker,
            data,
            dataset(params, arrays, digest),
            list(arrays.classes),
            resume_file,
            key,
            params_file,
        ).run()


class StageRun:
    """One execution of a training stage: resume or start, the epochs, then the outputs."""

    def __init__(
        self,
        params: Params,
        name: str,
        settings: Settings,
        tracker: Tracker,
        data: DeviceData,
        training_set,
        classes: list[str],
        resume_file: Path,
        key: str,
        params_file: Path = paths.PARAMS,
    ):
        self.params, self.name, self.stage, self.params_file = params, name, paths.STAGES[name], params_file
        self.cfg = params.model(name)
        self.settings, self.tracker, self.resume_file = settings, tracker, resume_file
        self.data, self.training_set, self.classes = data, training_set, classes
        self.recorder = Recorder(self.stage, tracker, resume_file, key)

    def run(self) -> dict:
        try:
            state = self._continuable(checkpoint.load_resume(self.resume_file, self.recorder.key))
            if self.settings.ranks:  # every rank resumes from it, or starts afresh
                self.settings.ranks.from_main(state and {k: state[k] for k in ("trainer", "rng", "epoch", "partial")})
            resumed = state is not None and self._resume(state)
            if not resumed:
                self._start()
            if self.params.mlflow.system_metrics:
                self.tracker.start_system_metrics(resume=resumed)
            with self.trainer.stop_on_signals():
                for epoch in range(self.progress.epoch + 1, self.cfg.epochs + 1):
                    self._epoch(epoch)
                    stop = self.trainer.agreed_stop()
                    if stop is not None and epoch < self.cfg.epochs:
                        raise Interrupted(stop)
                self.recorder.wait()
                check_params_unchanged(self.params, self.name, self.params_file)
                summary = write_outputs(self.params, self.name, self.trainer, self.progress, self.tracker, self.classes)
        except Interrupted as stop:
            with signals_deferred():  # a signal now (torchrun's SIGTERM as another rank ended) waits for the record
                self._save_interrupted(stop)
            raise
        except BaseException as exc:
            with signals_deferred():  # likewise: the run is marked before a signal can end this process
                self.recorder.settle()
                if self.tracker.run_id is not None:  # Ctrl-C before training's handler: KILLED, like a signal in it
                    self.tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            if isinstance(exc, Diverged):  # resuming would only diverge again
                self.resume_file.unlink(missing_ok=True)
            raise
        self.tracker.end("FINISHED")
        remember(self.resume_file, self.name, summary)  # until DVC records it (see adopt.py)
        self.resume_file.unlink(missing_ok=True)
        return summary

    def _continuable(self, state: dict | None) -> dict | None:
        """The checkpoint, or None (with a warning) when its run can't be continued here."""
        if state is None:
            return None
        problem = self.tracker.resume_problem(state["run_id"])  # e.g. mlflow.tracking_uri changed since the kill
        world, saved = (
            self.settings.ranks.world_size if self.settings.ranks else 1,
            state["trainer"].get("world_size", 1),
        )
        if not problem and saved != world:
            problem = f"it was written by a training of {saved} rank(s) and this one has {world}"
        if problem:
            warnings.warn(
                f"resume checkpoint {self.resume_file} can't be continued: {problem}; starting a fresh run",
                stacklevel=2,
            )
            return None
        return state

    def _resume(self, state: dict) -> bool:
        """Continue the checkpointed run, or warn and return False when it doesn't fit this code."""
        try:
            self.trainer = build_trainer(self.params, self.name, self.settings, self.data)
            self.trainer.load_state(state["trainer"])
            checkpoint.set_rng_state(state["rng"])
            self.progress = RunProgress.from_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # e.g. the model's code changed
            warnings.warn(
                f"resume checkpoint {self.resume_file} does not fit this code ({exc}); starting fresh", stacklevel=2
            )
            return False
        self.tracker.reopen(self.progress.run_id)
        self.recorder.catch_up(self.progress)
        within = f" (+{self.progress.partial.steps} steps)" if self.progress.partial else ""
        print(
            f"{self.stage}: resuming MLflow run {self.progress.run_id} after epoch {self.progress.epoch}{within}",
            flush=True,
        )
        return True

    def _start(self) -> None:
        self.trainer = build_trainer(self.params, self.name, self.settings, self.data, pretrained=True)
        model = self.trainer.model
        best_model = checkpoint.to_cpu(model.state_dict())
        tags = {
            **base_tags(self.stage),
            **sweep_tags(self.params),
            "model": self.name,
            SPLIT_TAG: validation_split(self.params, self.training_set.digest),
            "mlflow.note.content": model_description(self.name, self.stage),
        }
        logged = run_params(self.params, self.name, self.settings, parameter_counts(model))
        self.progress = RunProgress(self.tracker.start(run_name(self.name), tags, logged), best_model)
        self.tracker.log_dataset(self.training_set, "training")
        self.tracker.log_metrics(effective_lrs(self.cfg))
        started = f"{self.stage}: started MLflow run {self.progress.run_id}"
        # Written while the first epoch starts; printed once written: from then on a kill resumes this run.
        self.recorder.save_in_background(self.trainer, self.progress, lambda: print(started, flush=True))

    def _epoch(self, epoch: int) -> None:
        with explain_oom(f"training {self.name}", f"{self.name}.batch_size", self.cfg.batch_size):
            result = self.trainer.train_epoch(epoch, self.progress.partial)
        check_finite(result, self.trainer, self.stage)
        self.progress.finish_epoch(result, lambda: checkpoint.to_cpu(self.trainer.model.state_dict()))
        self.recorder.epoch_done(self.trainer, self.progress)
        print(_summary_line(self.stage, result), flush=True)

    def _save_interrupted(self, stop: Interrupted) -> None:
        """Checkpoint where training stopped and mark the MLflow run KILLED."""
        self.recorder.settle()
        self.progress.partial = stop.cursor
        self.recorder.save(self.trainer, self.progress)
        self.tracker.end("KILLED")
        where = (
            f"epoch {stop.cursor.epoch}, step {stop.cursor.steps}" if stop.cursor else f"epoch {self.progress.epoch}"
        )
        print(
            f"{self.stage}: {stop}; checkpoint at {where} saved to {self.resume_file}; run `dvc repro` to resume",
            flush=True,
        )


def check_finite(result: EpochResult, trainer: Trainer, stage: str) -> None:
    """Raise Diverged on a non-finite loss or weights."""
    bad = [
        f"{k} {v}"
        for k, v in (("train_loss", result.train_loss), ("val_loss", result.val_loss))
        if not math.isfinite(v)
    ]
    floats = [t for t in trainer.model.state_dict().values() if t.is_floating_point()]
    if not torch.stack([torch.isfinite(t).all() for t in floats]).all().item():
        bad.append("non-finite weights")
    if bad:
        opt, cfg = f"{trainer.name}.optimizer", trainer.cfg.optimizer
        raise Diverged(
            f"{stage} diverged in epoch {result.epoch} ({', '.join(bad)}); no model was published "
            f"and the MLflow run is marked FAILED. Lower {opt}.lr = {cfg.lr} or "
            f"{opt}.weight_decay = {cfg.weight_decay} and rerun."
        )


def check_params_unchanged(params: Params, name: str, params_file: Path) -> None:
    """The params file must still hold the values this run trained with: DVC records what the file says
    when the stage ends, and a dvc.lock that names other values than the model's would be a lie."""

    def stage_view(p: Params) -> dict:
        return flatten({**p.stage_params(name), "mlflow": p.mlflow.model_dump()})

    trained, now = stage_view(params), stage_view(load_params(params_file))
    changed = [
        f"{k}: {trained.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(trained.keys() | now.keys())
        if trained.get(k) != now.get(k)
    ]
    if changed:
        raise ParamsError(
            f"{params_file} changed while {paths.STAGES[name]} ran ({'; '.join(changed)}). The model was "
            "trained with the old values, so nothing was published. Run `dvc repro` again to train "
            "with the file's values."
        )


def _summary_line(stage: str, r: EpochResult) -> str:
    return (
        f"{stage} epoch {r.epoch}: train_loss {r.train_loss:.4f} train_acc {r.train_acc:.4f} "
        f"val_loss {r.val_loss:.4f} val_acc {r.val_acc:.4f} lr {r.lr:.2e} "
        f"{r.epoch_seconds:.1f}s {r.images_per_second:,.0f} img/s"
    )

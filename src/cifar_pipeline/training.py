"""One training-stage execution: resume or start, train with per-epoch checkpoints, track, write outputs."""

from __future__ import annotations

import csv
import io
import math
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import atomic, checkpoint, paths, registry
from .config import Params, load_params
from .data import load_arrays, md5sum
from .engine import DeviceData, EpochResult, Interrupted, Settings, Trainer, effective_lrs, explain_oom
from .errors import Diverged, ParamsError
from .models import check_weights_path, count_parameters, model_from_params
from .paths import check_writable, project_root
from .run_metadata import dataset, epoch_metric, model_description, run_name, run_params
from .tracking import Tracker, base_tags, check_reachable, flatten, resolve_tracking_uri


def to_cpu(obj):
    """Deep copy of a (nested) state with every tensor on the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


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


PROGRESS_KEYS = ("epoch", "partial", "history", "best", "train_seconds", "best_model", "run_id")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_history(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["epoch"])
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    return dict(zip(("params_trainable", "params_total"), count_parameters(model)))


def resume_key(params: Params, name: str, device: torch.device, data_md5: str) -> str:
    """Covers the params, the prepared data and the device: a checkpoint made under any other is ignored."""
    return f"{params.stage_key(name)}-{data_md5[:8]}-{device.type}"


def use_project_compile_cache() -> None:
    """Keep torch.compile's cache at the project root, so reruns, `dvc exp run --temp` copies and queued
    experiments reuse compiled kernels. A TORCHINDUCTOR_CACHE_DIR set by the user wins, unless it is
    torch's own /tmp default, which torch itself puts into that variable on import."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(project_root() / paths.COMPILE_CACHE_DIR)


def train(params: Params, name: str, params_file: Path = paths.PARAMS) -> dict:
    """Train model `name` as its DVC stage does; returns the summary written to reports/train/."""
    settings = Settings.resolve(params.runtime)
    check_writable(paths.model_dir(name), paths.train_summary(name).parent, paths.history(name).parent,
                   project_root() / paths.RESUME_DIR)
    if name == "resnet18" and params.resnet18.weights_path:
        check_weights_path(params.resnet18)
    check_reachable(resolve_tracking_uri(params.mlflow))  # before the data load; Tracker opens it later
    if settings.compile:
        use_project_compile_cache()
    # Broken data or too few training images fail before the tracking store is touched.
    arrays = load_arrays(paths.DATA)
    data = DeviceData.split(arrays, params.data.val_size, params.seed, settings.device)
    tracker = Tracker(params.mlflow)
    data_md5 = md5sum(paths.DATA)
    key = resume_key(params, name, settings.device, data_md5)
    resume_file = checkpoint.resume_path(project_root() / paths.RESUME_DIR, paths.STAGES[name], key)
    with checkpoint.exclusive(resume_file):
        return StageRun(params, name, settings, tracker, data, dataset(params, arrays, data_md5),
                        list(arrays.classes), resume_file, key, params_file).run()


class StageRun:
    """One execution of a training stage, from start or resume to its outputs."""

    def __init__(self, params: Params, name: str, settings: Settings, tracker: Tracker, data: DeviceData,
                 training_set, classes: list[str], resume_file: Path, key: str, params_file: Path = paths.PARAMS):
        self.params, self.name, self.stage, self.params_file = params, name, paths.STAGES[name], params_file
        self.cfg = params.model(name)
        self.settings, self.tracker, self.resume_file, self.key = settings, tracker, resume_file, key
        self.data, self.training_set, self.classes = data, training_set, classes
        self.writer = BackgroundWriter()
        self.logged: set[int] = set()

    def _build(self, pretrained: bool) -> Trainer:
        seed_everything(self.params.seed)
        model = model_from_params(self.params, self.name, pretrained=pretrained)
        generator = torch.Generator(device=self.settings.device).manual_seed(self.params.seed)
        return Trainer(self.name, model, self.cfg, self.settings, self.data, generator)

    def _resume(self, state: dict) -> bool:
        problem = self.tracker.resume_problem(state["run_id"])
        if problem:  # e.g. mlflow.tracking_uri or mlflow.experiment changed since the kill
            warnings.warn(f"resume checkpoint {self.resume_file} can't be continued: {problem}; starting a fresh run",
                          stacklevel=2)
            return False
        try:
            self.trainer = self._build(pretrained=False)
            self.trainer.load_state(state["trainer"])
            checkpoint.set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # e.g. the model's code changed
            warnings.warn(f"resume checkpoint {self.resume_file} does not fit this code ({exc}); starting fresh",
                          stacklevel=2)
            return False
        self.progress = {k: state[k] for k in PROGRESS_KEYS}
        self.tracker.reopen(self.progress["run_id"])
        self.logged = self.tracker.logged_steps(epoch_metric("val_acc"))
        for row in self.progress["history"]:  # epochs checkpointed just before a kill, not yet logged
            self._log_epoch(row)
        within = f" (+{self.progress['partial']['steps']} steps)" if self.progress["partial"] else ""
        print(f"{self.stage}: resuming MLflow run {self.progress['run_id']} after epoch "
              f"{self.progress['epoch']}{within}", flush=True)
        return True

    def _start(self) -> None:
        self.trainer = self._build(pretrained=True)
        model = self.trainer.model
        self.progress = {"epoch": 0, "partial": None, "history": [], "best": {"val_acc": -1.0, "epoch": 0},
                         "train_seconds": 0.0, "best_model": to_cpu(model.state_dict())}
        tags = {**base_tags(self.stage), "model": self.name,
                "mlflow.note.content": model_description(self.name, self.stage)}
        logged = run_params(self.params, self.name, self.settings, parameter_counts(model))
        self.progress["run_id"] = self.tracker.start(run_name(self.name), tags, logged)
        self.tracker.log_dataset(self.training_set, "training")
        self.tracker.log_metrics(effective_lrs(self.cfg))
        checkpoint.save(self.snapshot(), self.resume_file)  # from here on a kill resumes this run
        print(f"{self.stage}: started MLflow run {self.progress['run_id']}", flush=True)

    def snapshot(self) -> dict:
        return {"format": checkpoint.RESUME_FORMAT, "key": self.key, "trainer": to_cpu(self.trainer.state()),
                "rng": checkpoint.rng_state(), **self.progress, "history": list(self.progress["history"])}

    def _save_and_log(self, snapshot: dict, row: dict) -> None:
        checkpoint.save(snapshot, self.resume_file)
        self._log_epoch(row)

    def _log_epoch(self, row: dict) -> None:
        if row["epoch"] not in self.logged:
            metrics = {epoch_metric(k): v for k, v in row.items() if k != "epoch"}
            self.tracker.log_metrics(metrics, step=row["epoch"])
            self.logged.add(row["epoch"])

    def run(self) -> dict:
        try:
            state = checkpoint.load_resume(self.resume_file, self.key)
            resumed = state is not None and self._resume(state)
            if not resumed:
                self._start()
            if self.params.mlflow.system_metrics:
                self.tracker.start_system_metrics(resume=resumed)
            with self.trainer.stop_on_signals():
                for epoch in range(self.progress["epoch"] + 1, self.cfg.epochs + 1):
                    self._epoch(epoch)
                    if self.trainer.stop_signal is not None and epoch < self.cfg.epochs:
                        raise Interrupted(self.trainer.stop_signal, None)
                self.writer.wait()
                check_params_unchanged(self.params, self.name, self.params_file)
                summary = _write_outputs(self.params, self.name, self.trainer, self.progress, self.tracker,
                                         self.classes)
        except Interrupted as stop:
            progress = self.progress
            self._settle_writer()
            progress["partial"] = stop.partial
            checkpoint.save(self.snapshot(), self.resume_file)
            self.tracker.end("KILLED")
            where = (f"epoch {stop.partial['epoch']}, step {stop.partial['steps']}" if stop.partial
                     else f"epoch {progress['epoch']}")
            print(f"{self.stage}: {stop}; checkpoint at {where} saved to {self.resume_file}; "
                  "run `dvc repro` to resume", flush=True)
            raise SystemExit(128 + stop.signum) from None
        except BaseException as exc:
            self._settle_writer()
            if self.tracker.run_id is not None:  # Ctrl-C before training's handler: KILLED, like a signal in it
                self.tracker.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            if isinstance(exc, Diverged):  # resuming would only diverge again
                self.resume_file.unlink(missing_ok=True)
            raise
        self.tracker.end("FINISHED")
        self.resume_file.unlink(missing_ok=True)
        return summary

    def _epoch(self, epoch: int) -> None:
        progress = self.progress
        with explain_oom(f"training {self.name}", f"{self.name}.batch_size", self.cfg.batch_size):
            result = self.trainer.train_epoch(epoch, progress["partial"])
        self._check_finite(result)
        progress.update(epoch=epoch, partial=None, train_seconds=progress["train_seconds"] + result.epoch_seconds)
        progress["history"].append(asdict(result))
        if result.val_acc > progress["best"]["val_acc"]:
            progress["best"] = {"val_acc": result.val_acc, "epoch": epoch}
            progress["best_model"] = to_cpu(self.trainer.model.state_dict())
        snapshot = self.snapshot()
        self.writer.submit(lambda: self._save_and_log(snapshot, asdict(result)))
        print(_summary_line(self.stage, result), flush=True)

    def _check_finite(self, result: EpochResult) -> None:
        bad = [f"{k} {v}" for k, v in (("train_loss", result.train_loss), ("val_loss", result.val_loss))
               if not math.isfinite(v)]
        floats = [t for t in self.trainer.model.state_dict().values() if t.is_floating_point()]
        if not torch.stack([torch.isfinite(t).all() for t in floats]).all().item():
            bad.append("non-finite weights")
        if bad:
            opt = f"{self.name}.optimizer"
            raise Diverged(f"{self.stage} diverged in epoch {result.epoch} ({', '.join(bad)}); no model was published "
                           f"and the MLflow run is marked FAILED. Lower {opt}.lr = {self.cfg.optimizer.lr} or "
                           f"{opt}.weight_decay = {self.cfg.optimizer.weight_decay} and rerun.")

    def _settle_writer(self) -> None:
        """Wait for the background write; its own failure is reported, not allowed to hide the first."""
        try:
            self.writer.wait()
        except Exception as exc:
            print(f"{self.stage}: background checkpoint/log write failed too: {exc}", file=sys.stderr)


def check_params_unchanged(params: Params, name: str, params_file: Path) -> None:
    """The params file must still hold the values this run trained with: DVC records what the file says
    when the stage ends, and a dvc.lock that names other values than the model's would be a lie."""
    def stage_view(p: Params) -> dict:
        return flatten({**p.stage_params(name), "mlflow": p.mlflow.model_dump()})

    trained, now = stage_view(params), stage_view(load_params(params_file))
    changed = [f"{k}: {trained.get(k)!r} -> {now.get(k)!r}" for k in sorted(trained.keys() | now.keys())
               if trained.get(k) != now.get(k)]
    if changed:
        raise ParamsError(f"{params_file} changed while {paths.STAGES[name]} ran ({'; '.join(changed)}). The model was "
                          "trained with the old values, so nothing was published. Run `dvc repro` again to train "
                          "with the file's values.")


def _summary_line(stage: str, r: EpochResult) -> str:
    return (f"{stage} epoch {r.epoch}: train_loss {r.train_loss:.4f} train_acc {r.train_acc:.4f} "
            f"val_loss {r.val_loss:.4f} val_acc {r.val_acc:.4f} lr {r.lr:.2e} "
            f"{r.epoch_seconds:.1f}s {r.images_per_second:,.0f} img/s")


def _write_outputs(params: Params, name: str, trainer: Trainer, progress: dict, tracker: Tracker,
                   classes: list[str]) -> dict:
    cfg_dump = params.model(name).model_dump()
    out_dir = paths.model_dir(name)
    best_file, last_file = out_dir / "best.pt", out_dir / "last.pt"
    checkpoint.save(checkpoint.model_file(name, cfg_dump, classes, progress["best_model"]), best_file)
    checkpoint.save(checkpoint.model_file(name, cfg_dump, classes, to_cpu(trainer.model.state_dict())), last_file)
    write_history(progress["history"], paths.history(name))

    history = progress["history"]
    summary = {
        "best_val_acc": progress["best"]["val_acc"],
        "best_epoch": progress["best"]["epoch"],
        "epochs": len(history),
        "train_seconds": progress["train_seconds"],
        "first_step_seconds": trainer.step.first_step_seconds,  # this process's; None if it ran no full step
        "images_per_second": float(np.median([h["images_per_second"] for h in history])) if history else 0.0,
        **parameter_counts(trainer.model),
    }
    atomic.write_json(paths.train_summary(name), summary)
    for path in (best_file, last_file):
        tracker.log_artifact(path, "checkpoints")
    tracker.log_artifact(paths.history(name), "history")
    tracker.log_metrics({f"summary/{k}": summary[k] for k in ("best_val_acc", "train_seconds",
                                                               "first_step_seconds") if summary[k] is not None})

    start = time.perf_counter()
    example = (trainer.data.val_x[:2] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    published = registry.publish(tracker, best_file, classes, example, registry.registered_name(params.mlflow, name))
    atomic.write_json(paths.run_info(name), {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id,
                                             "tracking_uri": tracker.uri, **published})
    registered = (f", registered as {published['registered_model']} v{published['version']}"
                  if "version" in published else "")
    print(f"{paths.STAGES[name]}: logged best model (epoch {summary['best_epoch']}) to MLflow run "
          f"{tracker.run_id}{registered} in {time.perf_counter() - start:.1f}s", flush=True)
    return summary

"""One training-stage execution: resume or start, train with per-epoch checkpoints, track, write outputs."""

from __future__ import annotations

import csv
import io
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import atomic, checkpoint, paths
from .config import Params
from .data import load_arrays, split_indices
from .engine import DeviceData, EpochResult, Interrupted, Settings, Trainer, configure_backends, explain_oom, pick_device
from .models import count_parameters, model_from_params
from .paths import project_root
from .tracking import Tracker, base_tags


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


def train(params: Params, name: str) -> dict:
    """Train model `name` as its DVC stage does; returns the summary written to reports/train/."""
    stage = paths.STAGES[name]
    cfg = params.model(name)
    device = pick_device(params.runtime.device)
    configure_backends(params.runtime, device)
    settings = Settings.resolve(params.runtime, device)
    tracker = Tracker(params.mlflow)

    data = load_arrays(paths.DATA)
    train_idx, val_idx = split_indices(len(data.train_y), params.data.val_size, params.seed)
    key = params.stage_key(name)
    resume_file = checkpoint.resume_path(project_root() / paths.RESUME_DIR, stage, key)
    state = checkpoint.load_resume(resume_file, key)

    seed_everything(params.seed)
    model = model_from_params(params, name, pretrained=state is None)
    device_data = DeviceData.from_numpy(data.train_x[train_idx], data.train_y[train_idx],
                                        data.train_x[val_idx], data.train_y[val_idx], device)
    generator = torch.Generator(device=device).manual_seed(params.seed)
    trainer = Trainer(name, model, cfg, settings, device_data, generator)
    trainable, total = count_parameters(model)

    if state is None:
        progress = {"epoch": 0, "partial": None, "history": [], "best": {"val_acc": -1.0, "epoch": 0},
                    "train_seconds": 0.0, "best_model": to_cpu(model.state_dict())}
        progress["run_id"] = tracker.start(name, {**base_tags(stage), "model": name}, params.stage_params(name))
        tracker.log_metrics({"params_trainable": trainable, "params_total": total})
        logged: set[int] = set()
    else:
        trainer.load_state(state["trainer"])
        checkpoint.set_rng_state(state["rng"])
        progress = {k: state[k] for k in PROGRESS_KEYS}
        tracker.reopen(progress["run_id"])
        logged = tracker.logged_steps("val_acc")
        within = f" (+{progress['partial']['steps']} steps)" if progress["partial"] else ""
        print(f"{stage}: resuming MLflow run {progress['run_id']} after epoch {progress['epoch']}{within}",
              flush=True)

    def save_and_log(snapshot: dict, rows: list[dict]) -> None:
        checkpoint.save(snapshot, resume_file)
        for row in rows:
            if row["epoch"] not in logged:
                tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
                logged.add(row["epoch"])

    def snapshot() -> dict:
        return {"format": checkpoint.RESUME_FORMAT, "key": key, "trainer": to_cpu(trainer.state()),
                "rng": checkpoint.rng_state(), **progress, "history": list(progress["history"])}

    writer = BackgroundWriter()
    writer.submit(lambda s=snapshot(), rows=list(progress["history"]): save_and_log(s, rows))
    try:
        with trainer.stop_on_signals():
            for epoch in range(progress["epoch"] + 1, cfg.epochs + 1):
                with explain_oom(f"training {name}", f"{name}.batch_size", cfg.batch_size):
                    result = trainer.train_epoch(epoch, progress["partial"])
                progress.update(epoch=epoch, partial=None, train_seconds=progress["train_seconds"] + result.epoch_seconds)
                progress["history"].append(asdict(result))
                if result.val_acc > progress["best"]["val_acc"]:
                    progress["best"] = {"val_acc": result.val_acc, "epoch": epoch}
                    progress["best_model"] = to_cpu(model.state_dict())
                writer.submit(lambda s=snapshot(), r=[asdict(result)]: save_and_log(s, r))
                print(_summary_line(stage, result), flush=True)
                if trainer.stop_signal is not None and epoch < cfg.epochs:
                    raise Interrupted(trainer.stop_signal, None)
        writer.wait()
    except Interrupted as stop:
        writer.wait()
        progress["partial"] = stop.partial
        checkpoint.save(snapshot(), resume_file)
        tracker.end("KILLED")
        where = f"epoch {stop.partial['epoch']}, step {stop.partial['steps']}" if stop.partial else f"epoch {progress['epoch']}"
        print(f"{stage}: {stop}; checkpoint at {where} saved to {resume_file}; run `dvc repro` to resume", flush=True)
        raise SystemExit(128 + stop.signum) from None
    except BaseException:
        writer.wait()
        tracker.end("FAILED")
        raise

    summary = _write_outputs(params, name, trainer, progress, tracker, (trainable, total))
    tracker.end("FINISHED")
    resume_file.unlink(missing_ok=True)
    return summary


def _summary_line(stage: str, r: EpochResult) -> str:
    return (f"{stage} epoch {r.epoch}: train_loss {r.train_loss:.4f} train_acc {r.train_acc:.4f} "
            f"val_loss {r.val_loss:.4f} val_acc {r.val_acc:.4f} lr {r.lr:.2e} "
            f"{r.epoch_seconds:.1f}s {r.images_per_second:,.0f} img/s")


def _write_outputs(params: Params, name: str, trainer: Trainer, progress: dict, tracker: Tracker,
                   counts: tuple[int, int]) -> dict:
    cfg_dump = params.model(name).model_dump()
    out_dir = paths.model_dir(name)
    best_file, last_file = out_dir / "best.pt", out_dir / "last.pt"
    checkpoint.save(checkpoint.model_file(name, cfg_dump, progress["best_model"]), best_file)
    checkpoint.save(checkpoint.model_file(name, cfg_dump, to_cpu(trainer.model.state_dict())), last_file)
    write_history(progress["history"], paths.history(name))

    history = progress["history"]
    summary = {
        "best_val_acc": progress["best"]["val_acc"],
        "best_epoch": progress["best"]["epoch"],
        "epochs": len(history),
        "train_seconds": progress["train_seconds"],
        "images_per_second": float(np.median([h["images_per_second"] for h in history])) if history else 0.0,
        "params_trainable": counts[0],
        "params_total": counts[1],
    }
    atomic.write_json(paths.train_summary(name), summary)
    atomic.write_json(paths.run_info(name), {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id,
                                             "tracking_uri": tracker.uri})
    for path in (best_file, last_file):
        tracker.log_artifact(path, "checkpoints")
    tracker.log_artifact(paths.history(name), "history")
    tracker.log_metrics({"best_val_acc": summary["best_val_acc"], "train_seconds": summary["train_seconds"]})

    model = trainer.model.to("cpu", memory_format=torch.contiguous_format)
    model.load_state_dict(progress["best_model"])
    start = time.perf_counter()
    example = trainer.data.val_x[:2].cpu().numpy()
    tracker.log_torch_model(model.eval(), "best_model", example)
    print(f"{paths.STAGES[name]}: logged best model (epoch {summary['best_epoch']}) to MLflow run "
          f"{tracker.run_id} in {time.perf_counter() - start:.1f}s", flush=True)
    return summary

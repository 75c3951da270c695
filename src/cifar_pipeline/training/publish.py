"""A finished training run's outputs: best.pt and last.pt, the history CSV and the summary JSON,
logged to the run's MLflow run, with the best model logged and registered."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import numpy as np
import torch

from cifar_pipeline.core import atomic, paths
from cifar_pipeline.core.config import Params
from cifar_pipeline.engine import checkpoint
from cifar_pipeline.engine.models import count_parameters
from cifar_pipeline.engine.progress import RunProgress
from cifar_pipeline.engine.trainer import Trainer
from cifar_pipeline.tracking import registry
from cifar_pipeline.tracking.store import Tracker


def write_history(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["epoch"])
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    return dict(zip(("params_trainable", "params_total"), count_parameters(model), strict=True))


def write_outputs(
    params: Params, name: str, trainer: Trainer, progress: RunProgress, tracker: Tracker, classes: list[str]
) -> dict:
    """Write and log the outputs; returns the summary written to reports/train/."""
    cfg_dump = params.model(name).model_dump()
    out_dir = paths.model_dir(name)
    best_file, last_file = out_dir / "best.pt", out_dir / "last.pt"
    checkpoint.save(checkpoint.model_file(name, cfg_dump, classes, progress.best_model), best_file)
    checkpoint.save(
        checkpoint.model_file(name, cfg_dump, classes, checkpoint.to_cpu(trainer.model.state_dict())), last_file
    )
    history = progress.history
    write_history(history, paths.history(name))
    summary = {
        "best_val_acc": progress.best_val_acc,
        "best_epoch": progress.best_epoch,
        "epochs": len(history),
        "train_seconds": progress.train_seconds,
        "first_step_seconds": trainer.step.first_step_seconds,  # this process's; None if it ran no full step
        "images_per_second": float(np.median([h["images_per_second"] for h in history])) if history else 0.0,
        **parameter_counts(trainer.model),
    }
    atomic.write_json(paths.train_summary(name), summary)
    for path in (best_file, last_file):
        tracker.log_artifact(path, "checkpoints")
    tracker.log_artifact(paths.history(name), "history")
    tracker.log_metrics(
        {
            f"summary/{k}": summary[k]
            for k in ("best_val_acc", "train_seconds", "first_step_seconds")
            if summary[k] is not None
        }
    )

    start = time.perf_counter()
    example = (trainer.data.val_x[:2] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    registered_name = registry.registered_name(params.mlflow, name)
    published = registry.publish(tracker, name, best_file, classes, example, registered_name)
    atomic.write_json(
        paths.run_info(name),
        {"run_id": tracker.run_id, "experiment_id": tracker.experiment_id, "tracking_uri": tracker.uri, **published},
    )
    registered = (
        f", registered as {published['registered_model']} v{published['version']}" if "version" in published else ""
    )
    print(
        f"{paths.STAGES[name]}: logged best model (epoch {summary['best_epoch']}) to MLflow run "
        f"{tracker.run_id}{registered} in {time.perf_counter() - start:.1f}s",
        flush=True,
    )
    return summary

"""Test-set evaluation of a trained model, logged into the MLflow run that trained it."""

from __future__ import annotations

import json

import numpy as np
import torch

from . import atomic, metrics, paths
from .augment import to_unit_float
from .config import Params
from .data import load_arrays
from .engine import Settings, explain_oom, predict
from .errors import DataError
from .serving import build_from_file
from .tracking import Tracker


def load_trained(name: str) -> torch.nn.Module:
    path = paths.model_dir(name) / "best.pt"
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro {paths.STAGES[name]}` first")
    return build_from_file(path)[0]


def evaluate(params: Params, name: str) -> dict:
    if not paths.run_info(name).is_file():
        raise DataError(f"{paths.run_info(name)} not found: run `dvc repro {paths.STAGES[name]}` first")
    run = json.loads(paths.run_info(name).read_text())
    settings = Settings.resolve(params.runtime)
    tracker = Tracker(params.mlflow)
    data = load_arrays(paths.DATA)
    model = load_trained(name).to(settings.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    tracker.reopen(run["run_id"])
    with tracker.finishing():
        result, cm = _test_metrics(model, data, settings, name)
        out = paths.eval_dir(name)
        atomic.write_json(out / "metrics.json", result)
        metrics.write_confusion_csv(cm, data.classes, out / "confusion_matrix.csv")
        metrics.write_confusion_png(cm, data.classes, f"{name}: test accuracy {result['accuracy']:.2%}",
                                    out / "confusion_matrix.png")
        flat = {f"test_{k}": v for k, v in result.items() if k != "per_class"}
        flat.update({f"test_acc_{c}": m["accuracy"] for c, m in result["per_class"].items()})
        tracker.log_metrics(flat)
        for file in ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png"):
            tracker.log_artifact(out / file, "evaluation")
    return result


def _test_metrics(model: torch.nn.Module, data, settings: Settings, name: str) -> tuple[dict, np.ndarray]:
    images = to_unit_float(torch.from_numpy(data.test_x).to(settings.device).permute(0, 3, 1, 2))
    labels = torch.from_numpy(data.test_y).long().to(settings.device)
    with explain_oom(f"evaluating {name}", "runtime.eval_batch_size", settings.eval_batch_size):
        logits = predict(model, images, settings)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    cm = metrics.confusion_matrix(data.test_y, logits.argmax(1).cpu().numpy(), len(data.classes))
    return {"loss": loss, **metrics.summarize(cm, data.classes)}, cm

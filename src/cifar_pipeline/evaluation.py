"""Test-set evaluation of a trained model, logged into the MLflow run that trained it."""

from __future__ import annotations

import json

import numpy as np
import torch

from . import atomic, metrics, paths
from .augment import to_unit_float
from .config import Params
from .data import load_arrays, md5sum
from .engine import Settings, explain_oom, predict
from .errors import DataError
from .models import build_model
from .run_metadata import dataset
from .tracking import Tracker


def load_trained(name: str, params: Params) -> torch.nn.Module:
    path = paths.model_dir(name) / "best.pt"
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro {paths.STAGES[name]}` first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(name, type(params.model(name)).model_validate(saved["params"]), pretrained=False)
    model.load_state_dict(saved["state_dict"])
    return model


def evaluate(params: Params, name: str) -> dict:
    if not paths.run_info(name).is_file():
        raise DataError(f"{paths.run_info(name)} not found: run `dvc repro {paths.STAGES[name]}` first")
    run = json.loads(paths.run_info(name).read_text())
    settings = Settings.resolve(params.runtime)
    tracker = Tracker(params.mlflow)
    data = load_arrays(paths.DATA)
    model = load_trained(name, params).to(settings.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    tracker.attach(run["run_id"])  # the run keeps its training status and duration
    result, cm = _test_metrics(model, data, settings, name)
    out = paths.eval_dir(name)
    atomic.write_json(out / "metrics.json", result)
    metrics.write_confusion_csv(cm, data.classes, out / "confusion_matrix.csv")
    metrics.write_confusion_png(cm, data.classes, f"{name}: test accuracy {result['accuracy']:.2%}",
                                out / "confusion_matrix.png")
    test_set = dataset(params, data, md5sum(paths.DATA))
    tracker.log_model_metrics({f"test/{k}": v for k, v in result.items() if k != "per_class"}, test_set)
    tracker.log_metrics({f"test_per_class/{c}": m["accuracy"] for c, m in result["per_class"].items()})
    tracker.log_artifact(out / "confusion_matrix.png")  # top level: MLflow's compare view shows it across runs
    for file in ("metrics.json", "confusion_matrix.csv"):
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

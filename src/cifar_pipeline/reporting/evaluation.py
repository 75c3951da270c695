"""Test-set evaluation of a trained model, logged into the MLflow run that trained it."""

from __future__ import annotations

import numpy as np
import torch

from cifar_pipeline.core import atomic, paths
from cifar_pipeline.core.config import Params
from cifar_pipeline.core.data import in_background, load_arrays, md5sum
from cifar_pipeline.core.errors import DataError
from cifar_pipeline.engine.augment import to_unit_float
from cifar_pipeline.engine.device import Settings, explain_oom, predict
from cifar_pipeline.reporting import calibration, metrics, roc
from cifar_pipeline.serving.classifier import ModelFileError, build_from_file
from cifar_pipeline.tracking.run_metadata import dataset
from cifar_pipeline.tracking.store import Tracker


def load_trained(name: str) -> torch.nn.Module:
    path = paths.model_dir(name) / "best.pt"
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro {paths.STAGES[name]}` first")
    try:
        return build_from_file(path)[0]
    except ModelFileError as exc:
        raise DataError(
            f"{path} is not a loadable {name} model file ({exc}); run `dvc repro -f {paths.STAGES[name]}` to retrain it"
        ) from None


def evaluate(params: Params, name: str, run_id: str) -> dict:
    """Evaluate model `name` on the test set and log the results into its training run `run_id`."""
    settings = Settings.resolve(params.runtime)
    model = load_trained(name)  # broken inputs fail before the store is touched
    data_md5 = in_background(md5sum, paths.DATA)
    data = load_arrays(paths.DATA)
    opening = in_background(Tracker, params.mlflow)  # MLflow loads while the model is evaluated
    model.to(settings.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    result, cm, curves, probs = _test_metrics(model, data, settings, name)
    tracker = opening()
    tracker.attach(run_id, paths.STAGES[name])  # before any report; the run keeps its status and duration
    out = paths.eval_dir(name)
    atomic.write_json(out / "metrics.json", result)
    metrics.write_confusion_csv(cm, data.classes, out / "confusion_matrix.csv")
    metrics.write_confusion_png(
        cm, data.classes, f"{name}: test accuracy {result['accuracy']:.2%}", out / "confusion_matrix.png"
    )
    roc.write_csv(curves, out / "roc.csv")
    roc.write_png(curves, f"{name}: one-vs-rest ROC, macro AUC {result['macro_auc']:.4f}", out / "roc.png")
    calibration.write(probs, data.test_y, data.test_x, data.classes, name, out)
    test_set = dataset(params, data, data_md5())
    tracker.log_model_metrics({f"test/{k}": v for k, v in result.items() if k != "per_class"}, test_set)
    tracker.log_metrics(
        {
            **{f"test_per_class/{c}": m["accuracy"] for c, m in result["per_class"].items()},
            **{f"test_auc/{c}": curve["auc"] for c, curve in curves.items()},
        }
    )
    tracker.log_artifact(out / "confusion_matrix.png")  # top level: MLflow's compare view lists it across runs
    for file in calibration.FILES:
        tracker.log_artifact(out / file, "calibration")
    for file in ("metrics.json", "confusion_matrix.csv", "roc.csv", "roc.png"):
        tracker.log_artifact(out / file, "evaluation")
    return result


def _test_metrics(
    model: torch.nn.Module, data, settings: Settings, name: str
) -> tuple[dict, np.ndarray, dict, np.ndarray]:
    images = to_unit_float(torch.from_numpy(data.test_x).to(settings.device).permute(0, 3, 1, 2))
    labels = torch.from_numpy(data.test_y).long().to(settings.device)
    with explain_oom(f"evaluating {name}", "runtime.eval_batch_size", settings.eval_batch_size):
        logits = predict(model, images, settings)
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    cm = metrics.confusion_matrix(data.test_y, logits.argmax(1).cpu().numpy(), len(data.classes))
    result = {"loss": loss, **metrics.summarize(cm, data.classes)}
    probs = logits.softmax(1).cpu().numpy()
    curves = roc.one_vs_rest(data.test_y, probs, data.classes)
    result["ece"] = calibration.ece(probs, data.test_y)
    result["macro_auc"] = roc.macro_auc(curves)
    for c, curve in curves.items():
        result["per_class"][c]["auc"] = curve["auc"]
    return result, cm, curves, probs

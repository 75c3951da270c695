"""A training run's MLflow model and its registered version; the `champion` alias.

Each training run logs one pyfunc model (serving/pyfunc.py, logged as code with the package; the weights are the stage's
models/<name>/best.pt) and registers it as a version of the registered model `<prefix><name>`.
A rerun or resume of the stage reuses what an earlier, interrupted attempt completed and deletes
what it left half-done, so a run holds one logged model and one version.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np

from cifar_pipeline.core.config import MODELS, MlflowParams
from cifar_pipeline.tracking.connection import retry_locked
from cifar_pipeline.tracking.store import Tracker

MODEL_NAME = "best_model"
PACKAGE = Path(__file__).parents[1]  # the whole cifar_pipeline package travels with the model
MODEL_CODE = PACKAGE / "serving" / "pyfunc.py"
REQUIREMENTS = {  # pip package: the module it installs
    "mlflow": "mlflow",
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "pandas": "pandas",
    "pydantic": "pydantic",
    "pyyaml": "yaml",
    "pillow": "PIL",
}
CHAMPION = "champion"
SELECTION_METRIC = "summary/best_val_acc"  # the champion is chosen on validation accuracy, never on the test set


def registered_name(cfg: MlflowParams, model: str) -> str | None:
    """The registered model a training run of `model` is added to; None when registration is off."""
    return f"{cfg.registered_model_prefix}{model}" if cfg.register_models else None


def skip_installed_packages_scan() -> None:
    """MLflow checks a model's pip requirements against the installed versions, and first maps every
    module of every installed package to it (1-3 s of file scans, once per process). Ours name their
    modules (REQUIREMENTS): that map is all the check needs, and it still compares every version."""
    from mlflow.utils import requirements_utils

    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", False) is None:  # not built yet in this process
        requirements_utils._MODULES_TO_PACKAGES = {module: [p] for p, module in REQUIREMENTS.items()}


def log_model(tracker: Tracker, model_file: Path, classes: list[str], example: np.ndarray) -> str:
    """Log the pyfunc model into the tracker's run and experiment; returns its model id."""
    import mlflow.pyfunc
    from mlflow.models import Model

    # serving loads torch: imported here, where training logs a model, so compare never loads it
    from cifar_pipeline.serving.classifier import MODEL_FILE_ARTIFACT
    from cifar_pipeline.serving.schema import input_example, model_signature

    skip_installed_packages_scan()
    client, run_id = tracker.client, tracker.run_id
    params = retry_locked(lambda: client.get_run(run_id)).data.params
    model = retry_locked(
        lambda: client.create_logged_model(tracker.experiment_id, name=MODEL_NAME, source_run_id=run_id, params=params)
    )
    retry_locked(
        lambda: Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model.model_id,
            python_model=str(MODEL_CODE),
            artifacts={MODEL_FILE_ARTIFACT: str(model_file)},
            code_paths=[str(PACKAGE)],
            signature=model_signature(classes),
            input_example=input_example(example),
            pip_requirements=[f"{p}=={version(p)}" for p in REQUIREMENTS],
        )
    )
    return model.model_id


def completed_model(tracker: Tracker) -> str | None:
    """The run's READY model from an earlier attempt, if any; its PENDING/FAILED leftovers are deleted."""
    from mlflow.entities import LoggedModelStatus

    ready = None
    for model in tracker.logged_models(MODEL_NAME):
        if ready is None and model.status == LoggedModelStatus.READY:
            ready = model.model_id
        else:
            retry_locked(lambda m=model: tracker.client.delete_logged_model(m.model_id))
    return ready


def register_once(client, name: str, run_id: str, model_id: str):
    """The version of `name` registered from this run, creating it only if there is none yet."""
    import mlflow

    def once():
        existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        return (
            min(existing, key=lambda v: int(v.version))
            if existing
            else mlflow.register_model(f"models:/{model_id}", name)
        )

    return retry_locked(once)


def publish(tracker: Tracker, model_file: Path, classes: list[str], example: np.ndarray, name: str | None) -> dict:
    """Log the run's model once and register it once; what models/<name>/mlflow_run.json records."""
    model_id = completed_model(tracker) or log_model(tracker, model_file, classes, example)
    info: dict = {"model_uri": f"models:/{model_id}"}
    if name:
        registered = register_once(tracker.client, name, tracker.run_id, model_id)
        info.update(registered_model=name, version=int(registered.version))
    return info


def crown_champion(client, name: str):
    """Point the `champion` alias of `name` at its version with the best validation accuracy (the
    earliest one on a tie, so a tie never moves it). Returns that version, or None without versions."""
    scored = []
    for v in retry_locked(lambda: client.search_model_versions(f"name = '{name}'")):
        accuracy = retry_locked(lambda v=v: client.get_run(v.run_id)).data.metrics.get(SELECTION_METRIC)
        if accuracy is not None:
            scored.append((accuracy, -int(v.version), v))
    if not scored:
        return None
    best = max(scored, key=lambda s: s[:2])[2]
    retry_locked(lambda: client.set_registered_model_alias(name, CHAMPION, best.version))
    return best


def crown_champions(client, cfg: MlflowParams) -> dict[str, str]:
    """crown_champion for each model's registered model: registered name -> champion version ({} when
    registration is off)."""
    champions: dict[str, str] = {}
    if not cfg.register_models:
        return champions
    for model in MODELS:
        best = crown_champion(client, registered_name(cfg, model))
        if best is not None:
            champions[best.name] = str(best.version)
    return champions

"""A training run's MLflow model and its registered version; the `champion` alias.

Each training run logs one pyfunc model named after the model (serving/pyfunc.py, logged as code with the package; the
weights are the stage's models/<name>/best.pt) and registers it as a version of the registered model `<prefix><name>`,
whose tags and description show its validation accuracy and split.
A rerun or resume of the stage reuses what an earlier, interrupted attempt completed and deletes
what it left half-done, so a run holds one logged model and one version.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cifar_pipeline.core.config import MODELS, MlflowParams
from cifar_pipeline.tracking.connection import retry_locked, store_lock
from cifar_pipeline.tracking.run_metadata import SPLIT_TAG
from cifar_pipeline.tracking.store import Tracker

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
TEST_ACCURACY_TAG = "test_accuracy"  # set on a version by `compare`


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


def log_model(tracker: Tracker, model: str, model_file: Path, classes: list[str], example: np.ndarray) -> str:
    """Log the pyfunc model `model` (cnn, resnet34, ...) into the tracker's run and experiment; returns its id."""
    import mlflow.pyfunc
    from mlflow.models import Model

    # serving loads torch: imported here, where training logs a model, so compare never loads it
    from cifar_pipeline.serving.classifier import MODEL_FILE_ARTIFACT
    from cifar_pipeline.serving.schema import input_example, model_signature

    skip_installed_packages_scan()
    client, run_id = tracker.client, tracker.run_id
    params = retry_locked(lambda: client.get_run(run_id)).data.params
    logged = retry_locked(
        lambda: client.create_logged_model(tracker.experiment_id, name=model, source_run_id=run_id, params=params)
    )
    retry_locked(
        lambda: Model.log(
            artifact_path=None,
            name=model,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(MODEL_CODE),
            artifacts={MODEL_FILE_ARTIFACT: str(model_file)},
            code_paths=[str(PACKAGE)],
            signature=model_signature(classes),
            input_example=input_example(example),
            pip_requirements=[f"{p}=={version(p)}" for p in REQUIREMENTS],
        )
    )
    return logged.model_id


def completed_model(tracker: Tracker, name: str) -> str | None:
    """The run's READY model `name` from an earlier attempt, if any; its PENDING/FAILED leftovers are deleted."""
    from mlflow.entities import LoggedModelStatus

    ready = None
    for model in tracker.logged_models(name):
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


def describe_version(client, name: str, version: str, run) -> None:
    """Show on the registry pages why a version is or isn't `champion`: its validation accuracy and split."""
    accuracy, split = run.data.metrics.get(SELECTION_METRIC), run.data.tags.get(SPLIT_TAG)
    if accuracy is None:
        return
    retry_locked(lambda: client.set_model_version_tag(name, version, "val_acc", f"{accuracy:.4f}"))
    retry_locked(lambda: client.set_model_version_tag(name, version, SPLIT_TAG, split or "unknown"))
    description = (
        f"Validation accuracy {accuracy:.2%} ({split or 'split unknown'}). `champion` is the best validation "
        "accuracy among the versions validated on the same split; `compare` adds the test accuracy as a tag."
    )
    retry_locked(lambda: client.update_model_version(name, version, description=description))


def publish(
    tracker: Tracker, model: str, model_file: Path, classes: list[str], example: np.ndarray, name: str | None
) -> dict:
    """Log the run's model once and register it once as a version of `name`; what models/<model>/mlflow_run.json
    records."""
    model_id = completed_model(tracker, model) or log_model(tracker, model, model_file, classes, example)
    info: dict = {"model_uri": f"models:/{model_id}"}
    if name:
        registered = register_once(tracker.client, name, tracker.run_id, model_id)
        describe_version(
            tracker.client, name, registered.version, retry_locked(lambda: tracker.client.get_run(tracker.run_id))
        )
        info.update(registered_model=name, version=int(registered.version))
    return info


def version_exists(client, name: str, version: int | str) -> bool:
    """False when the version (or its registered model) was deleted from the registry."""
    from mlflow.exceptions import MlflowException

    try:
        retry_locked(lambda: client.get_model_version(name, str(version)))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    return True


def run_split(client, run_id: str) -> str | None:
    """The validation split a training run was measured on (its SPLIT_TAG)."""
    return retry_locked(lambda: client.get_run(run_id)).data.tags.get(SPLIT_TAG)


class Champion(NamedTuple):
    version: str
    compared: int  # versions validated on the champion's split
    other_splits: int  # versions left out: validated on another split


def crown_champion(tracker: Tracker, name: str, split: str | None) -> Champion | None:
    """Point the `champion` alias of `name` at the version with the best validation accuracy among those
    validated on `split` (the earliest one on a tie, so a tie never moves it); None without such versions.
    Read and move happen under the store's lock, so two `compare`s can't interleave them."""
    client = tracker.client
    with store_lock(tracker.uri):
        scored, other_splits = [], 0
        for v in retry_locked(lambda: client.search_model_versions(f"name = '{name}'")):
            run = retry_locked(lambda v=v: client.get_run(v.run_id))
            accuracy = run.data.metrics.get(SELECTION_METRIC)
            if accuracy is None:
                continue
            if run.data.tags.get(SPLIT_TAG) != split:
                other_splits += 1
                continue
            scored.append((accuracy, -int(v.version), v))
        if not scored:
            return None
        best = max(scored, key=lambda s: s[:2])[2]
        retry_locked(lambda: client.set_registered_model_alias(name, CHAMPION, best.version))
    return Champion(str(best.version), len(scored), other_splits)


def crown_champions(tracker: Tracker, cfg: MlflowParams, splits: dict[str, str | None]) -> dict[str, Champion]:
    """crown_champion for each model's registered model, on the split of `splits[model]` (the split of the
    model's current run): registered name -> its champion ({} when registration is off)."""
    champions: dict[str, Champion] = {}
    if not cfg.register_models:
        return champions
    for model in MODELS:
        name = registered_name(cfg, model)
        best = crown_champion(tracker, name, splits.get(model))
        if best is not None:
            champions[name] = best
    return champions


def tag_test_accuracy(client, name: str, version: int | str, accuracy: float) -> None:
    retry_locked(lambda: client.set_model_version_tag(name, str(version), TEST_ACCURACY_TAG, f"{accuracy:.4f}"))


def champion_line(name: str, champion: Champion) -> str:
    """What `compare` prints of a champion: which versions it was chosen among."""
    skipped = (
        f"; {champion.other_splits} version(s) validated on another split (other seed, data.* or data.val_size) "
        "are not compared"
        if champion.other_splits
        else ""
    )
    return (
        f"{name}: champion is v{champion.version}, best of {champion.compared} version(s) on this run's split{skipped}"
    )

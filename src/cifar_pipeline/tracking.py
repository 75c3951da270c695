"""MLflow tracking: one run per training stage, reopened by evaluate and by a resumed stage."""

from __future__ import annotations

import fcntl
import getpass
import importlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .config import MlflowParams
from .errors import TrackingError
from .paths import project_root

T = TypeVar("T")
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
REACHABILITY_TIMEOUT_S = 5
LOCK_RETRIES = 8


def resolve_tracking_uri(cfg: MlflowParams, cwd: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else params; a relative sqlite path is anchored at the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(project_root(cwd) / uri[len(prefix) :])
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str) -> None:
    """Fail within seconds, before any training, if the tracking store can't be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=REACHABILITY_TIMEOUT_S):
                return
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({reason}). Start it, or set "
                "mlflow.tracking_uri in params.yaml (or $MLFLOW_TRACKING_URI) to a reachable store."
            ) from None
    db = sqlite_path(uri)
    if db is not None and not os.access(db.parent if db.parent.exists() else db.parent.parent, os.W_OK):
        raise TrackingError(f"MLflow store {uri}: folder {db.parent} is not writable")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Serialise store creation/migration between processes sharing one SQLite file."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def retry_locked(fn: Callable[[], T]) -> T:
    """Retry an MLflow call that lost a SQLite write lock to a parallel process."""
    for attempt in range(LOCK_RETRIES):
        try:
            return fn()
        except Exception as exc:  # MlflowException wraps sqlalchemy's OperationalError
            if "database is locked" not in str(exc) or attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry, as in some containers
        return "unknown"


def base_tags(stage: str) -> dict[str, str]:
    """Tags every run gets: MLflow's source tags, its DVC stage and, inside `dvc exp run`, the experiment's
    name (`dvc_exps` also gains the names of later experiments that reuse the run), its baseline commit and
    the git ref that DVC gives the experiment's own commit when it finishes."""
    tags = {"stage": stage, "mlflow.source.type": "LOCAL", "mlflow.source.name": f"dvc.yaml:{stage}",
            "mlflow.source.git.commit": git_commit(), "mlflow.user": user()}
    exp, baseline = os.environ.get("DVC_EXP_NAME"), os.environ.get("DVC_EXP_BASELINE_REV")
    if exp:
        tags.update(dvc_exp_name=exp, dvc_exps=exp)
    if baseline:
        tags["dvc_exp_baseline"] = baseline
    if exp and baseline:
        tags["dvc_exp_ref"] = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{exp}"
    return tags


def flatten(d: Mapping, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def import_mlflow_pytorch():
    """mlflow.pytorch without pytorch_lightning. Where lightning is installed, mlflow.pytorch imports it
    (and through it torchmetrics, transformers, matplotlib) only for a Lightning autolog callback: 6.3 s
    on the GPU image, against 0.01 s without. A None entry in sys.modules makes that import fail, and
    mlflow skips the callback."""
    if "mlflow.pytorch" in sys.modules or "pytorch_lightning" in sys.modules:
        return importlib.import_module("mlflow.pytorch")
    sys.modules["pytorch_lightning"] = None
    try:
        return importlib.import_module("mlflow.pytorch")
    finally:
        del sys.modules["pytorch_lightning"]


class Tracker:
    """Thin wrapper over MlflowClient for one run; every write retries on a locked SQLite store."""

    def __init__(self, cfg: MlflowParams):
        import mlflow  # heavy import, kept off the CLI's validation path

        self.uri = resolve_tracking_uri(cfg)
        check_reachable(self.uri)
        self.mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        with store_lock(self.uri):
            self.client = mlflow.MlflowClient(self.uri)
            self.experiment_id = retry_locked(lambda: self._experiment(cfg.experiment))
        self.run_id: str | None = None
        self.monitor = None

    def _experiment(self, name: str) -> str:
        """The experiment's id, created if needed, marked as model training (else MLflow's UI opens it in
        GenAI mode)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            for key, value in EXPERIMENT_KIND.items():
                if found.tags.get(key) != value:
                    self.client.set_experiment_tag(found.experiment_id, key, value)
            return found.experiment_id
        db = sqlite_path(self.uri)
        location = (db.parent / "mlartifacts").as_uri() if db is not None else None
        return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)

    def start(self, run_name: str, tags: dict[str, str], params: Mapping) -> str:
        run = retry_locked(lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags))
        self.run_id = run.info.run_id
        flat = {k: str(v) for k, v in flatten(params).items()}
        retry_locked(lambda: self._log_params(flat))
        return self.run_id

    def _log_params(self, flat: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def attach(self, run_id: str):
        """Log into an existing run from here on, leaving its status and end time as they are."""
        from mlflow.exceptions import MlflowException

        try:
            run = retry_locked(lambda: self.client.get_run(run_id))
        except MlflowException as exc:
            raise TrackingError(
                f"MLflow run {run_id} is not in the store {self.uri} ({exc.message}). Point "
                "mlflow.tracking_uri (or $MLFLOW_TRACKING_URI) at the store it was logged to, "
                "or retrain with `dvc repro -f <training stage>`."
            ) from None
        self.run_id = run.info.run_id
        return run

    def reopen(self, run_id: str) -> None:
        if self.attach(run_id).info.status != "RUNNING":
            retry_locked(lambda: self.client.update_run(run_id, status="RUNNING"))

    def set_tags(self, tags: Mapping[str, str], run_id: str | None = None) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        retry_locked(lambda: self.client.log_batch(run_id or self.run_id, tags=items, synchronous=True))

    def log_dataset(self, dataset, context: str) -> None:
        from mlflow.entities import DatasetInput, InputTag

        entry = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])
        retry_locked(lambda: self.client.log_inputs(self.run_id, datasets=[entry]))

    def log_model_metrics(self, metrics: Mapping[str, float], dataset) -> None:
        """Metrics of the run's newest logged model on `dataset` (MLflow 3's model-linked metrics, shown
        in the Models view); plain run metrics if the run logged no model."""
        found = retry_locked(lambda: self.mlflow.search_logged_models(
            experiment_ids=[self.experiment_id], filter_string=f"source_run_id = '{self.run_id}'",
            order_by=[{"field_name": "creation_time", "ascending": False}], max_results=1, output_format="list"))
        model_id = found[0].model_id if found else None
        retry_locked(lambda: self.mlflow.log_metrics(dict(metrics), run_id=self.run_id, model_id=model_id,
                                                     dataset=dataset, synchronous=True))

    def start_system_metrics(self, resume: bool) -> None:
        """CPU, memory, disk and GPU use as `system/*` metrics every 10 s, until the run ends."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self.monitor = SystemMetricsMonitor(self.run_id, resume_logging=resume, tracking_uri=self.uri)
        self.monitor.start()

    def logged_steps(self, key: str) -> set[int]:
        return {m.step for m in retry_locked(lambda: self.client.get_metric_history(self.run_id, key))}

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        retry_locked(lambda: self.client.log_batch(self.run_id, metrics=items, synchronous=True))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        retry_locked(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        retry_locked(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_torch_model(self, model, name: str, input_example) -> None:
        import torch

        # Naming the requirement and skipping the serving check avoid two reloads of the model (6 s -> 0.3 s).
        requirements = [f"torch=={torch.__version__.split('+')[0]}"]
        mlflow_pytorch = import_mlflow_pytorch()

        def log() -> None:
            with self.mlflow.start_run(run_id=self.run_id):
                mlflow_pytorch.log_model(model, name=name, input_example=input_example,
                                         pip_requirements=requirements, validate_serving_input=False)

        retry_locked(log)

    @contextmanager
    def finishing(self) -> Iterator[None]:
        """End the run FINISHED after the block, or FAILED if it raises."""
        try:
            yield
        except BaseException:
            self.end("FAILED")
            raise
        self.end()

    def end(self, status: str = "FINISHED") -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
        retry_locked(lambda: self.client.set_terminated(self.run_id, status=status))

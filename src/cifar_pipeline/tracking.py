"""MLflow tracking: one run per training stage, reopened by evaluate and by a resumed stage."""

from __future__ import annotations

import fcntl
import os
import subprocess
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


def base_tags(stage: str) -> dict[str, str]:
    """Tags every run gets: its stage, the git commit and, inside `dvc exp run`, the experiment name."""
    tags = {"stage": stage, "git_commit": git_commit()}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
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

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        db = sqlite_path(self.uri)
        location = (db.parent / "mlartifacts").as_uri() if db is not None else None
        return self.client.create_experiment(name, artifact_location=location)

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

    def reopen(self, run_id: str) -> None:
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
        if run.info.status != "RUNNING":
            retry_locked(lambda: self.client.update_run(run_id, status="RUNNING"))

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

    def logged_models(self, name: str) -> list:
        """The run's logged models called `name` (deleted ones excluded), oldest first."""
        return retry_locked(lambda: self.mlflow.search_logged_models(
            experiment_ids=[self.experiment_id], output_format="list",
            filter_string=f"source_run_id = '{self.run_id}' AND name = '{name}'",
            order_by=[{"field_name": "creation_time", "ascending": True}]))

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
        retry_locked(lambda: self.client.set_terminated(self.run_id, status=status))

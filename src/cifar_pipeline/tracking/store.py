"""MLflow tracking: one run per training stage, reopened by evaluate and by a resumed stage."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cifar_pipeline.core.config import MlflowParams
from cifar_pipeline.core.errors import TrackingError
from cifar_pipeline.tracking.connection import (
    check_reachable,
    resolve_tracking_uri,
    retry_locked,
    sqlite_path,
    store_lock,
)
from cifar_pipeline.tracking.tags import PROCESS_TAG, flatten, process_alive, this_process

EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class Tracker:
    """Thin wrapper over MlflowClient for one run; every write retries on a locked SQLite store."""

    def __init__(self, cfg: MlflowParams):
        import mlflow  # a heavy import, kept off the CLI's validation path

        self.uri = resolve_tracking_uri(cfg)
        check_reachable(self.uri)
        self.mlflow = mlflow
        mlflow.set_tracking_uri(self.uri)
        with store_lock(self.uri):
            self.client = mlflow.MlflowClient(self.uri)
            self.experiment_id = retry_locked(lambda: self._experiment(cfg.experiment))
        self.run_id: str | None = None
        self.experiment_name = cfg.experiment
        self.monitor = None
        self.end_orphans()

    def end_orphans(self) -> None:
        """Runs left RUNNING by a process that is gone (SIGKILL at any moment, power loss) end KILLED."""
        runs = retry_locked(lambda: self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'"))
        for run in runs:
            tag = run.data.tags.get(PROCESS_TAG)
            if tag and not process_alive(tag):
                retry_locked(lambda run_id=run.info.run_id: self.client.set_terminated(run_id, status="KILLED"))
                print(
                    f"marked MLflow run {run.info.run_id} ({run.info.run_name}) KILLED: the process that ran it "
                    "is gone",
                    file=sys.stderr,
                )

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
        tags = {**tags, PROCESS_TAG: this_process()}

        def create() -> None:  # run_id is set before a deferred Ctrl-C can stop us: the run then ends KILLED
            self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id

        retry_locked(create)
        flat = {k: str(v) for k, v in flatten(params).items()}
        retry_locked(lambda: self._log_params(flat))
        return self.run_id

    def _log_params(self, flat: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def attach(self, run_id: str, stage: str = "<training stage>"):
        """Log into an existing run from here on, leaving its status and end time as they are."""
        from mlflow.exceptions import MlflowException

        try:
            run = retry_locked(lambda: self.client.get_run(run_id))
        except MlflowException as exc:
            raise TrackingError(
                f"MLflow run {run_id} is not in the store {self.uri} ({exc.message}). Point "
                "mlflow.tracking_uri (or $MLFLOW_TRACKING_URI) at the store it was logged to, "
                f"or retrain with `dvc repro -f {stage}`."
            ) from None
        if run.info.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow run {run_id} was deleted in the store {self.uri}. Restore it with "
                f"`MLFLOW_TRACKING_URI={self.uri} mlflow runs restore --run-id {run_id}`, "
                f"or retrain with `dvc repro -f {stage}`."
            )
        self.run_id = run.info.run_id
        return run

    def resume_problem(self, run_id: str) -> str | None:
        """Why a checkpoint's run can't be continued in this store and experiment; None if it can."""
        from mlflow.exceptions import MlflowException

        try:
            run = retry_locked(lambda: self.client.get_run(run_id))
        except MlflowException:
            return f"its MLflow run {run_id} is not in the store {self.uri}"
        if run.info.lifecycle_stage != "active":
            return f"its MLflow run {run_id} was deleted"
        if run.info.experiment_id != self.experiment_id:
            return f"its MLflow run {run_id} is in another experiment than mlflow.experiment = {self.experiment_name}"
        return None

    def reopen(self, run_id: str) -> None:
        """Attach to the run and mark it RUNNING again, as this process's (see end_orphans)."""
        run = self.attach(run_id)
        retry_locked(lambda: self.client.set_tag(run_id, PROCESS_TAG, this_process()))  # before RUNNING
        if run.info.status != "RUNNING":
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
        found = retry_locked(
            lambda: self.mlflow.search_logged_models(
                experiment_ids=[self.experiment_id],
                filter_string=f"source_run_id = '{self.run_id}'",
                order_by=[{"field_name": "creation_time", "ascending": False}],
                max_results=1,
                output_format="list",
            )
        )
        model_id = found[0].model_id if found else None
        retry_locked(
            lambda: self.mlflow.log_metrics(
                dict(metrics), run_id=self.run_id, model_id=model_id, dataset=dataset, synchronous=True
            )
        )

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

    def download_artifact(self, artifact: str, dest: Path) -> None:
        """The run's artifact, written to dest atomically."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            os.replace(retry_locked(lambda: self.client.download_artifacts(self.run_id, artifact, tmp)), dest)

    def log_text(self, text: str, artifact_file: str) -> None:
        retry_locked(lambda: self.client.log_text(self.run_id, text, artifact_file))

    def log_figure(self, figure, artifact_file: str) -> None:
        retry_locked(lambda: self.client.log_figure(self.run_id, figure, artifact_file))

    def logged_models(self, name: str) -> list:
        """The run's logged models called `name` (deleted ones excluded), oldest first."""
        return retry_locked(
            lambda: self.mlflow.search_logged_models(
                experiment_ids=[self.experiment_id],
                output_format="list",
                filter_string=f"source_run_id = '{self.run_id}' AND name = '{name}'",
                order_by=[{"field_name": "creation_time", "ascending": True}],
            )
        )

    @contextmanager
    def finishing(self) -> Iterator[None]:
        """End the run FINISHED after the block, KILLED on Ctrl-C, or FAILED if it raises."""
        try:
            yield
        except BaseException as exc:
            self.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        self.end()

    def end(self, status: str = "FINISHED") -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None
        retry_locked(lambda: self.client.set_terminated(self.run_id, status=status))

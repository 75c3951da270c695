"""MLflow tracking: one run per training stage, reopened by evaluate and by a resumed stage."""

from __future__ import annotations

import fcntl
import getpass
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from cifar_pipeline.core.config import MlflowParams, tracking_uri_problem
from cifar_pipeline.core.errors import TrackingError
from cifar_pipeline.core.paths import can_create_files_in, project_root

T = TypeVar("T")
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
REACHABILITY_TIMEOUT_S = 5
LOCK_RETRIES = 8
PROCESS_TAG = "process"  # host:pid:start time of the process that has the run open


def resolve_tracking_uri(cfg: MlflowParams, cwd: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else params; a relative sqlite path is anchored at the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    problem = tracking_uri_problem(uri)
    if problem:  # params were validated already: this one came from the environment
        raise TrackingError(f"$MLFLOW_TRACKING_URI = {uri!r} {problem}. Fix or unset it.")
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
    if db is not None:
        check_sqlite_writable(uri, db)


def check_sqlite_writable(uri: str, db: Path) -> None:
    """The database file (if there) and its folder, or the nearest folder that exists, must be writable."""
    fix = "set mlflow.tracking_uri (or $MLFLOW_TRACKING_URI) to sqlite:///<a writable path>.db"
    if db.exists() and not db.is_file():
        raise TrackingError(f"MLflow store {uri}: {db} is not a file; {fix}")
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise TrackingError(f"MLflow store {uri}: {db} is read-only; make it writable (chmod u+w) or {fix}")
    folder = db.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not can_create_files_in(folder):
        raise TrackingError(f"MLflow store {uri}: folder {folder} is not a writable directory; {fix}")


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
    tags = {
        "stage": stage,
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": f"dvc.yaml:{stage}",
        "mlflow.source.git.commit": git_commit(),
        "mlflow.user": user(),
    }
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


def process_start_ticks(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (Linux /proc); None where that can't be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid) or ''}"


def process_alive(tag: str) -> bool:
    """Whether the process a PROCESS_TAG names may still run (True whenever this host can't tell)."""
    try:
        host, pid_text, ticks = tag.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    if ticks:  # the start time also tells a reused pid apart
        return process_start_ticks(pid) == ticks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


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

    def log_text(self, text: str, artifact_file: str) -> None:
        retry_locked(lambda: self.client.log_text(self.run_id, text, artifact_file))

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

"""Reaching the MLflow store: the tracking URI, whether it answers, and retries while SQLite is locked."""

from __future__ import annotations

import fcntl
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from cifar_pipeline.core.config import MlflowParams, tracking_uri_problem
from cifar_pipeline.core.errors import TrackingError
from cifar_pipeline.core.paths import can_create_files_in, project_root

T = TypeVar("T")


REACHABILITY_TIMEOUT_S = 5


LOCK_RETRIES = 8


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
    """Serialise store creation/migration, and the `champion` alias's read-then-move, between processes sharing
    one SQLite file."""
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

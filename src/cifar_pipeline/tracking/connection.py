"""Reaching the MLflow store: the tracking URI, whether it answers, and retries while SQLite is locked."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from cifar_pipeline.core.errors import TrackingError
from cifar_pipeline.core.mlflow_params import MlflowParams, tracking_uri_problem
from cifar_pipeline.core.paths import can_create_files_in, project_root

T = TypeVar("T")


REACHABILITY_TIMEOUT_S = 5


LOCK_RETRIES = 8


class _LockedStoreFilter(logging.Filter):
    """MLflow logs a traceback for every "database is locked" before raising it; retry_locked retries
    that error and says so in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "database is locked" not in record.getMessage()


logging.getLogger("mlflow.store.db.utils").addFilter(_LockedStoreFilter())


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


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait for the block to end, then reach their usual handler. A store call cut in
    half by Ctrl-C can leave SQLite's write lock held by this process, so its own next write (ending the
    run KILLED) would wait for it in vain. Only the main thread receives signals, so others just run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in caught:
            signal.raise_signal(s)


def retry_locked(fn: Callable[[], T]) -> T:
    """Run one MLflow call with signals deferred; retry it while a parallel process holds SQLite's write lock."""
    for attempt in range(1, LOCK_RETRIES + 1):
        try:
            with signals_deferred():
                return fn()
        except Exception as exc:  # MlflowException wraps sqlalchemy's OperationalError
            if "database is locked" not in str(exc):
                raise
            if attempt == LOCK_RETRIES:
                raise TrackingError(
                    f"the MLflow store stayed locked by another process through {LOCK_RETRIES} tries (database is "
                    "locked). Stop the process that holds it, or use a tracking server (mlflow.tracking_uri)."
                ) from None
        print(
            f"the MLflow store is locked by another process (database is locked); try {attempt + 1} of {LOCK_RETRIES}",
            file=sys.stderr,
            flush=True,
        )
        time.sleep(0.2 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")

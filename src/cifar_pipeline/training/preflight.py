"""What a training stage checks before it loads torch and MLflow (seconds of imports): that it can write its
outputs and reach its MLflow store. A mistake there fails at once, with one `error:` line."""

from __future__ import annotations

from cifar_pipeline.core import paths
from cifar_pipeline.core.config import Params
from cifar_pipeline.tracking.connection import check_reachable, resolve_tracking_uri


def check_outputs_and_store(params: Params, name: str) -> None:
    paths.check_writable(
        paths.model_dir(name),
        paths.train_summary(name).parent,
        paths.history(name).parent,
        paths.project_root() / paths.RESUME_DIR,
    )
    check_reachable(resolve_tracking_uri(params.mlflow))

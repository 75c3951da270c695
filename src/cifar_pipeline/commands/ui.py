"""`make ui`: MLflow's UI over the project's store, with the address of the experiment's runs in MLflow's
"Model training" view (MLflow 3.17's UI opens in its GenAI view unless the address asks otherwise)."""

from __future__ import annotations

import argparse
import os

from cifar_pipeline.core import cli, paths
from cifar_pipeline.core.config import load_params
from cifar_pipeline.tracking.connection import check_reachable, resolve_tracking_uri


def experiment_url(base: str, experiment_id: str | None) -> str:
    page = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default=paths.PARAMS)
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    cfg = load_params(args.params).mlflow

    from mlflow import MlflowClient

    uri = resolve_tracking_uri(cfg)
    check_reachable(uri)
    experiment = MlflowClient(uri).get_experiment_by_name(cfg.experiment)
    experiment_id = experiment.experiment_id if experiment else None
    if uri.startswith(("http://", "https://")):  # a tracking server serves its own UI
        print(f"Open {experiment_url(uri, experiment_id)}", flush=True)
        return
    print(f"Open {experiment_url(f'http://127.0.0.1:{args.port}', experiment_id)}", flush=True)
    os.execvp("mlflow", ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)])


if __name__ == "__main__":
    cli.run(main)

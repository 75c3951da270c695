"""`make ui`: MLflow's UI over the project's store. Once the server answers, it prints the address of the
experiment's runs in MLflow's "Model training" view (MLflow 3.17's UI opens in its GenAI view unless the
address asks otherwise) and how to make the browser remember that view."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from cifar_pipeline.core import cli, paths
from cifar_pipeline.core.config import load_params
from cifar_pipeline.core.errors import TrackingError
from cifar_pipeline.tracking.connection import check_reachable, resolve_tracking_uri

# MLflow 3.17's UI ignores the experiment's `mlflow.experimentKind` tag (MLflow issue #24498).
VIEW_HINT = (
    'From the experiments list, MLflow opens the GenAI view: click "Model training" at the top of the sidebar once; '
    "your browser remembers it."
)


def experiment_url(base: str, experiment_id: str | None) -> str:
    page = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    return f"{base.rstrip('/')}/#/{page}?workflowType=machine_learning"


def answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


def serve(uri: str, port: int, experiment_id: str | None) -> int:
    """`mlflow ui` in the foreground; the address is printed once the server accepts connections."""
    base = f"http://127.0.0.1:{port}"
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # so `finally` stops the server
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command)  # in this command's process group: Ctrl-C reaches it and its workers
    try:
        while not answers(base):
            if server.poll() is not None:
                raise TrackingError(f"mlflow ui exited ({server.returncode}) before it answered; is port {port} taken?")
            time.sleep(0.2)
        print(f"Open {experiment_url(base, experiment_id)}\n{VIEW_HINT}", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return cli.INTERRUPTED_EXIT
    finally:  # Ctrl-C, SIGTERM or an error: the server stops too (mlflow passes SIGTERM on to its workers)
        if server.poll() is None:
            server.terminate()
            server.wait()


def main() -> int:
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
        print(f"Open {experiment_url(uri, experiment_id)}\n{VIEW_HINT}", flush=True)
        return 0
    return serve(uri, args.port, experiment_id)


if __name__ == "__main__":
    cli.run(main)

"""Stage `compare`: reports/comparison.{md,csv} from the three models' outputs, logged to MLflow."""

from __future__ import annotations

from cifar_pipeline.core import cli, paths
from cifar_pipeline.core.config import MODELS
from cifar_pipeline.tracking.store import Tracker
from cifar_pipeline.tracking.tags import base_tags


def main() -> None:
    params = cli.parse_args(__doc__, per_model=False)[0]

    from cifar_pipeline.reporting.comparison import build_table, write
    from cifar_pipeline.reporting.seeds import same_params_runs, seed_cells
    from cifar_pipeline.tracking.registry import crown_champions
    from cifar_pipeline.tracking.run_metadata import link_model_runs, run_name

    paths.check_writable(paths.REPORTS)
    tracker = Tracker(params.mlflow)  # before writing: a broken store leaves no reports behind
    champions = crown_champions(tracker.client, params.mlflow)
    runs = {m: paths.read_json(paths.run_info(m), paths.STAGES[m], "run_id") for m in MODELS}
    seeds = {
        m: seed_cells(same_params_runs(tracker.client, tracker.experiment_id, r["run_id"])) for m, r in runs.items()
    }
    table = build_table(params, champions, seeds)
    files = write(table)
    tags = {
        **base_tags("compare"),
        **{f"run_id.{m}": r["run_id"] for m, r in runs.items()},
        **{f"champion.{name}": version for name, version in champions.items()},
        "mlflow.note.content": link_model_runs(tracker, runs),
    }
    tracker.start(run_name("comparison"), tags, {})
    with tracker.finishing():
        accuracies = zip(table["model"], table["test_accuracy"], strict=True)
        tracker.log_metrics({f"test_accuracy/{m}": a for m, a in accuracies})
        for path in files:
            tracker.log_artifact(path)
    print(paths.REPORTS.joinpath("comparison.md").read_text())


if __name__ == "__main__":
    cli.run(main)

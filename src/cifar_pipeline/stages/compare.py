"""Stage `compare`: reports/comparison.{md,csv} from the three models' outputs, logged to MLflow."""

from __future__ import annotations

from cifar_pipeline.core import cli, paths
from cifar_pipeline.core.config import MODELS
from cifar_pipeline.tracking.store import Tracker
from cifar_pipeline.tracking.tags import base_tags


def main() -> None:
    params = cli.parse_args(__doc__, per_model=False)[0]

    from cifar_pipeline.reporting.comparison import build_table, confusion_figure, write
    from cifar_pipeline.reporting.seeds import same_params_runs, seed_cells
    from cifar_pipeline.tracking import registry
    from cifar_pipeline.tracking.run_metadata import link_model_runs, run_name

    paths.check_writable(paths.REPORTS)
    runs = {m: paths.read_json(paths.run_info(m), paths.STAGES[m], "run_id") for m in MODELS}
    tracker = Tracker(params.mlflow)  # before writing: a broken store leaves no reports behind
    splits = {m: registry.run_split(tracker.client, r["run_id"]) for m, r in runs.items()}
    champions = registry.crown_champions(tracker, params.mlflow, splits)
    registered = {m: (r["registered_model"], r["version"]) for m, r in runs.items() if "version" in r}
    gone = {v for v in registered.values() if not registry.version_exists(tracker.client, *v)}
    seeds = {
        m: seed_cells(same_params_runs(tracker.client, tracker.experiment_id, r["run_id"])) for m, r in runs.items()
    }
    table = build_table(params, {name: c.version for name, c in champions.items()}, gone, seeds)
    confusion = confusion_figure(table)  # side by side in the run's artifact view, unlike MLflow's compare view
    files = write(table)
    tags = {
        **base_tags("compare"),
        **{f"run_id.{m}": r["run_id"] for m, r in runs.items()},
        **{f"champion.{name}": c.version for name, c in champions.items()},
        "mlflow.note.content": link_model_runs(tracker, runs),
    }
    tracker.start(run_name("comparison"), tags, {})
    with tracker.finishing():
        accuracies = dict(zip(table["model"], table["test_accuracy"], strict=True))
        tracker.log_metrics({f"test_accuracy/{m}": a for m, a in accuracies.items()})
        for path in files:
            tracker.log_artifact(path)
        tracker.log_figure(confusion, "confusion_matrices.png")
        for m, version in registered.items():
            if version not in gone:
                registry.tag_test_accuracy(tracker.client, *version, accuracies[m])
    print(paths.REPORTS.joinpath("comparison.md").read_text())
    for name, c in champions.items():
        print(registry.champion_line(name, c))


if __name__ == "__main__":
    cli.run(main)

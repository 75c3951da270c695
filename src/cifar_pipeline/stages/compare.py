"""Stage `compare`: reports/comparison.{md,csv} from the three models' outputs, logged to MLflow."""

from __future__ import annotations

from .. import cli, paths
from ..tracking import Tracker, base_tags


def main() -> None:
    params = cli.parse_args(__doc__, per_model=False)[0]

    from ..comparison import build_table, write
    from ..registry import crown_champions

    paths.check_writable(paths.REPORTS)
    tracker = Tracker(params.mlflow)  # before writing: a broken store leaves no reports behind
    champions = crown_champions(tracker.client, params.mlflow)
    table = build_table(params, champions)
    files = write(table)
    tags = {**base_tags("compare"), **{f"run_id.{m}": r for m, r in zip(table["model"], table["mlflow_run_id"])},
            **{f"champion.{name}": version for name, version in champions.items()}}
    tracker.start("comparison", tags, {})
    with tracker.finishing():
        tracker.log_metrics({f"{m}.test_accuracy": a for m, a in zip(table["model"], table["test_accuracy"])})
        for path in files:
            tracker.log_artifact(path)
    print(paths.REPORTS.joinpath("comparison.md").read_text())


if __name__ == "__main__":
    cli.run(main)

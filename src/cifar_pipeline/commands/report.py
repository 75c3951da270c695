"""The report of a sweep, from what its runs logged in MLflow (it reruns nothing).

    python -m cifar_pipeline.commands.report NAME

writes reports/sweeps/NAME.md, NAME.csv and NAME.png (accuracy against the swept value, 95 % intervals),
prints the Markdown, and logs the three files to the MLflow run `sweep-NAME` (tag `sweep_report`).
docs/experiments.md explains how to read it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from cifar_pipeline.core import atomic, cli, paths
from cifar_pipeline.core.config import SWEEP_NAME, load_params
from cifar_pipeline.core.errors import ParamsError

REPORT_TAG = "sweep_report"  # on the run holding a sweep's report; not `sweep`, so it never joins the sweep's groups
SWEEPS = paths.REPORTS / "sweeps"


def log(tracker, name: str, files: list[Path]) -> None:
    """Into the sweep's report run: the one from an earlier report of this sweep, else a new one."""
    from cifar_pipeline.tracking.tags import base_tags

    earlier = tracker.client.search_runs([tracker.experiment_id], f"tags.{REPORT_TAG} = '{name}'", max_results=1)
    if earlier:
        tracker.attach(earlier[0].info.run_id)
    else:
        tracker.start(f"sweep-{name}", {**base_tags("report"), REPORT_TAG: name}, {})
    with tracker.finishing():
        for path in files:
            tracker.log_artifact(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    args = parser.parse_args()
    if not re.match(SWEEP_NAME, args.name):
        raise ParamsError(f"{args.name!r} is not a sweep name: letters, digits, - and _, starting with a letter")
    params = load_params(args.params)
    paths.check_writable(SWEEPS)

    from cifar_pipeline.reporting import sweep_report
    from cifar_pipeline.tracking.store import Tracker

    tracker = Tracker(params.mlflow)
    runs, left_out = sweep_report.sweep_runs(tracker.client, tracker.experiment_id, args.name)
    if runs.empty:
        raise ParamsError(
            f"no finished runs of sweep {args.name!r} in {tracker.uri} (tag {sweep_report.SWEEP_TAG}); "
            "check the name (`dvc exp list`) or run the sweep first: python -m cifar_pipeline.commands.sweep"
        )
    table = sweep_report.build_table(runs)
    md, csv, png = (SWEEPS / f"{args.name}.{ext}" for ext in ("md", "csv", "png"))
    sweep_report.write_plot(args.name, table, png)
    atomic.write_text(csv, table.to_csv(index=False))
    atomic.write_text(md, sweep_report.to_markdown(args.name, table, runs, left_out))
    log(tracker, args.name, [md, csv, png])
    print(md.read_text())


if __name__ == "__main__":
    cli.run(main)

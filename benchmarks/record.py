"""Add one measured GPU run to benchmarks/results.json, keeping every earlier run.

The newest run's fields sit at the top level (gpu, date, commit, models); earlier runs move,
unchanged, into `history`, newest first.

Usage: python benchmarks/record.py --throughput T.json --reports DIR --stage-seconds S.txt
           --commit SHA --date YYYY-MM-DD --command "..." [--throughput-commit SHA]
           [--results benchmarks/results.json]
--throughput-commit names the commit that T.json was measured at, when that is an earlier run's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cifar_pipeline.core import atomic
from cifar_pipeline.core.config import MODELS


def round_or_none(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


def run_entry(args: argparse.Namespace) -> dict:
    throughput = json.loads(args.throughput.read_text())
    stage_seconds = dict(line.split() for line in args.stage_seconds.read_text().splitlines() if line.strip())
    models = {}
    for name in MODELS:
        bench = throughput["models"][name]
        train = json.loads((args.reports / "train" / f"{name}.json").read_text())
        test = json.loads((args.reports / "eval" / name / "metrics.json").read_text())
        models[name] = {
            "train_seconds": round(train["train_seconds"], 2),
            "first_step_seconds": round_or_none(train.get("first_step_seconds")),
            "test_accuracy": round(test["accuracy"], 4),
            "img_per_s": round(bench["img_per_s"]),
            "dataloader_img_per_s": round(bench["dataloader_img_per_s"]),
            "floor_img_per_s": round(bench["floor_img_per_s"]),
        }
    return {
        "gpu": throughput["gpu"],
        "date": args.date,
        "commit": args.commit,
        "command": args.command,
        "throughput_commit": args.throughput_commit or args.commit,
        "total_train_seconds": round(sum(m["train_seconds"] for m in models.values()), 2),
        "stage_wall_seconds": {k: float(v) for k, v in stage_seconds.items()},
        "models": models,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--throughput", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    parser.add_argument("--stage-seconds", type=Path, required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--date", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--throughput-commit")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()

    entry = run_entry(args)
    push_run(args.results, entry)
    print(json.dumps(entry, indent=2))


PER_RECIPE = ("recipes",)  # kept on top: each recipe's entry carries its own date and commit


def push_run(results: Path, entry: dict) -> None:
    """entry becomes the newest run of results.json; the run that was newest moves into `history`."""
    previous = json.loads(results.read_text()) if results.exists() else {}
    kept = {k: previous[k] for k in PER_RECIPE if k in previous}
    history = []
    if previous:
        run = {k: v for k, v in previous.items() if k not in ("history", *PER_RECIPE)}
        history = [run, *previous.get("history", [])]
    atomic.write_json(results, {**entry, **kept, "history": history})


if __name__ == "__main__":
    main()

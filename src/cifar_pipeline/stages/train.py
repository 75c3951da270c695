"""Stages `train_cnn`, `train_resnet34`, `finetune_resnet18`: train one model, tracked in MLflow."""

from __future__ import annotations

import os
import sys

from cifar_pipeline.core import cli, paths
from cifar_pipeline.core.errors import PipelineError


def main() -> int | None:
    params, model, params_file = cli.parse_stage_args(__doc__, per_model=True)
    speaks = os.environ.get("RANK", "0") == "0"  # one process checks and reports for all ranks: the launcher, or rank 0

    from cifar_pipeline.training.preflight import check_outputs_and_store  # no torch: these fail within a second

    if speaks:
        check_outputs_and_store(params, model)

    from cifar_pipeline.engine import launch  # torch loads only once params, outputs and store are known to be fine

    if launch.wanted(params.runtime):  # runtime.gpus > 1: this process starts the ranks and waits for them
        launch.check(params.runtime, params.model(model), model)
        return launch.run_ranks(params.runtime, ["cifar_pipeline.stages.train", *sys.argv[1:]])

    from cifar_pipeline.training.stage import train

    try:
        summary = train(params, model, params_file)
    except PipelineError:
        if not speaks:  # rank 0 says it: one `error:` line, not one per rank
            raise SystemExit(2) from None
        raise
    if summary is not None:  # None on the ranks other than 0
        print(
            f"{paths.STAGES[model]}: best val_acc {summary['best_val_acc']:.4f} "
            f"(epoch {summary['best_epoch']}), {summary['train_seconds']:.1f}s training"
        )
    return None


if __name__ == "__main__":
    cli.run(main)

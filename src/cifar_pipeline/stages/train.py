"""Stages `train_cnn`, `train_resnet34`, `finetune_resnet18`: train one model, tracked in MLflow."""

from __future__ import annotations

from .. import cli, paths


def main() -> None:
    params, model, params_file = cli.parse_stage_args(__doc__, per_model=True)

    from ..training import train  # torch and mlflow load only once the params are known to be valid

    summary = train(params, model, params_file)
    print(
        f"{paths.STAGES[model]}: best val_acc {summary['best_val_acc']:.4f} "
        f"(epoch {summary['best_epoch']}), {summary['train_seconds']:.1f}s training"
    )


if __name__ == "__main__":
    cli.run_stage(main)

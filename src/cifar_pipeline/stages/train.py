"""Stages `train_cnn`, `train_resnet34`, `finetune_resnet18`: train one model, tracked in MLflow."""

from __future__ import annotations

from cifar_pipeline.core import cli, paths


def main() -> None:
    params, model, params_file = cli.parse_stage_args(__doc__, per_model=True)

    from cifar_pipeline.training.stage import train  # torch loads only once the params are known to be valid

    summary = train(params, model, params_file)
    print(
        f"{paths.STAGES[model]}: best val_acc {summary['best_val_acc']:.4f} "
        f"(epoch {summary['best_epoch']}), {summary['train_seconds']:.1f}s training"
    )


if __name__ == "__main__":
    cli.run(main)

"""Stages `train_cnn`, `train_resnet34`, `finetune_resnet18`: train one model, tracked in MLflow."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import cli, paths
from ..config import MODELS, load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    args = parser.parse_args()
    params = load_params(args.params)

    from ..training import train  # heavy imports only after the params are known to be valid

    summary = train(params, args.model)
    print(f"{paths.STAGES[args.model]}: best val_acc {summary['best_val_acc']:.4f} "
          f"(epoch {summary['best_epoch']}), {summary['train_seconds']:.1f}s training")


if __name__ == "__main__":
    cli.run(main)

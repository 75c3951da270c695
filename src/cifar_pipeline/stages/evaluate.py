"""Stage `evaluate@<model>`: test-set metrics, confusion matrix, logged into the model's MLflow run."""

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

    from ..evaluation import evaluate

    result = evaluate(params, args.model)
    print(f"evaluate {args.model}: test accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}")


if __name__ == "__main__":
    cli.run(main)

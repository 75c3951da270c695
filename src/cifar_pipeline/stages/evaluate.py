"""Stage `evaluate@<model>`: test-set metrics, confusion matrix, logged into the model's MLflow run."""

from __future__ import annotations

from .. import cli
from ..environment import paused_gc


def main() -> None:
    params, model = cli.parse_args(__doc__, per_model=True)

    with paused_gc():
        from ..evaluation import evaluate

    result = evaluate(params, model)
    print(f"evaluate {model}: test accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}")


if __name__ == "__main__":
    cli.run_stage(main)

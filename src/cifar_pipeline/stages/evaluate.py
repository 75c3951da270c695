"""Stage `evaluate`: each model's test-set metrics, confusion matrix and ROC, logged into the MLflow run that
trained it. One process evaluates the three models, so torch, MLflow and matplotlib load once."""

from __future__ import annotations

from cifar_pipeline.core import cli


def main() -> None:
    params = cli.parse_args(__doc__, per_model=False)[0]

    from cifar_pipeline.reporting.evaluation import evaluate

    for model, result in evaluate(params).items():
        print(f"evaluate {model}: test accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}")


if __name__ == "__main__":
    cli.run(main)

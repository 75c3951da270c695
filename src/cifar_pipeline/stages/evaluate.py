"""Stage `evaluate@<model>`: test-set metrics, confusion matrix, logged into the model's MLflow run."""

from __future__ import annotations

from cifar_pipeline.core import cli, paths


def main() -> None:
    params, model = cli.parse_args(__doc__, per_model=True)
    run = paths.read_json(paths.run_info(model), paths.STAGES[model], "run_id")  # these fail before torch loads
    paths.check_writable(paths.eval_dir(model))

    from cifar_pipeline.reporting.evaluation import evaluate

    result = evaluate(params, model, run["run_id"])
    print(f"evaluate {model}: test accuracy {result['accuracy']:.4f}, macro F1 {result['macro_f1']:.4f}")


if __name__ == "__main__":
    cli.run(main)

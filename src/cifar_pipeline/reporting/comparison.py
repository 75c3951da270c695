"""The comparison table of the three trained models."""

from __future__ import annotations

import pandas as pd

from cifar_pipeline.core import atomic, paths
from cifar_pipeline.core.config import MODELS, Params
from cifar_pipeline.core.errors import DataError
from cifar_pipeline.reporting import metrics

NOTEBOOK_ACCURACY = {"cnn": "89.11 %", "resnet34": "not reported", "resnet18": "91.95 %"}
TRAIN_KEYS = ("best_val_acc", "epochs", "train_seconds", "images_per_second", "params_trainable", "params_total")
COLUMNS = [
    "model",
    "init",
    "test_accuracy",
    "seeds",
    "test_accuracy_over_seeds",
    "macro_f1",
    "best_val_acc",
    "epochs",
    "train_seconds",
    "images_per_second",
    "params_trainable",
    "params_total",
    "mlflow_run_id",
    "registered_version",
    "alias",
    "notebook_accuracy",
]


def init_label(params: Params, name: str) -> str:
    if name != "resnet18":
        return "random"
    cfg = params.resnet18
    if cfg.weights_path:
        return f"weights file {cfg.weights_path}"
    return "random init (resnet18.weights: none)" if cfg.weights == "none" else f"ImageNet {cfg.weights}"


def registry_cells(run: dict, champions: dict[str, str], gone: set[tuple[str, int]]) -> dict[str, str]:
    """This run's registered version, and whether it holds the `champion` alias (else which one does); a
    version deleted from the registry is named as gone."""
    if "version" not in run:
        return {"registered_version": "not registered", "alias": ""}
    version = f"{run['registered_model']} v{run['version']}"
    if (run["registered_model"], run["version"]) in gone:
        version += " (deleted from the registry)"
    champion = champions.get(run["registered_model"])
    alias = "champion" if champion == str(run["version"]) else (f"champion is v{champion}" if champion else "")
    return {"registered_version": version, "alias": alias}


def build_table(
    params: Params, champions: dict[str, str], gone: set[tuple[str, int]], seeds: dict[str, dict[str, str]]
) -> pd.DataFrame:
    """champions: registered model name -> the version its `champion` alias points at; gone: the (registered
    model, version) pairs deleted from the registry; seeds: model -> its `seeds` and `test_accuracy_over_seeds`
    cells (reporting/seeds.py)."""
    rows = []
    for name in MODELS:
        stage = paths.STAGES[name]
        train = paths.read_json(paths.train_summary(name), stage, *TRAIN_KEYS)
        test = paths.read_json(paths.eval_dir(name) / "metrics.json", f"evaluate@{name}", "accuracy", "macro_f1")
        run = paths.read_json(paths.run_info(name), stage, "run_id")
        rows.append(
            {
                "model": name,
                "init": init_label(params, name),
                "test_accuracy": test["accuracy"],
                **seeds[name],
                "macro_f1": test["macro_f1"],
                "best_val_acc": train["best_val_acc"],
                "epochs": train["epochs"],
                "train_seconds": train["train_seconds"],
                "images_per_second": train["images_per_second"],
                "params_trainable": train["params_trainable"],
                "params_total": train["params_total"],
                "mlflow_run_id": run["run_id"],
                **registry_cells(run, champions, gone),
                "notebook_accuracy": NOTEBOOK_ACCURACY[name],
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    def cell(column: str, value) -> str:
        if column in ("test_accuracy", "macro_f1", "best_val_acc"):
            return f"{value:.2%}" if column != "macro_f1" else f"{value:.4f}"
        if column == "train_seconds":
            return f"{value:.1f}"
        if column in ("images_per_second", "params_trainable", "params_total"):
            return f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(cell(c, row[c]) for c in table.columns) + " |")
    note = (
        "\n`notebook_accuracy` is what the seed notebooks reported on the original CIFAR-10 release; "
        "it is a reference, not a result of this run. `alias` marks the registered version that holds "
        "`champion`: the best validation accuracy among all versions of that model.\n"
    )
    return "# Model comparison\n\n" + "\n".join(lines) + "\n" + note + seed_note(table)


def seed_note(table: pd.DataFrame) -> str:
    """Whether the table can tell a model's accuracy from seed noise."""
    single = [
        m for m, spread in zip(table["model"], table["test_accuracy_over_seeds"], strict=True) if spread == "one seed"
    ]
    note = (
        "\n`test_accuracy_over_seeds` is the mean ± sd (points) of the test accuracy of the finished runs with the "
        "same params and other seeds, one run per seed."
    )
    if single:
        note += (
            f" **One seed only** for {', '.join(single)}: a difference of a few tenths of a point can be seed noise. "
            'Run the same params with more seeds (`make sweep N=<name> S="seed=0,1,2"`) before trusting it.'
        )
    return note + "\n"


def write(table: pd.DataFrame) -> tuple:
    """The table as CSV and Markdown, and each model's test accuracy as DVC's one metrics file."""
    csv_path, md_path = paths.REPORTS / "comparison.csv", paths.REPORTS / "comparison.md"
    atomic.write_text(csv_path, table.to_csv(index=False))
    atomic.write_text(md_path, to_markdown(table))
    atomic.write_json(
        paths.METRICS,
        {"test_acc": {m: round(float(a), 4) for m, a in zip(table["model"], table["test_accuracy"], strict=True)}},
    )
    return csv_path, md_path, paths.METRICS


def confusion_figure(table: pd.DataFrame):
    """The models' test confusion matrices side by side, from their evaluate stages' CSVs."""
    matrices = {}
    for name, accuracy in zip(table["model"], table["test_accuracy"], strict=True):
        path = paths.eval_dir(name) / "confusion_matrix.csv"
        try:
            cm, classes = metrics.read_confusion_csv(path)
        except (OSError, ValueError) as exc:
            rebuild = f"run `dvc repro -f evaluate@{name}` to rebuild it"
            raise DataError(f"{path} is not a readable confusion matrix ({exc}); {rebuild}") from None
        matrices[f"{name}: test accuracy {accuracy:.2%}"] = cm
    return metrics.confusion_row(matrices, classes)

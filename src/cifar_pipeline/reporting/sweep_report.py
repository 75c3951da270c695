"""The report of a sweep (commands/sweep.py) from what its runs logged in MLflow: one row per model and
configuration, ranked by validation accuracy, with the best one tested against each other one."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cifar_pipeline.core import atomic
from cifar_pipeline.reporting.stats import LEVEL, Summary, interval, mean_sd, summarize, welch_p
from cifar_pipeline.tracking.tags import BASE_CONFIG, CONFIG_TAG, SWEEP_TAG

VAL = "summary/best_val_acc"  # the validation accuracy of the checkpoint each run kept
TEST = "test/accuracy"  # that checkpoint's test accuracy (evaluate)
ALPHA = 0.05
COLUMNS = [
    "model",
    "rank",
    "configuration",
    "n",
    "seeds",
    *(f"{split}_{stat}" for split in ("val", "test") for stat in ("mean", "sd", "ci_low", "ci_high")),
    "val_diff_to_best",
    "welch_p_vs_best",
]


RUN_COLUMNS = ["model", "configuration", "seed", "experiment", "run_id", "val", "test"]
STATS = {"mean": "mean", "sd": "sd", "ci_low": "low", "ci_high": "high"}  # column suffix -> Summary field


def sweep_runs(client, experiment_id: str, name: str) -> tuple[pd.DataFrame, list[str]]:
    """The sweep's training runs, one row each, and the names of those left out for lacking a metric."""
    found = client.search_runs([experiment_id], f"tags.`{SWEEP_TAG}` = '{name}'", max_results=50000)
    rows, left_out = [], []
    for run in found:
        tags, metrics = run.data.tags, run.data.metrics
        if VAL not in metrics or TEST not in metrics:
            left_out.append(f"{run.info.run_name} ({run.info.status})")
            continue
        rows.append(
            {
                "model": tags.get("model"),
                "configuration": tags.get(CONFIG_TAG, BASE_CONFIG),
                "seed": int(run.data.params.get("seed", -1)),
                "experiment": tags.get("dvc_exp_name", ""),
                "run_id": run.info.run_id,
                "val": metrics[VAL],
                "test": metrics[TEST],
            }
        )
    return pd.DataFrame(
        rows, columns=["model", "configuration", "seed", "experiment", "run_id", "val", "test"]
    ), sorted(left_out)


def build_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model: one row per configuration, ranked by validation mean (the test set never chooses)."""
    rows = []
    for model, of_model in runs.groupby("model", sort=True):
        groups = {config: group for config, group in of_model.groupby("configuration")}
        means = {config: group["val"].mean() for config, group in groups.items()}
        ranked = sorted(groups, key=lambda config: -means[config])
        best = groups[ranked[0]]["val"]
        for rank, config in enumerate(ranked, 1):
            group = groups[config]
            val, test = summarize(group["val"]), summarize(group["test"])
            rows.append(
                {
                    "model": model,
                    "rank": rank,
                    "configuration": config,
                    "n": val.n,
                    "seeds": " ".join(str(s) for s in sorted(group["seed"])),
                    **{f"val_{k}": getattr(val, a) for k, a in STATS.items()},
                    **{f"test_{k}": getattr(test, a) for k, a in STATS.items()},
                    "val_diff_to_best": val.mean - best.mean() if rank > 1 else math.nan,
                    "welch_p_vs_best": welch_p(best, group["val"]) if rank > 1 else math.nan,
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict(row: pd.Series, best: str, comparisons: int) -> str:
    p = row["welch_p_vs_best"]
    if math.isnan(p):
        return "no test: it needs two runs with some spread on each side"
    bonferroni = ALPHA / comparisons
    if p < bonferroni:
        return f"p = {p:.3g} < {bonferroni:.3g}: `{best}` is better beyond noise"
    if p < ALPHA:
        return f"p = {p:.3g}: below {ALPHA} alone, but not below {bonferroni:.3g} for {comparisons} comparisons"
    return f"p = {p:.3g}: within noise; `{best}` is not shown to be better"


def to_markdown(name: str, table: pd.DataFrame, runs: pd.DataFrame, left_out: list[str]) -> str:
    level = f"{LEVEL * 100:.0f} %"
    lines = [
        f"# Sweep `{name}`",
        "",
        f"{len(runs)} runs. Validation accuracy is each run's `{VAL}` (the held-out split its checkpoint was "
        f"chosen on); test accuracy is `{TEST}` of that checkpoint. Mean ± sample sd over seeds, and the "
        f"{level} t-interval of the mean. Rows are ranked by validation mean: the test set never chooses. "
        f"`p` is Welch's two-sided t-test of the best configuration's validation accuracies against each "
        f"other one's; with k comparisons a difference counts as beyond noise below {ALPHA}/k (Bonferroni).",
    ]
    for model, rows in table.groupby("model", sort=True):
        best = rows.iloc[0]["configuration"]
        lines += [
            "",
            f"## {model}",
            "",
            f"| rank | configuration | n | seeds | validation | {level} CI | test | {level} CI | vs best |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for _, row in rows.iterrows():
            val, test = (Summary(row["n"], *(row[f"{s}_{k}"] for k in STATS)) for s in ("val", "test"))
            versus = (
                "best"
                if row["rank"] == 1
                else f"{row['val_diff_to_best'] * 100:+.2f} points, " + verdict(row, best, len(rows) - 1)
            )
            cells = [row["rank"], f"`{row['configuration']}`", row["n"], row["seeds"]]
            cells += [mean_sd(val), interval(val), mean_sd(test), interval(test), versus]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        if (rows["n"] < 2).any():
            lines += ["", "Some configurations have one run: their difference can't be told from seed noise."]
    if left_out:
        lines += ["", f"Left out, for lacking `{VAL}` or `{TEST}` (not finished): {', '.join(left_out)}."]
    return "\n".join(lines) + "\n"


def swept_values(configs: list[str]) -> list[float] | None:
    """The one swept key's numeric values, if each configuration is `key=number` of the same key; else None."""
    pairs = [config.split("=", 1) for config in configs]
    if any(len(p) != 2 or ";" in p[1] or p[0] != pairs[0][0] for p in pairs):
        return None
    try:
        return [float(value) for _, value in pairs]
    except ValueError:
        return None


def write_plot(name: str, table: pd.DataFrame, path: Path) -> None:
    """Validation and test accuracy against the swept value, with error bars of the 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(table["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = table[table["model"] == model]
        values = swept_values(list(rows["configuration"]))
        x = values if values is not None else list(range(len(rows)))
        for split, shift in (("val", -0.05), ("test", 0.05)):
            errors = (rows[f"{split}_mean"] - rows[f"{split}_ci_low"]).fillna(0).to_numpy() * 100
            xs = x if values is not None else [i + shift for i in x]
            ax.errorbar(xs, rows[f"{split}_mean"] * 100, yerr=errors, fmt="o", capsize=4, label=split)
        if values is None:
            ax.set_xticks(x, list(rows["configuration"]), rotation=20, ha="right", fontsize=8)
        else:
            ax.set_xlabel(rows["configuration"].iloc[0].split("=")[0])
            if min(values) > 0 and max(values) / min(values) >= 10:
                ax.set_xscale("log")
            ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.set_title(f"{name}: {model}")
        ax.set_ylabel("accuracy (%), 95 % CI")
        ax.legend()
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)

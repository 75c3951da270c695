"""The sweep report's statistics and ranking on hand-made runs, the sweep tags, the sweep's plan, and how it
relays DVC's output."""

from __future__ import annotations

import math
import os
import signal
import sys

import numpy as np
import pandas as pd
import pytest

from cifar_pipeline.commands import recipes
from cifar_pipeline.commands.sweep import plan, relay, targets
from cifar_pipeline.core.config import parse_params
from cifar_pipeline.core.errors import ParamsError
from cifar_pipeline.reporting import stats, sweep_report
from cifar_pipeline.tracking.tags import sweep_tags
from helpers.project import ROOT, read_params

T_975 = {1: math.tan(math.pi * 0.475), 2: 0.95 / math.sqrt(2 * 0.975 * 0.025)}  # closed forms for df 1 and 2


def runs(groups: dict[str, tuple[list[float], list[float]]], model: str = "cnn") -> pd.DataFrame:
    """Runs of configurations: name -> (validation accuracies, test accuracies), one per seed."""
    rows = [
        {"model": model, "configuration": config, "seed": seed, "experiment": "", "run_id": "", "val": v, "test": t}
        for config, (val, test) in groups.items()
        for seed, (v, t) in enumerate(zip(val, test, strict=True))
    ]
    return pd.DataFrame(rows, columns=sweep_report.RUN_COLUMNS)


@pytest.mark.parametrize("values", [[0.81, 0.83], [0.80, 0.84, 0.83]], ids=["n2", "n3"])
def test_summary_is_mean_sample_sd_and_the_t_interval(values):
    s = stats.summarize(values)
    x = np.array(values)
    half = T_975[len(x) - 1] * x.std(ddof=1) / math.sqrt(len(x))
    assert (s.n, s.mean, s.sd) == (len(x), pytest.approx(x.mean()), pytest.approx(x.std(ddof=1)))
    assert (s.low, s.high) == (pytest.approx(x.mean() - half), pytest.approx(x.mean() + half))


def test_one_run_has_no_spread_no_interval_and_no_test():
    s = stats.summarize([0.8])
    assert s.n == 1 and s.mean == 0.8 and math.isnan(s.sd) and math.isnan(s.low)
    assert math.isnan(stats.welch_p([0.8], [0.7, 0.71]))
    assert stats.mean_sd(s) == "80.00 % (n = 1)"


def test_the_ranking_uses_validation_and_never_test():
    table = sweep_report.build_table(
        runs({"a": ([0.80, 0.81, 0.82], [0.60, 0.61, 0.62]), "b": ([0.70, 0.71, 0.72], [0.90, 0.91, 0.92])})
    )
    assert list(table["configuration"]) == ["a", "b"] and list(table["rank"]) == [1, 2]
    assert table["val_diff_to_best"][1] == pytest.approx(-0.10)
    assert table["welch_p_vs_best"][1] < 0.01


def test_each_model_is_ranked_on_its_own():
    table = sweep_report.build_table(
        pd.concat([runs({"a": ([0.5, 0.6], [0.5, 0.6])}, "resnet34"), runs({"b": ([0.9, 0.8], [0.9, 0.8])})])
    )
    assert list(zip(table["model"], table["rank"], strict=True)) == [("cnn", 1), ("resnet34", 1)]


def test_the_markdown_says_whether_the_lead_is_beyond_noise():
    clear = runs({"a": ([0.80, 0.81, 0.82], [0, 0, 0]), "b": ([0.70, 0.71, 0.72], [0, 0, 0])})
    noisy = runs({"a": ([0.80, 0.70, 0.90], [0, 0, 0]), "b": ([0.79, 0.69, 0.89], [0, 0, 0])})
    for frame, words in ((clear, "beyond noise"), (noisy, "within noise")):
        text = sweep_report.to_markdown("s", sweep_report.build_table(frame), frame, [])
        assert words in text.splitlines()[-1], text


def test_the_plot_axis_is_the_swept_value_when_there_is_one_numeric_key():
    assert sweep_report.swept_values(["cnn.optimizer.lr=0.01", "cnn.optimizer.lr=0.003"]) == [0.01, 0.003]
    assert sweep_report.swept_values(["cnn.dropout=0.1; cnn.epochs=3"]) is None
    assert sweep_report.swept_values(["base"]) is None


def test_a_runs_sweep_tags_hold_its_name_and_the_swept_values_without_the_seed():
    raw = read_params(ROOT)
    raw["sweep"] = {"name": "my-lr", "keys": ["cnn.optimizer.lr", "cnn.dropout"]}
    assert sweep_tags(parse_params(raw)) == {
        "sweep": "my-lr",
        "sweep.config": "cnn.optimizer.lr=0.001; cnn.dropout=0.5",
    }
    raw["sweep"]["keys"] = []
    assert sweep_tags(parse_params(raw))["sweep.config"] == "base"
    del raw["sweep"]
    assert sweep_tags(parse_params(raw)) == {}


def test_the_plan_names_each_point_by_its_values_and_targets_the_swept_models():
    points = plan("s", ["cnn.optimizer.lr=0.01,0.003", "resnet34.optimizer.lr=0.1", "seed=range(0,2)"], None, ROOT)
    assert [p.name for p in points][:2] == [
        "s-cnn.optimizer.lr=0.01-resnet34.optimizer.lr=0.1-seed=0",
        "s-cnn.optimizer.lr=0.01-resnet34.optimizer.lr=0.1-seed=1",
    ]
    assert len(points) == 4
    assert targets(list(points[0].values), None) == ["evaluate@cnn", "evaluate@resnet34"]
    assert targets(["seed", "data.val_size"], None) == []


def test_a_point_outside_the_schema_is_an_error_naming_the_value():
    with pytest.raises(ParamsError, match=r"cnn\.dropout must be"):
        plan("s", ["cnn.dropout=0.5,1.5"], None, ROOT)


def test_a_recipe_is_the_base_of_every_point_and_its_model_is_trained():
    recipe = recipes.load("cnn-best", ROOT)
    points = plan("s", ["seed=0,1"], recipe, ROOT)
    assert [p.name for p in points] == ["s-seed=0", "s-seed=1"]
    assert targets(list(points[0].values), recipe) == ["evaluate@cnn"]


def test_relay_returns_when_the_command_exits_while_its_child_keeps_the_pipe(capfd):
    """What `dvc exp run --run-all` does when a queue worker hangs on: a child of it keeps its output pipe."""
    script = (
        "import subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(child.pid, 'queue done', flush=True); sys.exit(3)"
    )
    assert relay([sys.executable, "-c", script]) == 3
    pid, *words = capfd.readouterr().out.split()
    try:
        assert words == ["queue", "done"]  # all it printed, copied
        os.kill(int(pid), 0)  # the child still runs, holding the pipe: relay didn't wait for the pipe to close
    finally:
        os.kill(int(pid), signal.SIGKILL)

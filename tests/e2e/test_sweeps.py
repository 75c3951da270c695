"""A real 2 x 2 sweep (two learning rates of the seed CNN, two seeds) through DVC's queue with two jobs: its runs
group by their MLflow tags (also in MLflow's UI, opened in headless Chromium), and its report's numbers equal a
computation here, from the logged metrics, with numpy alone."""

from __future__ import annotations

import itertools
import math
import re
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from helpers.processes import assert_clean_failure, free_port, run, stage_env, wait_until
from helpers.project import edit_params, make_project, store
from helpers.servers import background

pytestmark = pytest.mark.slow
SWEEP = "lrs"
GRID = ["cnn.optimizer.lr=0.002,0.004", "seed=0,1"]
CONFIGS = {"cnn.optimizer.lr=0.002", "cnn.optimizer.lr=0.004"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass(frozen=True)
class Swept:
    repo: Path
    output: str  # what the sweep command printed

    @property
    def tracking_uri(self) -> str:
        return store(self.repo)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, archive: Path, archive_md5: str) -> Swept:
    repo = make_project(tmp_path_factory.mktemp("sweep") / "project", archive, archive_md5)
    edit_params(repo, **{"cnn.epochs": 1})
    run(["git", "commit", "-qam", "one epoch"], repo)
    command = [sys.executable, "-m", "cifar_pipeline.commands.sweep", SWEEP, *GRID, "-j", "2"]
    done = run(command, repo, timeout=1800)
    return Swept(repo, done.stdout + done.stderr)


T_975_DF1 = math.tan(math.pi * 0.475)  # the t-distribution with 1 degree of freedom is Cauchy's: exact quantile


def sweep_runs(swept) -> list:
    client = MlflowClient(swept.tracking_uri)
    experiment = client.get_experiment_by_name("cifar10").experiment_id
    return client.search_runs([experiment], f"tags.sweep = '{SWEEP}'")


def test_the_sweep_queues_named_experiments_whose_runs_group_by_configuration(swept):
    runs = sweep_runs(swept)
    assert len(runs) == 4, swept.output
    groups = defaultdict(list)
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["model"] == "cnn"
        groups[r.data.tags["sweep.config"]].append(r)
    assert set(groups) == CONFIGS
    for config, members in groups.items():
        assert sorted(r.data.params["seed"] for r in members) == ["0", "1"]
        assert {r.data.params["optimizer.lr"] for r in members} == {config.split("=")[1]}
    names = run(["dvc", "exp", "list", "--name-only"], swept.repo).stdout.split()
    expected = {f"{SWEEP}-lr={lr}-seed={seed}" for lr in ("0.002", "0.004") for seed in (0, 1)}
    assert set(names) == expected
    assert {r.data.tags["dvc_exp_name"] for r in runs} == expected
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), "no two experiments overlapped"


def t_cdf(t: float, df: float) -> float:
    """Student's t CDF by integrating its density with numpy (independent of scipy)."""
    x = np.linspace(0, abs(t), 400_001)
    scale = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    density = scale * (1 + x**2 / df) ** (-(df + 1) / 2)
    half = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(x)))
    return 0.5 + math.copysign(half, t)


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * (1 - t_cdf(abs(t), df))


def test_the_report_equals_numpy_on_the_logged_metrics_and_ranks_by_validation(swept):
    printed = run([sys.executable, "-m", "cifar_pipeline.commands.report", SWEEP], swept.repo).stdout
    table = pd.read_csv(swept.repo / "reports" / "sweeps" / f"{SWEEP}.csv")
    logged = defaultdict(lambda: defaultdict(list))
    for r in sweep_runs(swept):
        for split, metric in (("val", "summary/best_val_acc"), ("test", "test/accuracy")):
            logged[r.data.tags["sweep.config"]][split].append(r.data.metrics[metric])
    assert set(table["configuration"]) == CONFIGS and (table["n"] == 2).all()
    for _, row in table.iterrows():
        for split in ("val", "test"):
            values = np.array(logged[row["configuration"]][split])
            half = T_975_DF1 * values.std(ddof=1) / math.sqrt(2)
            expected = [values.mean(), values.std(ddof=1), values.mean() - half, values.mean() + half]
            columns = [f"{split}_{stat}" for stat in ("mean", "sd", "ci_low", "ci_high")]
            assert np.allclose(row[columns].to_numpy(dtype=float), expected), (split, row)

    by_val = sorted(CONFIGS, key=lambda c: -np.mean(logged[c]["val"]))
    assert list(table["configuration"]) == by_val and list(table["rank"]) == [1, 2]
    best, other = (np.array(logged[c]["val"]) for c in by_val)
    if best.std() == 0 and other.std() == 0:
        assert math.isnan(table["welch_p_vs_best"][1])
    else:
        assert table["welch_p_vs_best"][1] == pytest.approx(welch_p(best, other), abs=1e-4)
    assert "Welch" in printed and f"`{by_val[0]}`" in printed

    client = MlflowClient(swept.tracking_uri)
    experiment = client.get_experiment_by_name("cifar10").experiment_id
    [report_run] = client.search_runs([experiment], f"tags.sweep_report = '{SWEEP}'")
    logged_files = {f.path for f in client.list_artifacts(report_run.info.run_id)}
    assert logged_files == {f"{SWEEP}.{ext}" for ext in ("md", "csv", "png")}
    assert (swept.repo / "reports" / "sweeps" / f"{SWEEP}.png").read_bytes().startswith(b"\x89PNG")


def test_a_sweep_whose_name_exists_fails_before_queueing_anything(swept):
    before = run(["dvc", "exp", "list", "--name-only"], swept.repo).stdout
    result = run([sys.executable, "-m", "cifar_pipeline.commands.sweep", SWEEP, "seed=7"], swept.repo, check=False)
    assert_clean_failure(result, f"sweep {SWEEP!r} exists", "dvc exp remove")
    assert run(["dvc", "exp", "list", "--name-only"], swept.repo).stdout == before
    assert "Queued" not in run(["dvc", "queue", "status"], swept.repo).stdout


def test_a_sweep_whose_experiment_fails_says_which_and_exits_non_zero(project):
    grid = ["resnet18.weights_path=/nonexistent/resnet18.pth"]  # passes the schema, fails in the stage
    result = run([sys.executable, "-m", "cifar_pipeline.commands.sweep", "broken", *grid], project, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sweep broken: 1 experiments failed" in result.stdout
    assert "broken-weights_path=_nonexistent_resnet18.pth" in result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_mlflow_groups_the_sweeps_runs_by_configuration(swept, tmp_path):
    from playwright.sync_api import sync_playwright

    log = tmp_path / "ui.log"
    ui = [sys.executable, "-m", "cifar_pipeline.commands.ui", "--params", str(swept.repo / "params.yaml")]
    env = stage_env(MLFLOW_TRACKING_URI=swept.tracking_uri)
    with background([*ui, "--port", str(free_port())], env, log) as proc, sync_playwright() as p:
        wait_until(lambda: "Open " in log.read_text(), proc, "mlflow ui", log, timeout=300)  # printed once it answers
        address = re.search(r"^Open (\S+)", log.read_text(), flags=re.M).group(1)
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        only_the_sweep = quote(f"tags.sweep = '{SWEEP}'")
        page.goto(f"{address}&searchFilter={only_the_sweep}")
        page.get_by_text("4 matching runs").wait_for()
        page.get_by_role("button", name="Group by").click()
        page.get_by_role("menuitemcheckbox", name="sweep.config").click()
        page.keyboard.press("Escape")
        page.get_by_role("button", name="Group by: sweep.config").wait_for()
        for config in CONFIGS:  # the grouped rows render after the button
            page.get_by_text(f"Group: {config}").first.wait_for()
        table = page.locator("body").inner_text()
        groups = dict(re.findall(r"^Group: (\S+)\n(\d+)$", table, flags=re.M))
        assert groups == dict.fromkeys(CONFIGS, "2"), table
        browser.close()

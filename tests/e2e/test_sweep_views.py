"""MLflow's runs table, opened in headless Chromium on the 2 x 2 sweep (helpers/sweeps.py), filtered to the
sweep and grouped by its `sweep.config` tag: one group of two runs per configuration."""

from __future__ import annotations

import re
import shutil
import sys
from urllib.parse import quote

import pytest

from helpers import sweeps
from helpers.processes import free_port, stage_env, wait_until
from helpers.servers import background
from helpers.sweeps import CONFIGS, SWEEP

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"),
]
swept = sweeps.swept  # the fixture


def test_mlflow_groups_the_sweeps_runs_by_configuration(swept, tmp_path):
    from playwright.sync_api import sync_playwright

    log = tmp_path / "ui.log"
    ui = [sys.executable, "-m", "cifar_pipeline.commands.ui", "--params", str(swept.repo / "params.yaml")]
    env = stage_env(MLFLOW_TRACKING_URI=swept.tracking_uri)
    with background([*ui, "--port", str(free_port())], env, log) as proc, sync_playwright() as p:
        wait_until(lambda: "Application startup complete" in log.read_text(), proc, "mlflow ui", log, timeout=180)
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
        table = page.locator("body").inner_text()
        groups = dict(re.findall(r"^Group: (\S+)\n(\d+)$", table, flags=re.M))
        assert groups == dict.fromkeys(CONFIGS, "2"), table
        browser.close()

"""What a user looks at, opened in headless Chromium: `dvc plots show/diff` with the network blocked, and
the `mlflow ui` that `make ui` starts on loopback, over the store of the two tiny DVC experiments.
$VIEWS_SCREENSHOTS, if set, is a folder that receives a screenshot of each view (docs/ holds the README's)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow import MlflowClient

from helpers.processes import free_port, run, stage_env, wait_until
from helpers.project import store

MODELS = ["cnn", "resnet34", "resnet18"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GENAI_ONLY = ["Agent versions", "Judges", "Prompts", "Training runs"]  # sidebar entries of MLflow's GenAI mode

NO_BROWSER = "needs Debian's chromium (apt-get install chromium)"
if CHROMIUM is None and os.environ.get("VIEWS_REQUIRED") == "1":  # .ci/run: these tests must run, not skip
    pytest.fail(f"VIEWS_REQUIRED=1: {NO_BROWSER}", pytrace=False)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason=NO_BROWSER)]
WIDTH = 1400  # where the users compare


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("VIEWS_SCREENSHOTS")
    if folder:
        for button in page.get_by_role("button", name="Close", exact=True).all():  # MLflow's assistant panel
            button.click()
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def chart_facts(page) -> list[dict]:
    """Per vega chart: its title, each legend's labels with the stroke and dashes of its swatches, and the
    stroke colour and dashes of each line."""
    return page.evaluate("""() => [...document.querySelectorAll('svg.marks')].map(svg => ({
        title: svg.querySelector('.role-title-text')?.textContent,
        legends: [...svg.querySelectorAll('.role-legend')].map(legend => ({
            title: legend.querySelector('.role-legend-title text')?.textContent,
            labels: [...legend.querySelectorAll('.role-legend-label text')].map(t => t.textContent),
            swatches: [...legend.querySelectorAll('.role-legend-symbol path')].map(
                s => [s.getAttribute('stroke'), s.getAttribute('stroke-dasharray')]),
        })),
        lines: [...svg.querySelectorAll('.mark-line path')].map(
            p => [p.getAttribute('stroke'), p.getAttribute('stroke-dasharray')]),
    }))""")


def legend(chart: dict, title: str) -> dict:
    return next(entry for entry in chart["legends"] if entry["title"] == title)


def assert_dashes_decodable(chart: dict, title: str, labels: list[str]) -> None:
    """The dash legend names each label once, with a visible swatch of a dash pattern no other label has."""
    dashes = legend(chart, title)
    assert sorted(dashes["labels"]) == sorted(labels), (chart["title"], dashes)
    assert all(stroke not in (None, "transparent") for stroke, _ in dashes["swatches"]), (chart["title"], dashes)
    assert len({dash for _, dash in dashes["swatches"]}) == len(labels), (chart["title"], dashes)


@pytest.mark.parametrize("command", [["show"], ["diff", "first", "second"]], ids=["show", "diff"])
def test_dvc_plots_draw_every_chart_with_the_network_blocked(experiments, browser, tmp_path, command):
    project = experiments[0]
    out = tmp_path / "plots"
    run(["dvc", "plots", *command, "-o", str(out)], project)
    revisions = command[1:] or ["workspace"]

    context = browser.new_context(offline=True, viewport={"width": WIDTH, "height": 900})
    requested: list[str] = []
    context.route(
        "**/*",
        lambda route: (
            route.continue_()
            if route.request.url.startswith("file:")
            else (requested.append(route.request.url), route.abort())
        ),
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto((out / "index.html").as_uri())
    page.wait_for_function("document.querySelectorAll('svg.marks').length >= 5")
    page.wait_for_function("[...document.images].every(img => img.complete)")

    charts = chart_facts(page)
    curves = ["Validation accuracy per epoch", "Train and validation loss per epoch"]
    assert [c["title"] for c in charts] == [*curves, *(f"{m}: one-vs-rest ROC per class (test set)" for m in MODELS)]
    metrics = [["val_acc"], ["train_loss", "val_loss"]]
    for chart, names in zip(charts[:2], metrics, strict=True):
        assert legend(chart, "model")["labels"] == MODELS, chart
        assert len({stroke for stroke, _ in chart["lines"]}) == 3, chart  # one colour per model
        assert_dashes_decodable(chart, "revision / metric", [f"{rev} {name}" for rev in revisions for name in names])
    for chart in charts[2:]:
        assert len({stroke for stroke, _ in chart["lines"]}) == 10, chart  # one colour per class
        assert len({tuple(line) for line in chart["lines"]}) == 10 * len(revisions), chart  # and a dash per revision
        assert_dashes_decodable(chart, "revision", revisions)
    loaded = page.evaluate("[...document.images].map(img => img.naturalWidth > 0)")
    assert loaded == [True] * 3 * len(revisions)  # each model's confusion matrix per revision
    assert errors == [] and requested == []
    screenshot(page, f"dvc-plots-{command[0]}.png")
    context.close()


@pytest.fixture(scope="module")
def mlflow_ui(experiments, tmp_path_factory):
    """What `make ui` starts, on a free loopback port; yields the address it prints."""
    project = experiments[0]
    log = tmp_path_factory.mktemp("mlflow-ui") / "ui.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cifar_pipeline.commands.ui", "--port", str(free_port())],
            cwd=project,
            env=stage_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def printed() -> bool:
            return "Open " in log.read_text()

        wait_until(printed, proc, "mlflow ui", log, timeout=300)
        address = re.search(r"^Open (\S+)", log.read_text(), flags=re.M).group(1)
        with urllib.request.urlopen(f"{base(address)}/health", timeout=5):  # printed only once it answers
            pass
        assert '"Model training"' in log.read_text()  # where to click once so the browser remembers the view
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)  # to the command alone, not its process group
        proc.wait(timeout=60)
    with pytest.raises(OSError):  # the server it started stopped with it
        urllib.request.urlopen(f"{base(address)}/health", timeout=5)


def base(address: str) -> str:
    return address.split("/#/")[0]


def open_run(experiments, mlflow_ui: str, browser, run_name: str, tab: str):
    """A new page, WIDTH wide, on the tab (`artifacts`, `model-metrics`) of the run called `run_name`."""
    client = MlflowClient(store(experiments[0]))
    experiment = client.get_experiment_by_name("cifar10").experiment_id
    [run] = client.search_runs([experiment], f"attributes.run_name = '{run_name}'")
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    page.goto(
        f"{base(mlflow_ui)}/#/experiments/{experiment}/runs/{run.info.run_id}/{tab}?workflowType=machine_learning"
    )
    return page


def test_mlflow_ui_shows_a_model_training_experiment_with_named_runs(mlflow_ui, browser):
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    assert mlflow_ui.endswith("/runs?workflowType=machine_learning"), mlflow_ui
    page.goto(mlflow_ui)
    page.get_by_text("cnn-first").first.wait_for()
    sidebar = page.locator("nav").first.inner_text()
    assert "Runs" in sidebar and not [entry for entry in GENAI_ONLY if entry in sidebar], sidebar
    table = page.locator("body").inner_text()
    for name in ["cnn-first", "resnet34-first", "resnet34-second", "resnet18-first", "comparison-second"]:
        assert name in table
    assert "cifar10 (" in table  # the dataset column
    screenshot(page, "mlflow-runs.png")
    page.close()


def test_mlflow_compare_view_lines_up_params_and_metrics_across_models(experiments, mlflow_ui, browser):
    client = MlflowClient(store(experiments[0]))
    experiment = client.get_experiment_by_name("cifar10").experiment_id
    runs = client.search_runs([experiment], "tags.dvc_exp_name = 'first' and tags.stage != 'compare'")
    assert sorted(r.data.tags["model"] for r in runs) == sorted(MODELS)
    ids = quote(json.dumps([r.info.run_id for r in runs]))
    page = browser.new_page(viewport={"width": WIDTH, "height": 900})
    page.goto(
        f"{base(mlflow_ui)}/#/compare-runs?runs={ids}&experiments={quote(json.dumps([experiment]))}"
        "&workflowType=machine_learning"
    )
    page.get_by_text("test/accuracy", exact=True).first.wait_for()
    for key in ["optimizer.lr", "epochs", "test/accuracy"]:  # params and metrics line up across models
        assert page.get_by_text(key, exact=True).count() >= 1, key
    screenshot(page, "mlflow-compare.png")
    page.close()


def test_mlflow_comparison_run_shows_the_confusion_matrices_side_by_side(experiments, mlflow_ui, browser):
    """Where the three models' confusion matrices can be read at 1400 px: MLflow 3.17's compare view lists
    artifacts in a pane 2 px wide below about 1800 px, and its chart view draws logged images as 256 px
    thumbnails. `compare` logs them side by side as one figure, which the comparison run's artifact view
    scales to its pane."""
    page = open_run(experiments, mlflow_ui, browser, "comparison-second", "artifacts")
    close = page.get_by_role("button", name="Close", exact=True)  # MLflow's assistant panel, open on a first visit
    close.click()
    close.wait_for(state="hidden")
    page.get_by_text("confusion_matrices.png", exact=True).click()  # in the run's list of artifacts
    image = page.locator("img[alt='confusion_matrices.png']")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    box = image.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= WIDTH and box["y"] + box["height"] <= 900, box  # no scrolling
    assert box["width"] >= 3 * 270, box  # each matrix about 280 px wide and its counts about 9 px: readable
    screenshot(page, "mlflow-confusion-matrices.png")
    page.close()


def test_mlflow_run_page_shows_the_curves_first(experiments, mlflow_ui, browser):
    page = open_run(experiments, mlflow_ui, browser, "cnn-first", "model-metrics")
    page.get_by_text("test_per_class", exact=True).wait_for()
    sections = re.findall(r"^(\w+) \(\d+\)$", page.locator("body").inner_text().replace("\n(", " ("), flags=re.M)
    assert sections[:4] == ["Train", "Val", "summary", "test"], sections
    screenshot(page, "mlflow-run-metrics.png")
    page.close()

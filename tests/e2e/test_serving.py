"""A trained project used as users would: the predict CLI, the registered model loaded by alias in a
fresh process, and `mlflow models serve`, all agreeing with the evaluate stage image for image; the
served model's input schema, and its short error answers."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from cifar_pipeline.core.config import load_params
from cifar_pipeline.engine.augment import to_unit_float
from cifar_pipeline.engine.device import Settings, predict
from cifar_pipeline.reporting.evaluation import load_trained
from helpers.images import png_header
from helpers.processes import free_port, run, stage_env, start_in_own_group, wait_for_line
from helpers.project import store

pytestmark = pytest.mark.slow
MODEL_URI = "models:/cifar10-cnn@champion"


@pytest.fixture(scope="module")
def trained(experiments):
    """The suite's trained project (two DVC experiments; the second retrained ResNet-34)."""
    return experiments[0]


@pytest.fixture(scope="module")
def test_set(trained):
    """The test images as PNG files, their uint8 arrays and the class names."""
    with np.load(trained / "data" / "cifar10.npz") as npz:
        images, labels, classes = npz["test_x"], npz["test_y"], npz["classes"].tolist()
    folder = trained / "test_images"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    return folder, images, labels, classes


@pytest.fixture(scope="module")
def evaluate_predictions(trained, test_set):
    """The class the evaluate stage's code predicts for each test image; checked against its confusion matrix."""
    _, images, labels, classes = test_set
    cwd = os.getcwd()
    os.chdir(trained)  # the stages' paths are relative to the project root
    try:
        model = load_trained("cnn")
        settings = Settings.resolve(load_params("params.yaml").runtime)
        logits = predict(model, to_unit_float(torch.from_numpy(images).permute(0, 3, 1, 2)), settings)
    finally:
        os.chdir(cwd)
    predicted = logits.argmax(1).numpy()
    with open(trained / "reports" / "eval" / "cnn" / "confusion_matrix.csv") as fh:
        written = np.array([[int(v) for v in row[1:]] for row in list(csv.reader(fh))[1:]])
    expected = np.zeros((10, 10), dtype=int)
    np.add.at(expected, (labels, predicted), 1)
    assert np.array_equal(written, expected)  # the same predictions the evaluate stage counted
    assert (predicted == labels).mean() > 0.5  # a trained model (chance is 0.1), so agreement means something
    return [classes[i] for i in predicted]


def test_predict_cli_matches_evaluate_for_a_file_and_an_alias(trained, test_set, evaluate_predictions):
    folder = test_set[0]
    by_file = run(
        [
            sys.executable,
            "-m",
            "cifar_pipeline.commands.predict",
            "-m",
            "models/cnn/best.pt",
            str(folder),
            "--out",
            "predictions.csv",
        ],
        trained,
    )
    assert "200 predictions written to predictions.csv" in by_file.stderr
    with open(trained / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["class"] for r in rows] == evaluate_predictions
    assert [r["image"] for r in rows] == [str(folder / f"{i:04d}.png") for i in range(200)]
    probabilities = np.array([[float(r[c]) for c in test_set[3]] for r in rows])
    assert np.allclose(probabilities.sum(1), 1, atol=1e-4)

    by_alias = run(
        [
            sys.executable,
            "-m",
            "cifar_pipeline.commands.predict",
            "-m",
            MODEL_URI,
            "test_images/*.png",
            "--format",
            "json",
            "--top-k",
            "2",
        ],
        trained,
    )
    records = json.loads(by_alias.stdout)
    assert [r["class"] for r in records] == evaluate_predictions
    assert all(len(r["top_k"]) == 2 and r["top_k"][0]["class"] == r["class"] for r in records)


def test_registered_model_loads_by_alias_in_a_fresh_process(trained, test_set, evaluate_predictions):
    script = textwrap.dedent(f"""
        import json, pathlib, sys
        import mlflow, pandas as pd
        mlflow.set_tracking_uri({store(trained)!r})
        model = mlflow.pyfunc.load_model({MODEL_URI!r})
        files = sorted(pathlib.Path("test_images").glob("*.png"))
        answer = model.predict(pd.DataFrame({{"image": [f.read_bytes() for f in files]}}))
        json.dump({{"classes": answer["class"].tolist(), "columns": answer.columns.tolist(),
                   "sums": answer.iloc[:, 1:].sum(axis=1).tolist()}}, sys.stdout)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=trained, env=stage_env(), capture_output=True, text=True, timeout=600
    )  # stage_env drops every MLFLOW_* variable but telemetry
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["classes"] == evaluate_predictions
    assert result["columns"] == ["class", *test_set[3]]
    assert np.allclose(result["sums"], 1, atol=1e-4)


def test_logged_model_is_code_plus_weights_no_pickle(trained):
    import mlflow

    mlflow.set_tracking_uri(store(trained))
    local = mlflow.artifacts.download_artifacts(MODEL_URI)
    mlmodel = yaml.safe_load(Path(local, "MLmodel").read_text())
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in flavor  # no cloudpickled object
    assert not [f for _, _, files in os.walk(local) for f in files if f.endswith((".pkl", ".pickle"))]
    assert json.loads(mlmodel["signature"]["inputs"]) == [{"type": "binary", "name": "image", "required": True}]
    assert json.loads(mlmodel["signature"]["outputs"])[0]["name"] == "class"
    example = json.loads(Path(local, "serving_input_example.json").read_text())  # what MLflow's docs tell to send
    assert example["dataframe_split"]["columns"] == ["image"]


@pytest.fixture(scope="module")
def served(trained):
    """`mlflow models serve` of the champion on a free loopback port, as docs/serving.md starts it."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", MODEL_URI, "--env-manager", "local"]
    server = start_in_own_group([*cmd, "-h", "127.0.0.1", "-p", str(port)], trained, MLFLOW_TRACKING_URI=store(trained))
    try:
        wait_for_line(server, r"Uvicorn running on|Listening at")  # ready once uvicorn says it is listening
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def images_request(files: list[bytes]) -> bytes:
    """The request docs/serving.md shows: each file base64-encoded, one row of `dataframe_split` each."""
    rows = [[base64.b64encode(file).decode()] for file in files]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


def test_served_model_answers_encoded_images_as_evaluate_does(served, test_set, evaluate_predictions):
    folder, images = test_set[0], test_set[1]
    files = [path.read_bytes() for path in sorted(folder.glob("*.png"))]
    body = images_request(files)
    assert len(body) < len(json.dumps({"inputs": images.tolist()}))  # smaller than the pixels as JSON lists
    status, answer = post(served, body)
    assert status == 200, answer
    predictions = json.loads(answer)["predictions"]
    assert [p["class"] for p in predictions] == evaluate_predictions
    assert set(predictions[0]) == {"class", *test_set[3]}

    photo = io.BytesIO()
    Image.fromarray(images[0]).resize((640, 480)).save(photo, format="JPEG", quality=90)
    status, answer = post(served, images_request([photo.getvalue(), files[1]]))  # two sizes in one request
    assert status == 200, answer
    assert len(json.loads(answer)["predictions"]) == 2


def test_served_model_errors_are_short_and_name_the_image(served, test_set):
    files = [path.read_bytes() for path in sorted(test_set[0].glob("*.png"))]
    pixels = json.dumps({"inputs": test_set[1][:2].tolist()}).encode()
    for body, message in (
        (images_request([*files, b"not an image"]), "image 200 is not an image (PNG or JPEG expected)"),
        (images_request([files[0], png_header(20000, 20000)]), "image 1 is too large"),
        (images_request([]), "no images"),
        (pixels, "image 0 is a list, not the bytes of a PNG or JPEG file"),
    ):
        status, answer = post(served, body)
        assert status == 400, answer
        assert message in json.loads(answer)["message"]
        assert len(answer) < 5000  # the first request is 0.8 MB: MLflow's echo of it is cut short

    status, answer = post(served, b"[" * 100_000 + b"]" * 100_000)  # MLflow's JSON parser gives up
    assert (status, answer) == (500, b"Internal Server Error")
    assert post(served, images_request(files[:1]))[0] == 200  # and the server goes on


def test_comparison_shows_the_registered_version_and_champion(trained):
    with open(trained / "reports" / "comparison.csv") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    client = MlflowClient(store(trained))
    for model, version in (("cnn", 1), ("resnet34", 2), ("resnet18", 1)):  # the second experiment: resnet34 v2
        assert rows[model]["registered_version"] == f"cifar10-{model} v{version}"
        champion = client.get_model_version_by_alias(f"cifar10-{model}", "champion").version
        assert rows[model]["alias"] == ("champion" if int(champion) == version else f"champion is v{champion}")
    info = json.loads((trained / "models" / "cnn" / "mlflow_run.json").read_text())
    assert info["registered_model"] == "cifar10-cnn" and info["version"] == 1
    assert info["model_uri"].startswith("models:/m-")

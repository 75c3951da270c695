"""The predict command on an untrained model file: output formats, CIFAR-style resizing, images read as
a viewer shows them, and one clear error for each bad input."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from cifar_pipeline.commands import predict
from cifar_pipeline.core import cli
from cifar_pipeline.core.config import CnnParams, Resnet34Params
from cifar_pipeline.engine import checkpoint
from cifar_pipeline.engine.models import build_model
from helpers.data import CLASSES
from helpers.images import png_header
from helpers.processes import assert_clean_failure, free_port, run
from helpers.project import random_resnet18_weights


def model_file(path, weights=None):
    """A cnn model file as a training stage writes it; `weights` puts another model's weights in it."""
    cfg = CnnParams(epochs=1, optimizer={"lr": 0.001})
    state = (weights or build_model("cnn", cfg)).state_dict()
    checkpoint.save(checkpoint.model_file("cnn", cfg.model_dump(), CLASSES, state), path)
    return path


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    torch.manual_seed(0)
    return model_file(tmp_path_factory.mktemp("model") / "best.pt")


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "small.png")
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(folder / "nested" / "photo.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 50), dtype=np.uint8)).save(folder / "gray.png")
    return folder


def call(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the command as its console script does; (exit code, stdout, stderr)."""
    try:
        cli.run(lambda: predict.main(list(argv)))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_json_csv_and_table_agree(capsys, cnn_file, images, tmp_path):
    code, out, _ = call(capsys, "-m", str(cnn_file), str(images), "--format", "json", "-k", "4")
    assert code == 0
    records = json.loads(out)
    assert [r["image"] for r in records] == [str(images / n) for n in ("gray.png", "nested/photo.jpg", "small.png")]
    for r in records:
        probabilities = r["probabilities"]
        assert list(probabilities) == CLASSES and abs(sum(probabilities.values()) - 1) < 1e-5
        assert [t["class"] for t in r["top_k"]] == sorted(CLASSES, key=lambda c: -probabilities[c])[:4]
        assert r["class"] == r["top_k"][0]["class"]

    code, _, err = call(capsys, "-m", str(cnn_file.parent), str(images), "--out", str(tmp_path / "p.csv"))
    assert code == 0 and "3 predictions written" in err
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "image,class,probability," + ",".join(CLASSES)
    assert [row.split(",")[1] for row in rows[1:]] == [r["class"] for r in records]

    code, out, _ = call(capsys, "-m", str(cnn_file), str(images / "small.png"))
    assert code == 0
    header, line = out.splitlines()
    assert header.split() == ["image", "top", "1", "top", "2", "top", "3"]
    assert line.split()[1] == records[2]["class"]


def test_images_are_downscaled_like_pil_antialiased_bilinear(images):
    photo = images / "nested" / "photo.jpg"
    ours = predict.read_image(photo).astype(int)
    pil = np.asarray(Image.open(photo).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)).astype(int)
    assert ours.shape == (32, 32, 3)
    assert np.abs(ours - pil).max() <= 2
    small = images / "small.png"
    assert np.array_equal(predict.read_image(small), np.asarray(Image.open(small)))  # 32x32 stays as it is


def test_16_bit_grayscale_is_scaled_not_clipped_to_white(tmp_path):
    gray8 = np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(gray8).save(tmp_path / "8bit.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "16bit.png")  # the same picture in 16 bits
    assert Image.open(tmp_path / "16bit.png").mode == "I;16"
    assert np.array_equal(predict.read_image(tmp_path / "16bit.png"), predict.read_image(tmp_path / "8bit.png"))


def test_exif_orientation_is_applied_as_a_viewer_does(tmp_path):
    upright = np.zeros((48, 32, 3), dtype=np.uint8)
    upright[:24] = 255  # a portrait picture: white top, black bottom
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90° clockwise to view, as a phone writes a portrait photo
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    sideways.save(tmp_path / "phone.jpg", quality=95, exif=exif)
    read = predict.read_image(tmp_path / "phone.jpg").astype(int)
    assert np.abs(read - predict.read_image(tmp_path / "upright.jpg")).mean() < 2


def bad(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_an_image", "is not an image (PNG or JPEG expected)"),
        ("corrupt_image", "is a corrupt image"),
        ("empty_folder", "has no PNG or JPEG images"),
        ("missing_file", "does not exist"),
        ("dev_null", "/dev/null is not a regular file"),
        ("decompression_bomb", "big.png is too large: Image size (400000000 pixels) exceeds limit"),
        ("out_is_a_folder", "is a folder; name a file in it"),
        ("glob_without_match", "no file matches"),
        ("unknown_model_uri", "cannot load models:/cifar10-nope@champion from the MLflow store"),
        ("store_missing", "does not exist; train first"),
        ("imagenet_state_dict", "is not a model file written by a training stage"),
        ("weights_of_another_model", "says it holds a cnn, but its weights do not fit one"),
        ("not_a_torch_file", "is not a model file written by a training stage"),
    ],
)
def test_bad_input_gives_one_clear_error(capsys, tmp_path, cnn_file, images, case, message):
    model, inputs = str(cnn_file), [str(images)]
    if case == "not_an_image":
        inputs = [str(bad(tmp_path, "notes.png", b"just text"))]
    elif case == "corrupt_image":
        inputs = [str(bad(tmp_path, "cut.jpg", (images / "nested" / "photo.jpg").read_bytes()[:3000]))]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        bad(tmp_path / "empty", "readme.txt", b"no images here")
        inputs = [str(tmp_path / "empty")]
    elif case == "missing_file":
        inputs = [str(tmp_path / "nope.png")]
    elif case == "dev_null":
        inputs = ["/dev/null"]
    elif case == "decompression_bomb":
        inputs = [str(bad(tmp_path, "big.png", png_header(20000, 20000)))]
    elif case == "out_is_a_folder":
        (tmp_path / "out").mkdir()
        inputs = [*inputs, "--out", str(tmp_path / "out")]
    elif case == "glob_without_match":
        inputs = [str(tmp_path / "*.jpeg")]
    elif case == "unknown_model_uri":
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
        MlflowClient(store).search_experiments()  # an existing, empty store
        model, inputs = "models:/cifar10-nope@champion", ["--tracking-uri", store, *inputs]
    elif case == "store_missing":
        model, inputs = "models:/cifar10-cnn@champion", ["--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}", *inputs]
    elif case == "imagenet_state_dict":
        model = str(random_resnet18_weights(tmp_path / "resnet18.pth"))
    elif case == "weights_of_another_model":
        model = str(
            model_file(tmp_path / "mixed.pt", build_model("resnet34", Resnet34Params(epochs=1, optimizer={"lr": 0.1})))
        )
    elif case == "not_a_torch_file":
        model = str(bad(tmp_path, "best.pt", b"not a checkpoint"))

    code, out, err = call(capsys, "-m", model, *inputs)

    assert code == 2
    assert out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "x.db").exists()  # a wrong store is not created


def drop_root_override() -> list[str]:
    """A command prefix under which root, too, is refused by file permissions (tests run as root in CI)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux) to drop the file-permission override")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def predict_command(*argv: str) -> list[str]:
    return [*drop_root_override(), sys.executable, "-m", "cifar_pipeline.commands.predict", *argv]


def test_unreadable_image_is_a_permission_problem(tmp_path, cnn_file, images):
    locked = images / "small.png"
    locked.chmod(0o000)
    result = run(predict_command("-m", str(cnn_file), str(locked)), tmp_path, check=False)
    assert_clean_failure(result, f"{locked} can't be read: permission denied")


def test_out_in_a_read_only_folder_fails_before_any_work(tmp_path, cnn_file, images):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o555)
    result = run(
        predict_command("-m", str(cnn_file), str(images), "--out", str(folder / "p.csv")), tmp_path, check=False
    )
    assert_clean_failure(result, f"{folder} is not a writable folder")
    assert not list(folder.iterdir())


def test_unreachable_tracking_server_fails_within_seconds(tmp_path, images):
    server = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    result = run(
        predict_command("-m", "models:/cifar10-cnn@champion", "--tracking-uri", server, str(images)),
        tmp_path,
        check=False,
        timeout=120,  # MLflow alone retries for minutes
    )
    assert_clean_failure(result, f"MLflow tracking server {server} is unreachable")
    assert time.monotonic() - start < 60

"""Classify your own images with a trained model.

  python -m cifar_pipeline.commands.predict -m models:/cifar10-cnn@champion photos/ cat.jpg 'more/*.png'
  python -m cifar_pipeline.commands.predict -m models/cnn/best.pt photos/ --format json --out predictions.json

The model is a training stage's file (models/<name>/best.pt, or its folder), or an MLflow model URI
(models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/best_model, models:/<model id>).
Images are PNG/JPEG files, folders (searched recursively) or globs; each is turned upright as its EXIF
orientation says and squeezed to 32x32 with an antialiased downscale, as CIFAR-10's images were made.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from cifar_pipeline.core import atomic, cli, paths
from cifar_pipeline.core.errors import OutputError, PipelineError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
URI_SCHEMES = ("models:/", "runs:/")
FORMATS = ("table", "json", "csv")
PROGRESS_MIN_IMAGES = 1000  # shorter inputs get no progress bar


class ImageFileError(PipelineError):
    """An image argument that names no readable image."""


class ModelSourceError(PipelineError):
    """A --model that names no model to load."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cifar-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="+", help="image files, folders or globs")
    parser.add_argument("-m", "--model", required=True, help="models/<name>/best.pt or an MLflow model URI")
    parser.add_argument(
        "-k",
        "--top-k",
        type=int,
        default=3,
        choices=range(1, 11),
        metavar="1..10",
        help="classes shown per image in the table (default 3)",
    )
    parser.add_argument(
        "--format", choices=FORMATS, help="table, json or csv (default: from --out's suffix, else table)"
    )
    parser.add_argument("--out", type=Path, help="write here instead of printing")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    parser.add_argument(
        "--device", choices=("auto", "cuda", "mps", "cpu"), default="auto", help="auto: the GPU when there is one"
    )
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store for models:/ and runs:/ URIs (default: "
        "$MLFLOW_TRACKING_URI, else mlflow.tracking_uri of ./params.yaml)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.format is None:
        suffix = args.out.suffix.lstrip(".").lower() if args.out else ""
        args.format = suffix if suffix in ("json", "csv") else "table"
    return args


def check_out(out: Path) -> None:
    """--out must name a file in a folder that can be written; checked before any work."""
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; name a file in it, e.g. --out {out / 'predictions.csv'}")
    folder = next(p for p in (out.parent, *out.parent.parents) if p.exists())  # atomic writes create the rest
    if not folder.is_dir() or not paths.can_create_files_in(folder):
        raise OutputError(
            f"--out {out} can't be written: {folder} is not a writable folder; "
            f"make it writable (chmod u+w {folder}) or pass another --out"
        )


def image_files(arguments: list[str]) -> list[Path]:
    """Files named by the arguments, in order, each once; a folder gives its PNG/JPEG files."""
    files: list[Path] = []
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ImageFileError(f"folder {arg} has no PNG or JPEG images")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise ImageFileError(f"{arg} is not a regular file (a device, pipe or socket); pass image files")
        elif glob.has_magic(arg):
            matches = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not matches:
                raise ImageFileError(f"no file matches {arg}")
            files += matches
        else:
            raise ImageFileError(f"{arg} does not exist")
    return list(dict.fromkeys(files))


def read_image(path: Path) -> np.ndarray:
    """The image at path as uint8 (32, 32, 3) RGB, as the served model reads it (serving/images.py)."""
    from cifar_pipeline.serving.images import decode

    try:
        data = path.read_bytes()
    except PermissionError:
        raise ImageFileError(f"{path} can't be read: permission denied; check its permissions (chmod u+r)") from None
    except OSError as exc:
        raise ImageFileError(f"{path} can't be read ({exc.strerror})") from None
    return decode(data, str(path))


def tracking_uri(given: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the store ./params.yaml names; it must exist."""
    from cifar_pipeline.tracking.connection import check_reachable, resolve_tracking_uri, sqlite_path

    if given:
        uri = given
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    elif paths.PARAMS.is_file():
        from cifar_pipeline.core.config import load_params

        uri = resolve_tracking_uri(load_params(paths.PARAMS).mlflow)
    else:
        raise ModelSourceError(
            "no MLflow store for the model URI: pass --tracking-uri, set $MLFLOW_TRACKING_URI, "
            "or run from the project folder (its params.yaml names the store)"
        )
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ModelSourceError(
            f"the MLflow store {uri} does not exist; train first (`dvc repro`) or pass "
            "--tracking-uri sqlite:///<project>/mlflow.db"
        )
    if db is None:  # a server: within seconds, not after MLflow's minutes of retries
        check_reachable(uri)
    return uri


def load_classifier(model: str, device_choice: str, store: str | None):
    """The ImageClassifier behind a model file, a model folder or an MLflow model URI."""
    from cifar_pipeline.engine.device import pick_device
    from cifar_pipeline.serving.classifier import ImageClassifier

    device = pick_device(device_choice)
    if not model.startswith(URI_SCHEMES):
        path = Path(model)
        if path.is_dir():
            path = path / "best.pt"
        if not path.is_file():
            raise ModelSourceError(
                f"{model} is neither a model file nor an MLflow URI ({', '.join(URI_SCHEMES)}); "
                "pass models/<name>/best.pt after `dvc repro`, or models:/cifar10-cnn@champion"
            )
        return ImageClassifier.from_file(path, device)

    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(store)
    mlflow.set_tracking_uri(uri)
    try:
        classifier = getattr(mlflow.pyfunc.load_model(model).unwrap_python_model(), "classifier", None)
    except MlflowException as exc:
        raise ModelSourceError(f"cannot load {model} from the MLflow store {uri}: {exc.message}") from None
    if not isinstance(classifier, ImageClassifier):
        raise ModelSourceError(f"{model} is an MLflow model, but not a CIFAR-10 classifier of this pipeline")
    return classifier.to(device)


def predict(classifier, images: np.ndarray, batch_size: int) -> np.ndarray:
    from tqdm import tqdm

    with tqdm(total=len(images), unit="img", disable=len(images) < PROGRESS_MIN_IMAGES, file=sys.stderr) as bar:
        parts = []
        for probabilities in classifier.batches(images, batch_size):
            parts.append(probabilities)
            bar.update(len(probabilities))
    return np.concatenate(parts)


def render(files: list[Path], probabilities: np.ndarray, classes: list[str], fmt: str, top_k: int) -> str:
    order = np.argsort(-probabilities, axis=1, kind="stable")
    if fmt == "json":
        records = [
            {
                "image": str(f),
                "class": classes[o[0]],
                "probability": float(p[o[0]]),
                "top_k": [{"class": classes[i], "probability": float(p[i])} for i in o[:top_k]],
                "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
            }
            for f, p, o in zip(files, probabilities, order, strict=True)
        ]
        return json.dumps(records, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["image", "class", "probability", *classes])
        for f, p, o in zip(files, probabilities, order, strict=True):
            writer.writerow([f, classes[o[0]], f"{p[o[0]]:.6f}", *(f"{v:.6f}" for v in p)])
        return buf.getvalue()
    width = max(len("image"), *(len(str(f)) for f in files))
    header = "  ".join([f"{'image':<{width}}", *(f"{f'top {r + 1}':<20}" for r in range(top_k))])
    lines = [header.rstrip()]
    for f, p, o in zip(files, probabilities, order, strict=True):
        cells = [f"{classes[i]} {p[i]:.1%}" for i in o[:top_k]]
        lines.append("  ".join([f"{f!s:<{width}}", *(f"{c:<20}" for c in cells)]).rstrip())
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out:
        check_out(args.out)
    files = image_files(args.images)
    classifier = load_classifier(args.model, args.device, args.tracking_uri)
    from tqdm import tqdm

    images = np.stack(
        [
            read_image(f)
            for f in tqdm(files, desc="reading", unit="img", file=sys.stderr, disable=len(files) < PROGRESS_MIN_IMAGES)
        ]
    )
    probabilities = predict(classifier, images, args.batch_size)
    text = render(files, probabilities, classifier.classes, args.format, args.top_k)
    if args.out:
        atomic.write_text(args.out, text)
        print(f"{len(files)} predictions written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def entry_point() -> None:
    """The `cifar-predict` console script."""
    cli.run(main)


if __name__ == "__main__":
    entry_point()

"""CPU time to load a logged model and predict 1 and 1,000 images, per architecture (default params,
random weights: the timing does not depend on the weights), and what its requests cost when served.

  python benchmarks/predict_timing.py [--models cnn resnet34 resnet18] [--out timing.json]

Each model is logged and registered as the training stage does it, into a temporary store. A fresh
Python process then times: `mlflow.pyfunc.load_model("models:/<name>@champion")` (imports included),
`predict` on 1 and on 1,000 32x32 PNG files, and the `cifar_pipeline.commands.predict` command on 1 and
1,000 PNG files (its whole wall time, start-up included). Then `mlflow models serve` serves it, and each
request of serving_requests() is sent: its size, the answer's status and size, the median time of 5.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import yaml

LOAD_AND_PREDICT = """
import json, pathlib, sys, time
t0 = time.perf_counter()
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
t1 = time.perf_counter()
images = pd.DataFrame({"image": [p.read_bytes() for p in sorted(pathlib.Path(sys.argv[3]).iterdir())]})
model.predict(images[:1])
t2 = time.perf_counter()
model.predict(images)
t3 = time.perf_counter()
json.dump({"load_s": t1 - t0, "predict_1_s": t2 - t1, "predict_1000_s": t3 - t2}, sys.stdout)
"""


def publish(name: str, store: Path, params: dict) -> str:
    from cifar_pipeline.core.config import MlflowParams, parse_params
    from cifar_pipeline.engine import checkpoint
    from cifar_pipeline.engine.models import build_model
    from cifar_pipeline.tracking import registry
    from cifar_pipeline.tracking.store import Tracker

    parsed = parse_params({**params, name: {**params[name], **({"weights": "none"} if name == "resnet18" else {})}})
    cfg = parsed.model(name)
    model_file = store.parent / f"{name}.pt"
    classes = [f"class{i}" for i in range(10)]
    checkpoint.save(
        checkpoint.model_file(name, cfg.model_dump(), classes, build_model(name, cfg).state_dict()), model_file
    )
    mlflow_cfg = MlflowParams(tracking_uri=f"sqlite:///{store}", experiment="timing")
    tracker = Tracker(mlflow_cfg)
    tracker.start(name, {}, {})
    tracker.log_metrics({registry.SELECTION_METRIC: 0.5})
    example = np.zeros((1, 32, 32, 3), np.uint8)
    registered = registry.publish(
        tracker, name, model_file, classes, example, registry.registered_name(mlflow_cfg, name)
    )
    tracker.end()
    registry.crown_champions(tracker, mlflow_cfg, {})
    return f"models:/{registered['registered_model']}@{registry.CHAMPION}"


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def photo_jpeg() -> bytes:
    """A smooth 640x480 photo-like JPEG (quality 75): 16 kB, as a small phone picture."""
    from PIL import Image

    coarse = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def serving_requests(files: list[bytes]) -> dict[str, bytes]:
    """The requests timed: images as base64 in `dataframe_split`, and bodies MLflow itself rejects."""

    def body(images: list[bytes]) -> bytes:
        rows = [[base64.b64encode(image).decode()] for image in images]
        return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()

    jpeg = photo_jpeg()
    return {
        "one 640x480 JPEG": body([jpeg]),
        "100 32x32 PNGs": body(files[:100]),
        "mixed sizes": body([jpeg, files[0]]),
        "one corrupt image in 100": body([*files[:99], b"not an image"]),
        "1 MB of random bytes": np.random.default_rng(2).bytes(1 << 20),
        "100,000-deep JSON nesting": b"[" * 100_000 + b"]" * 100_000,
    }


def post(url: str, body: bytes) -> tuple[int, int, float]:
    """(HTTP status, answer size, seconds)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    return status, len(answer), time.perf_counter() - start


def served(uri: str, store: Path, work: Path, files: list[bytes]) -> dict:
    """Each request of serving_requests() sent to `mlflow models serve -m uri`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    server = subprocess.Popen(
        [*cmd, "-h", "127.0.0.1", "-p", str(port)],
        cwd=work,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/invocations"
    rows = {}
    try:
        next(line for line in server.stdout if "Uvicorn running on" in line)
        for name, body in serving_requests(files).items():
            runs = [post(url, body) for _ in range(5)]
            status, size, _ = runs[0]
            rows[name] = {
                "request_bytes": len(body),
                "status": status,
                "answer_bytes": size,
                "median_s": statistics.median(seconds for *_, seconds in runs),
            }
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return rows


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet34", "resnet18"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    params = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("params.yaml").read_text())
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = work / "mlflow.db"
        folder = work / "images"
        folder.mkdir()
        files = [png(image) for image in np.random.default_rng(0).integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)]
        for i, file in enumerate(files):
            (folder / f"{i:04d}.png").write_bytes(file)
        for name in args.models:
            uri = publish(name, store, params)
            env_cmd = [sys.executable, "-c", LOAD_AND_PREDICT, f"sqlite:///{store}", uri, str(folder)]
            row = json.loads(subprocess.run(env_cmd, check=True, capture_output=True, text=True, cwd=work).stdout)
            cli = [
                sys.executable,
                "-m",
                "cifar_pipeline.commands.predict",
                "-m",
                uri,
                "--tracking-uri",
                f"sqlite:///{store}",
                "--device",
                "cpu",
                "--format",
                "csv",
                "--out",
                str(work / "out.csv"),
            ]
            row["cli_1_image_s"] = timed([*cli, str(folder / "0000.png")], work)
            row["cli_1000_images_s"] = timed([*cli, str(folder)], work)
            print(name, {k: round(v, 2) for k, v in row.items()}, flush=True)
            row["served"] = served(uri, store, work, files)
            print(name, json.dumps(row["served"], indent=1), flush=True)
            results["models"][name] = row
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

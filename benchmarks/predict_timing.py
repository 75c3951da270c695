"""CPU time to load a logged model and predict 1 and 1,000 images, per architecture (default params,
random weights: the timing does not depend on the weights).

  python benchmarks/predict_timing.py [--models cnn resnet34 resnet18] [--out timing.json]

Each model is logged and registered as the training stage does it, into a temporary store. A fresh
Python process then times: `mlflow.pyfunc.load_model("models:/<name>@champion")` (imports included),
`predict` on 1 and on 1,000 uint8 32x32 images, and the `cifar_pipeline.commands.predict` command on 1 and
1,000 PNG files (its whole wall time, start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

LOAD_AND_PREDICT = """
import json, sys, time
t0 = time.perf_counter()
import mlflow, numpy as np
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
t1 = time.perf_counter()
images = np.random.default_rng(0).integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)
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
    registered = registry.publish(tracker, model_file, classes, example, registry.registered_name(mlflow_cfg, name))
    tracker.end()
    registry.crown_champions(tracker.client, mlflow_cfg)
    return f"models:/{registered['registered_model']}@{registry.CHAMPION}"


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet34", "resnet18"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from PIL import Image

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
        for i, image in enumerate(np.random.default_rng(0).integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)):
            Image.fromarray(image).save(folder / f"{i:04d}.png")
        for name in args.models:
            uri = publish(name, store, params)
            env_cmd = [sys.executable, "-c", LOAD_AND_PREDICT, f"sqlite:///{store}", uri]
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
            results["models"][name] = row
            print(name, {k: round(v, 2) for k, v in row.items()}, flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

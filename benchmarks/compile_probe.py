"""Does torch.compile pay for a model's training? Trains one model with the project's trainer for its
default epochs (no DVC, no MLflow) with runtime.compile on or off, and prints one JSON line: the first full
step (warm-up, compile, graph capture), the first and the median later epoch, and the total.
Run it twice with compile on to see the effect of the on-disk cache in state/torch_compile.

Usage: python benchmarks/compile_probe.py MODEL --compile {0,1} [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from cifar_pipeline import paths
from cifar_pipeline.config import MODELS, load_params
from cifar_pipeline.data import load_arrays
from cifar_pipeline.loader import DeviceData
from cifar_pipeline.runtime import Settings
from cifar_pipeline.trainer import build_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--compile", type=int, choices=(0, 1), required=True)
    parser.add_argument("--epochs", type=int, help="default: the model's epochs in params.yaml")
    args = parser.parse_args()
    start = time.perf_counter()
    params = load_params(paths.PARAMS)
    params = params.model_copy(update={"runtime": params.runtime.model_copy(update={"compile": bool(args.compile)})})
    settings = Settings.resolve(params.runtime)
    settings.progress = False
    device_data = DeviceData.split(load_arrays(paths.DATA), params.data.val_size, params.seed, settings.device)
    cfg = params.model(args.model)
    trainer = build_trainer(params, args.model, settings, device_data)
    setup_s = time.perf_counter() - start
    epochs = [trainer.train_epoch(e) for e in range(1, (args.epochs or cfg.epochs) + 1)]
    print(json.dumps({
        "model": args.model, "compile": args.compile, "setup_s": round(setup_s, 2),
        "first_step_s": trainer.step.first_step_seconds and round(trainer.step.first_step_seconds, 2),
        "first_epoch_s": round(epochs[0].epoch_seconds, 2),
        "later_epoch_s": round(statistics.median(e.epoch_seconds for e in epochs[1:]), 3) if len(epochs) > 1 else None,
        "train_s": round(sum(e.epoch_seconds for e in epochs), 2), "epochs": len(epochs),
        "best_val_acc": round(max(e.val_acc for e in epochs), 4),
        "img_per_s": round(statistics.median(e.images_per_second for e in epochs[1:] or epochs)),
    }), flush=True)


if __name__ == "__main__":
    main()

"""Choose the runtime defaults by measurement: for one model, time the first epoch (graph capture and
cuDNN autotuning included) and the steady-state step for each mix of bf16 autocast and channels_last,
with cudnn.benchmark on or off (one process each, since cuDNN caches its choices). Compile off
(docs/performance.md compares compile on and off).

Usage: python benchmarks/variants.py MODEL --cudnn-benchmark {0,1} [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import product
from pathlib import Path

import torch

from cifar_pipeline.core import paths
from cifar_pipeline.core.config import MODELS, load_params
from cifar_pipeline.core.data import load_arrays
from cifar_pipeline.engine.device import Settings, configure_backends, pick_device
from cifar_pipeline.engine.loader import DeviceData
from cifar_pipeline.engine.trainer import build_trainer
from throughput import floor_img_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--cudnn-benchmark", type=int, choices=(0, 1), required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    params = load_params(paths.PARAMS)
    device = pick_device("cuda")
    configure_backends(deterministic=False, cudnn_benchmark=bool(args.cudnn_benchmark))
    data = load_arrays(paths.DATA)
    device_data = DeviceData.split(data, params.data.val_size, params.seed, device)
    cfg = params.model(args.model)
    rows = []
    for bf16, channels_last in product((True, False), (True, False)):
        settings = Settings(device, bf16, channels_last, True, False, params.runtime.eval_batch_size, False)
        trainer = build_trainer(params, args.model, settings, device_data)
        start = time.perf_counter()
        trainer.train_epoch(1)
        first_s = time.perf_counter() - start
        second = trainer.train_epoch(2)
        row = {
            "model": args.model,
            "cudnn_benchmark": args.cudnn_benchmark,
            "bf16": bf16,
            "channels_last": channels_last,
            "first_epoch_s": round(first_s, 2),
            "epoch_s": round(second.epoch_seconds, 3),
            "img_per_s": round(second.images_per_second),
            "floor_img_per_s": round(floor_img_per_s(trainer, cfg.batch_size)),
            "val_acc_after_2": round(second.val_acc, 4),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        del trainer
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""Does torch.compile pay for a model's training step? Times the first epoch (compile included) and a
steady epoch, with the model's weights in channels_last or not (inputs stay channels_last).
Run twice to see the effect of inductor's on-disk cache.

Usage: python benchmarks/compile_probe.py MODEL --weights-channels-last {0,1}
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cifar_pipeline import paths
from cifar_pipeline.config import MODELS, load_params
from cifar_pipeline.data import load_arrays, split_indices
from cifar_pipeline.engine import DeviceData, Settings, Trainer
from cifar_pipeline.models import model_from_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--weights-channels-last", type=int, choices=(0, 1), required=True)
    args = parser.parse_args()
    params = load_params(paths.PARAMS)
    settings = Settings.resolve(params.runtime)
    device = settings.device
    data = load_arrays(paths.DATA)
    train_idx, val_idx = split_indices(len(data.train_y), params.data.val_size, params.seed)
    device_data = DeviceData.from_numpy(data.train_x[train_idx], data.train_y[train_idx],
                                        data.train_x[val_idx], data.train_y[val_idx], device)
    settings.progress = False
    torch.manual_seed(params.seed)
    trainer = Trainer(args.model, model_from_params(params, args.model, pretrained=False), params.model(args.model),
                      settings, device_data, torch.Generator(device=device).manual_seed(params.seed))
    if not args.weights_channels_last:
        trainer.model.to(memory_format=torch.contiguous_format)
    start = time.perf_counter()
    trainer.model.net = torch.compile(trainer.model.net)
    trainer.train_epoch(1)
    first_s = time.perf_counter() - start
    second = trainer.train_epoch(2)
    print(json.dumps({"model": args.model, "weights_channels_last": args.weights_channels_last,
                      "first_epoch_s": round(first_s, 2), "epoch_s": round(second.epoch_seconds, 3),
                      "img_per_s": round(second.images_per_second), "val_acc_after_2": round(second.val_acc, 4)}))


if __name__ == "__main__":
    main()

"""Training throughput per model, three ways, measured in one process:

- project: the pipeline's own epoch (device-resident data, batched augmentation, the trainer's step);
- floor:   the same step replayed on one pre-made device batch (no data handling at all);
- dataloader: the seed notebooks' way (torchvision DataLoader, PIL transforms, 2 workers, fp32 eager).

Then where a steady epoch's seconds go: the step's compute (floor time x steps), the data (permuting and
augmenting the epoch on the device), the rest of the loop (Python: per-step schedule, Lookahead, sums)
and validation; and the step's achieved TFLOP/s (convolutions and matmuls, forward and backward).

Usage: python benchmarks/throughput.py [--params params.yaml] [--recipes NAME ...] [--data data/cifar10.npz]
           [--out FILE]
--recipes measures each named recipe (recipes/NAME.yaml on top of --params) instead of the params' models.
Speed claims live here and in docs/performance.md, never in the test suite.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from cifar_pipeline.commands import recipes
from cifar_pipeline.core import paths, yaml12
from cifar_pipeline.core.config import MODELS, ModelParams, Params, Resnet18Params, load_params, parse_params
from cifar_pipeline.core.data import load_arrays, split_indices
from cifar_pipeline.engine.device import Settings, synchronize
from cifar_pipeline.engine.loader import DeviceData
from cifar_pipeline.engine.models import model_from_params
from cifar_pipeline.engine.trainer import Trainer, build_trainer

FLOOR_STEPS = 300
DATALOADER_WARMUP, DATALOADER_STEPS = 20, 150


def project_img_per_s(trainer: Trainer) -> dict:
    """First epoch includes graph capture; the second is the steady state."""
    first = trainer.train_epoch(1)
    second = trainer.train_epoch(2)
    n = trainer.data.train_x.shape[0]
    return {
        "img_per_s": second.images_per_second,
        "first_epoch_train_s": n / first.images_per_second,
        "steady_epoch_train_s": n / second.images_per_second,
    }


def floor_img_per_s(trainer: Trainer, batch_size: int) -> float:
    x = trainer.settings.layout(trainer.data.val_x[:batch_size].clone())
    y = trainer.data.val_y[:batch_size].clone()
    step = trainer.step
    step(x, y)  # captures the graph if enabled
    replay = step.graph.replay if step.graph is not None else (lambda: step.full_step(x, y))
    for _ in range(10):
        replay()
    synchronize(trainer.settings.device)
    start = time.perf_counter()
    for _ in range(FLOOR_STEPS):
        replay()
    synchronize(trainer.settings.device)
    return FLOOR_STEPS * batch_size / (time.perf_counter() - start)


def timed(run, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def epoch_breakdown(trainer: Trainer, floor_img_per_s: float) -> dict:
    """Seconds of one steady epoch by part (run after project_img_per_s, so the graph is captured)."""
    device = trainer.settings.device
    result = trainer.train_epoch(3)
    validation = timed(trainer.validate, device)
    data = timed(lambda: list(trainer.loader.epoch(number=4)[1]), device)
    train = trainer.loader.images / result.images_per_second
    step = trainer.loader.images / floor_img_per_s
    return {"step": step, "data": data, "python_and_rest": train - step - data, "validation": validation}


def step_flops(trainer: Trainer, batch_size: int) -> int:
    """Forward and backward FLOPs of one training batch (torch's counter: convolutions and matmuls)."""
    model = copy.deepcopy(trainer.model).train()
    x = trainer.settings.layout(trainer.data.val_x[:batch_size].clone())
    with FlopCounterMode(display=False) as counter:
        with trainer.settings.autocast():
            loss = F.cross_entropy(model(x), trainer.data.val_y[:batch_size])
        loss.backward()
    return counter.get_total_flops()


def recipe_params(base: Path, name: str) -> tuple[Params, str]:
    recipe = recipes.load(name)
    return parse_params(recipes.merged(yaml12.load(base.read_text()), recipe.changes), name), recipe.model


class PilDataset(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def notebook_transform(cfg: ModelParams):
    """The seed notebooks' torchvision transforms for this model's recipe."""
    steps = []
    if isinstance(cfg, Resnet18Params):
        steps.append(transforms.Resize(cfg.image_size))
    if cfg.augment.crop_padding:
        steps.append(transforms.RandomCrop(32, padding=cfg.augment.crop_padding))
    if cfg.augment.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    if cfg.augment.brightness or cfg.augment.contrast:
        steps.append(transforms.ColorJitter(brightness=cfg.augment.brightness, contrast=cfg.augment.contrast))
    steps += [transforms.ToTensor(), transforms.Normalize(cfg.normalize.mean, cfg.normalize.std)]
    return transforms.Compose(steps)


def dataloader_img_per_s(
    model: torch.nn.Module, cfg: ModelParams, images: np.ndarray, labels: np.ndarray, device: torch.device
) -> float:
    """fp32 eager training fed by DataLoader(num_workers=2) with PIL transforms, as the notebooks did."""
    net = model.net.to(device).train()  # the notebooks normalized in the transform, not the model
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.optimizer.lr)
    loader = DataLoader(
        PilDataset(images, labels, notebook_transform(cfg)),
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=2,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )

    def batches():
        while True:
            yield from loader

    seen, start = 0, time.perf_counter()
    for i, (x, y) in enumerate(batches()):
        if i == DATALOADER_WARMUP:
            synchronize(device)
            start, seen = time.perf_counter(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        seen += y.shape[0]
        if i == DATALOADER_WARMUP + DATALOADER_STEPS:
            break
    synchronize(device)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    parser.add_argument("--data", type=Path, default=paths.DATA)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--recipes", nargs="+", default=[], help="named recipes instead of --models")
    parser.add_argument("--skip-dataloader", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    base = load_params(args.params)
    runs = {name: recipe_params(args.params, name) for name in args.recipes} or {m: (base, m) for m in args.models}
    device = Settings.resolve(base.runtime).device
    data = load_arrays(args.data)
    device_data = DeviceData.split(data, base.data.val_size, base.seed, device)
    train_idx, _ = split_indices(len(data.train_y), base.data.val_size, base.seed)  # for the DataLoader
    results = {}
    for label, (params, name) in runs.items():
        cfg = params.model(name)
        settings = Settings.resolve(params.runtime, compile=cfg.compile)  # as the stage; the same GPU each time
        trainer = build_trainer(params, name, settings, device_data)
        row = project_img_per_s(trainer)
        floor_trainer = build_trainer(params, name, settings, device_data)
        row["floor_img_per_s"] = floor_img_per_s(floor_trainer, cfg.batch_size)
        row["epoch_seconds"] = epoch_breakdown(trainer, row["floor_img_per_s"])
        row["step_tflop_per_s"] = step_flops(trainer, cfg.batch_size) * row["floor_img_per_s"] / cfg.batch_size / 1e12
        del trainer, floor_trainer
        if not args.skip_dataloader:
            row["dataloader_img_per_s"] = dataloader_img_per_s(
                model_from_params(params, name, pretrained=False),
                cfg,
                data.train_x[train_idx],
                data.train_y[train_idx],
                device,
            )
        results[label] = row
        print(json.dumps({label: row}), flush=True)

    gpu = torch.cuda.get_device_name() if device.type == "cuda" else str(device)
    print(f"\n{gpu}, {'recipes ' + ', '.join(args.recipes) if args.recipes else 'batch sizes'} on {args.params}")
    print(
        f"{'model':<10}{'project img/s':>15}{'floor img/s':>13}{'project/floor time':>20}"
        f"{'dataloader img/s':>18}{'speed-up':>10}"
    )
    for name, r in results.items():
        dl = r.get("dataloader_img_per_s")
        print(
            f"{name:<10}{r['img_per_s']:>15,.0f}{r['floor_img_per_s']:>13,.0f}"
            f"{r['floor_img_per_s'] / r['img_per_s']:>19.3f}x"
            f"{dl or float('nan'):>18,.0f}{(r['img_per_s'] / dl if dl else float('nan')):>9.1f}x"
        )
    print("\nOne steady epoch, s (share): step's compute, data, Python and the rest of the loop, validation")
    for name, r in results.items():
        parts = r["epoch_seconds"]
        total = sum(parts.values())
        shares = "".join(f"{v:>9.3f} ({v / total:4.0%})" for v in parts.values())
        print(f"{name:<16}{shares}   step at {r['step_tflop_per_s']:.0f} TFLOP/s")
    if args.out:
        args.out.write_text(json.dumps({"gpu": gpu, "models": results}, indent=2))


if __name__ == "__main__":
    main()

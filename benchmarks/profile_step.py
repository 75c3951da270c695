"""Top CUDA kernels of one model's graph-free training step (torch.profiler), to see where a step goes.

Usage: python benchmarks/profile_step.py MODEL [--steps 20]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from cifar_pipeline import paths
from cifar_pipeline.config import MODELS, load_params
from cifar_pipeline.engine import Settings, TrainStep, make_optimizer
from cifar_pipeline.models import model_from_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    params = load_params(paths.PARAMS)
    settings = Settings.resolve(params.runtime)
    device = settings.device
    settings.cuda_graphs = settings.compile = False
    cfg = params.model(args.model)
    model = model_from_params(params, args.model, pretrained=False).to(device)
    model.to(memory_format=torch.channels_last)
    step = TrainStep(model, make_optimizer(model, cfg, settings), settings, cfg.batch_size)
    x = settings.layout(torch.rand(cfg.batch_size, 3, 32, 32, device=device))
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)
    for _ in range(5):
        step(x, y)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step(x, y)
        torch.cuda.synchronize()
    print(f"== {args.model}: {args.steps} eager steps, batch {cfg.batch_size}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))


if __name__ == "__main__":
    main()

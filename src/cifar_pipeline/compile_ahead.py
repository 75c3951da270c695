"""`python -m cifar_pipeline.compile_ahead PARAMS MODEL [NICE]`: compile MODEL's train step into the compile
cache, in the background (started by `download` through compile_cache.start_compiling_ahead; see
there)."""

from __future__ import annotations

import argparse
import fcntl
import os
import time
from pathlib import Path

from .compile_cache import is_compiled, mark_compiled, marks_dir, step_key
from .config import MODELS, Params, load_params
from .environment import paused_gc

MIN_FREE_GPU_BYTES = 16 << 30  # leave smaller GPUs to the stages themselves


def compile_step(params: Params, name: str, settings) -> None:
    """Build the model as its stage does and run one full-size step on made-up data: compiles and
    captures exactly what the stage will."""
    import torch

    from .loader import DeviceData
    from .runtime import synchronize
    from .trainer import build_trainer

    n, device = params.model(name).batch_size, settings.device
    data = DeviceData(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device),
        torch.randint(0, 10, (n,), device=device),
        torch.rand(1, 3, 32, 32, device=device),
        torch.zeros(1, dtype=torch.long, device=device),
    )
    trainer = build_trainer(params, name, settings, data)  # no ImageNet download: the weights are not in the graph
    _, batches = trainer.loader.epoch()
    trainer.step(*next(batches))
    synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", type=Path)
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("nice", type=int, nargs="?", default=10, help="the pipeline's own work goes first")
    args = parser.parse_args()
    params, name = load_params(args.params), args.model
    os.nice(args.nice)

    with paused_gc():
        import torch

        from .runtime import Settings

    settings = Settings.resolve(params.runtime.model_copy(update={"device": "cuda:0"}))  # claims no GPU lock
    key = step_key(params, name, settings.device)
    with open(marks_dir() / f"{key}.lock", "a+b") as lock:  # held while compiling: the stage waits for it
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another run's compiler has it
        if is_compiled(key):
            return
        free, _ = torch.cuda.mem_get_info(settings.device)
        if free < MIN_FREE_GPU_BYTES:
            print(f"{time.strftime('%H:%M:%S')} {free / 2**30:.1f} GiB free on the GPU: {name}'s stage compiles")
            return
        start = time.perf_counter()
        try:
            compile_step(params, name, settings)
        except Exception as exc:  # its stage compiles it then, as without this
            print(f"{time.strftime('%H:%M:%S')} compiling {key} failed: {exc!r}")
            return
        mark_compiled(key)
        print(f"{time.strftime('%H:%M:%S')} compiled {key} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()

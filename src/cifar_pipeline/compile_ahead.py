"""The background program that fills the compile cache with the pipeline's train steps (started by
`download` through compile_cache.start_compiling_ahead; see there)."""

from __future__ import annotations

import argparse
import fcntl
import os
import time
from pathlib import Path

from . import paths
from .compile_cache import is_compiled, mark_compiled, marks_dir, step_key
from .config import MODELS, Params, load_params

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
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    params = load_params(parser.parse_args().params)
    os.nice(10)  # the pipeline's own work first

    import torch

    from .runtime import Settings

    settings = Settings.resolve(params.runtime.model_copy(update={"device": "cuda:0"}))  # claims no GPU lock
    held = []  # the steps this process compiles, locked until each is done
    for name in MODELS:
        key = step_key(params, name, settings)
        lock = open(marks_dir() / f"{key}.lock", "a+b")  # noqa: SIM115 (held while compiling)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another run's compiler has it
            lock.close()
            continue
        if is_compiled(key):
            lock.close()
        else:
            held.append((name, key, lock))
    if not held:
        print(f"{time.strftime('%H:%M:%S')} every step is compiled already", flush=True)
        return
    free, _ = torch.cuda.mem_get_info(settings.device)
    if free < MIN_FREE_GPU_BYTES:
        print(f"{time.strftime('%H:%M:%S')} {free / 2**30:.1f} GiB free on the GPU: the stages compile", flush=True)
        return
    for name, key, lock in held:
        start = time.perf_counter()
        try:
            compile_step(params, name, settings)
            mark_compiled(key)
            print(f"{time.strftime('%H:%M:%S')} compiled {key} in {time.perf_counter() - start:.1f}s", flush=True)
        except Exception as exc:  # the stage compiles it then, as it would have without this
            print(f"{time.strftime('%H:%M:%S')} compiling {key} failed: {exc!r}", flush=True)
        finally:
            lock.close()


if __name__ == "__main__":
    main()

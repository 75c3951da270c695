"""Which train steps the compile cache holds, and starting compile_ahead to fill it in the background.

Compiling the three train steps takes about a minute on a new machine, one model after another inside
the training stages. `download` (the first stage of a full run) instead starts
`python -m cifar_pipeline.compile_ahead` for each model whose step the cache does not hold; each
compiles its step on made-up data while the pipeline goes on, and marks it done. A training stage
whose step is still being compiled there waits for it, then loads the step from the cache. Nothing
here changes a result: the stages compile exactly as before, only from a filled cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import atomic, paths
from .config import MODELS, Params

MARKS = "cifar_pipeline_steps"  # in the compile cache: goes when the cache is deleted
WAIT_SECONDS = 600.0
# What a model's compiled graph does not depend on.
NOT_IN_GRAPH = ("epochs", "optimizer", "scheduler", "augment", "weights", "weights_path")


def wanted(params: Params) -> bool:
    """Whether the stages will compile on a CUDA GPU (decided without importing torch)."""
    runtime = params.runtime
    return (
        os.environ.get("CIFAR_COMPILE_AHEAD", "1") != "0"
        and runtime.compiles
        and runtime.device not in ("cpu", "mps")
        and any(Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia/version"))
    )


def start_compiling_ahead(params: Params, params_file: Path) -> None:
    """Start a compiler for each model whose step this cache never held, each in its own session (it
    outlives this stage, and DVC does not wait for it). Costs no torch import here."""
    missing = never_compiled(params) if wanted(params) else []
    if not missing:
        return
    log_file = paths.project_root() / paths.COMPILE_AHEAD_LOG
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        for index, name in enumerate(missing):  # side by side; the CPU goes first to the model trained
            nice = 10 if index == 0 else 19  # first, the only one whose stage is likely to wait
            module = f"{__package__}.compile_ahead"
            subprocess.Popen(
                [sys.executable, "-m", module, str(Path(params_file).resolve()), name, str(nice)],
                cwd=paths.project_root(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )


def never_compiled(params: Params) -> list[str]:
    """The models whose step this cache never held, under any torch version or GPU."""
    marks = marks_dir()
    return [name for name in MODELS if not any(marks.glob(f"{step_prefix(params, name)}-*"))]


def marks_dir() -> Path:
    from .environment import use_project_compile_cache

    use_project_compile_cache()
    folder = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) / MARKS
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def step_prefix(params: Params, name: str) -> str:
    """The model and a digest of what its compiled step depends on among the params (on a CUDA device)."""
    runtime = params.runtime
    cfg = params.model(name).model_dump(mode="json", exclude=set(NOT_IN_GRAPH))
    identity = [name, cfg, runtime.bf16, runtime.channels_last, runtime.cuda_graphs]
    return f"{name}-{hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]}"


def step_key(params: Params, name: str, device) -> str:
    """Names one compiled train step: its graph, torch's version and the GPU's model."""
    import torch

    machine = json.dumps([torch.__version__, torch.cuda.get_device_name(device)])
    return f"{step_prefix(params, name)}-{hashlib.sha256(machine.encode()).hexdigest()[:8]}"


def is_compiled(key: str) -> bool:
    return (marks_dir() / key).exists()


def mark_compiled(key: str) -> None:
    atomic.write_text(marks_dir() / key, time.strftime("%Y-%m-%d %H:%M:%S\n"))


def wait_for(key: str, stage: str) -> None:
    """Return once no background compile of this step is running (at most WAIT_SECONDS)."""
    if is_compiled(key):
        return
    with open(marks_dir() / f"{key}.lock", "a+b") as lock:
        deadline = time.monotonic() + WAIT_SECONDS
        said = False
        while time.monotonic() < deadline:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not said:
                    print(
                        f"{stage}: waiting for the background compile of this step ({paths.COMPILE_AHEAD_LOG})",
                        flush=True,
                    )
                    said = True
                time.sleep(0.2)

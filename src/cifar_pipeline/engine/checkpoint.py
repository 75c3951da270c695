"""Checkpoints: the per-epoch resume state, and the model files a training stage outputs."""

from __future__ import annotations

import fcntl
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from cifar_pipeline.core import atomic

RESUME_FORMAT = 1


def to_cpu(obj):
    """Deep copy of a (nested) state with every tensor on the CPU. Copies from a GPU are queued together
    (into pinned memory) and waited for once, not one by one (0.1 s an epoch for ResNet-34)."""
    gpus = set()

    def copy(o):
        if torch.is_tensor(o):
            if o.is_cuda:
                gpus.add(o.device)
            return o.detach().to("cpu", copy=True, non_blocking=o.is_cuda)
        if isinstance(o, dict):
            return {k: copy(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(copy(v) for v in o)
        return o

    out = copy(obj)
    for device in gpus:
        torch.cuda.synchronize(device)
    return out


def save(obj: dict, path: Path) -> None:
    atomic.write_with(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def exclusive(resume_file: Path) -> Iterator[None]:
    """One process at a time per checkpoint (two queued experiments may share params); the OS
    releases the lock if the holder dies. The holder deletes the lock file when done, so a waiter
    that wakes on a deleted file tries again on the current one."""
    resume_file.parent.mkdir(parents=True, exist_ok=True)
    lock = resume_file.with_suffix(".lock")
    while True:
        fh = open(lock, "a")  # noqa: SIM115 (held past this block while locked; closed below or by the caller)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: another process is training with the same params ({resume_file.name})", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if lock.stat().st_ino == os.fstat(fh.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    try:
        remove_stale_locks(resume_file.parent)
        for tmp in resume_file.parent.glob(f".{resume_file.name}.*.tmp"):  # a write cut short by SIGKILL
            tmp.unlink(missing_ok=True)  # only the lock holder writes this checkpoint
        yield
    finally:
        lock.unlink(missing_ok=True)
        fh.close()


def remove_stale_locks(folder: Path) -> None:
    """Delete lock files no process holds (left by a SIGKILL); like exclusive(), only while holding them."""
    for lock in folder.glob("*.lock"):
        with open(lock, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            lock.unlink(missing_ok=True)


def resume_path(state_dir: Path, stage: str, key: str) -> Path:
    return state_dir / f"{stage}-{key}.pt"


def load_resume(path: Path, key: str) -> dict | None:
    """The resume state at path if it is intact and keyed to these params; else None (with a warning)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, wrong type: all mean "unusable"
        warnings.warn(f"resume checkpoint {path} is unreadable ({type(exc).__name__}); starting fresh", stacklevel=2)
        return None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT or state.get("key") != key:
        warnings.warn(f"resume checkpoint {path} does not match the current params; starting fresh", stacklevel=2)
        return None
    return state


def model_file(name: str, model_params: dict, classes: list[str], state_dict: dict) -> dict:
    """What best.pt / last.pt hold: enough to rebuild the model and name its classes without params.yaml."""
    return {"arch": name, "params": model_params, "classes": classes, "state_dict": state_dict}

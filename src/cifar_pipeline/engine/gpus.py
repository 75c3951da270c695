"""One GPU per process on a multi-GPU machine: each training or evaluate process takes a free GPU and holds
it while it runs, so `dvc queue start -j N` on N GPUs runs N experiments side by side."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import IO

POLL_SECONDS = 2.0

_held: dict[int, IO] = {}  # open lock files: the OS releases them when the process ends, killed or not


def _try_lock(lock_dir: Path, index: int) -> bool:
    fh = open(lock_dir / f"gpu{index}.lock", "w")  # noqa: SIM115 (held open: the lock lasts as long as the process)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return False
    _held[index] = fh
    return True


def claim_free_gpu(count: int, lock_dir: Path) -> int:
    """The index of a GPU no other process of this project holds, locked until this process ends (or
    `release`); waits while all `count` are taken."""
    if _held:
        return next(iter(_held))
    lock_dir.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        for index in range(count):
            if _try_lock(lock_dir, index):
                return index
        if not announced:
            print(f"waiting: all {count} GPUs are taken by other runs of this project ({lock_dir})", flush=True)
            announced = True
        time.sleep(POLL_SECONDS)


def release(index: int) -> None:
    fh = _held.pop(index, None)
    if fh is not None:
        fh.close()

"""The process-wide changes the pipeline makes, each in one named function with its reason, called
explicitly where it is needed (never at import)."""

from __future__ import annotations

import gc
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import paths


@contextmanager
def paused_gc() -> Iterator[None]:
    """Import torch, MLflow and their kin with the cyclic garbage collector paused: its passes over the
    hundreds of thousands of new objects cost time (inductor's import took 6.1 s instead of 4.1 s on an
    H200 machine, docs/speed.md). Nothing is lost: objects are still freed when unused, and cycles at the
    next collection after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def use_project_compile_cache() -> None:
    """Keep torch.compile's cache at the project root, so reruns, `dvc exp run --temp` copies and queued
    experiments reuse compiled kernels. A TORCHINDUCTOR_CACHE_DIR set by the user wins, unless it is
    torch's own /tmp default, which torch itself puts into that variable on import."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or _is_torch_default(Path(current)):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(paths.project_root() / paths.COMPILE_CACHE_DIR)


def _is_torch_default(folder: Path) -> bool:
    """<tempdir>/torchinductor_<user>, told apart without importing torch (`download` asks too)."""
    return folder.name.startswith("torchinductor_") and folder.parent.resolve() == Path(tempfile.gettempdir()).resolve()


def release_compile_workers() -> None:
    """torch.compile starts a pool of compile worker processes (one per core, up to 32) that Python
    shuts down at exit, which takes a second or more. A training stage calls this once its step is
    compiled: the pool shuts down in the background while training goes on (a later compile would
    start a new one)."""
    from torch._inductor.async_compile import shutdown_compile_workers

    threading.Thread(target=shutdown_compile_workers, name="compile-workers-shutdown").start()

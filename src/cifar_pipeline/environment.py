"""The process-wide changes the pipeline makes, each in one named function with its reason, called
explicitly where it is needed (never at import)."""

from __future__ import annotations

import os

from . import paths


def use_project_compile_cache() -> None:
    """Keep torch.compile's cache at the project root, so reruns, `dvc exp run --temp` copies and queued
    experiments reuse compiled kernels. A TORCHINDUCTOR_CACHE_DIR set by the user wins, unless it is
    torch's own /tmp default, which torch itself puts into that variable on import."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(paths.project_root() / paths.COMPILE_CACHE_DIR)

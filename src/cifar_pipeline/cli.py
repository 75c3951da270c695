"""Shared entry-point wrapper: known failures print one clear message instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from . import paths
from .config import MODELS, Params, load_params
from .errors import PipelineError


def run(main: Callable[[], None]) -> None:
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_args(description: str, per_model: bool) -> tuple[Params, str | None]:
    """The stage's params (validated) and, for per-model stages, the model name."""
    parser = argparse.ArgumentParser(description=description)
    if per_model:
        parser.add_argument("model", choices=MODELS)
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    args = parser.parse_args()
    return load_params(args.params), getattr(args, "model", None)

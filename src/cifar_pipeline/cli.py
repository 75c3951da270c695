"""Shared entry-point wrapper: known failures print one clear message instead of a traceback."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import PipelineError

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def run(main: Callable[[], None]) -> None:
    try:
        main()
        # Done: spare the interpreter's garbage collections over every torch and MLflow object at exit
        # (2-3 s); objects are still freed, only the search for reference cycles among them is skipped.
        gc.freeze()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C outside training's own handler (imports, start-up, evaluation)
        print("interrupted by SIGINT; no output was published. Rerun the stage.", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None


def parse_stage_args(description: str, per_model: bool) -> tuple:
    """The stage's params (validated), for per-model stages the model name, and the params file."""
    from . import paths
    from .config import MODELS, load_params  # pydantic loads inside run(), where Ctrl-C is handled

    parser = argparse.ArgumentParser(description=description)
    if per_model:
        parser.add_argument("model", choices=MODELS)
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    args = parser.parse_args()
    return load_params(args.params), getattr(args, "model", None), args.params


def parse_args(description: str, per_model: bool) -> tuple:
    """The stage's params (validated) and, for per-model stages, the model name."""
    return parse_stage_args(description, per_model)[:2]

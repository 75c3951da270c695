"""Shared entry-point wrapper: known failures print one clear message instead of a traceback."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from pathlib import Path

from cifar_pipeline.core.errors import Interrupted, PipelineError

INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def run(main: Callable[[], int | None]) -> None:
    """Run an entry point and own its exit status: main's return code, 2 for a PipelineError, 128 + the
    signal's number when a signal stopped it (as a shell reports it)."""
    try:
        code = main()
        # Done: spare the interpreter's garbage collections over every torch and MLflow object at exit
        # (2-3 s); objects are still freed, only the search for reference cycles among them is skipped.
        gc.freeze()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Interrupted as stop:  # the work saved what it could and said so
        raise SystemExit(128 + stop.signum) from None
    except KeyboardInterrupt:  # Ctrl-C outside training's own handler (imports, start-up, evaluation)
        print("interrupted by SIGINT; no output was published. Rerun the stage.", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None
    if code:
        raise SystemExit(code)


def parse_stage_args(description: str, per_model: bool) -> tuple:
    """The stage's params (validated), for per-model stages the model name, and the params file."""
    from cifar_pipeline.core import paths
    from cifar_pipeline.core.config import MODELS, load_params  # pydantic loads inside run(), where Ctrl-C is handled

    parser = argparse.ArgumentParser(description=description)
    if per_model:
        parser.add_argument("model", choices=MODELS)
    parser.add_argument("--params", type=Path, default=paths.PARAMS)
    args = parser.parse_args()
    return load_params(args.params), getattr(args, "model", None), args.params


def parse_args(description: str, per_model: bool) -> tuple:
    """The stage's params (validated) and, for per-model stages, the model name."""
    return parse_stage_args(description, per_model)[:2]

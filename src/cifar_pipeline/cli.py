"""Shared entry-point wrapper: known failures print one clear message instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from .errors import PipelineError


def run(main: Callable[[], None]) -> None:
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

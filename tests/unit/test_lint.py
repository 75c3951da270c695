"""The code passes ruff's lint rules and is formatted as `ruff format` writes it (config in pyproject.toml).
Fix with `ruff check --fix src tests benchmarks && ruff format src tests benchmarks`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers.project import ROOT

CODE = ["src", "tests", "benchmarks"]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *CODE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr

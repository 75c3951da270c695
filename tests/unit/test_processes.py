"""The tests' own process runner returns when its command exits, as `dvc exp run --run-all` does for a user,
even while a child of the command keeps its output open (a DVC queue worker that hangs on, DVC issue #10398)."""

from __future__ import annotations

import os
import signal
import sys

from helpers.processes import run


def test_run_returns_when_the_command_exits_while_its_child_keeps_the_output(tmp_path):
    script = (
        "import subprocess, sys; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(child.pid, 'queue done', flush=True); print('warning', file=sys.stderr); sys.exit(3)"
    )
    result = run([sys.executable, "-c", script], tmp_path, check=False, timeout=300)
    pid, *words = result.stdout.split()
    try:
        assert (result.returncode, words, result.stderr) == (3, ["queue", "done"], "warning\n")
        os.kill(int(pid), 0)  # the child still runs with the output open: run didn't wait for it
    finally:
        os.kill(int(pid), signal.SIGKILL)

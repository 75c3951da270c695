"""Running the stage CLIs and other processes the way dvc.yaml and a user do, and waiting on what they
print or write (never on a guessed sleep)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "PYTEST_"))}
    env.update(
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    """Run cmd until it exits, its output captured in files, not pipes: a pipe would also wait for any child
    that keeps it (a DVC queue worker forked by `dvc exp run --run-all` can hang on, DVC issue #10398)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        try:
            code = subprocess.call(cmd, cwd=cwd, env=stage_env(**env), stdout=out, stderr=err, timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        result = subprocess.CompletedProcess(cmd, code, *(read_back(f) for f in (out, err)))
    if code is None:
        raise AssertionError(f"{' '.join(cmd)} still ran after {timeout} s:\n{result.stdout}\n{result.stderr}")
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def read_back(file) -> str:
    """A text file's content from the start (newlines translated, as with text=True)."""
    file.seek(0)
    return file.read()


def stage(
    module: str, *args: str, cwd: Path, check: bool = True, timeout: float = 900, **env: str
) -> subprocess.CompletedProcess:
    """Run a stage CLI (`python -m cifar_pipeline.stages.<module>`) the way dvc.yaml does."""
    return run(
        [sys.executable, "-m", f"cifar_pipeline.stages.{module}", *args], cwd, check=check, timeout=timeout, **env
    )


def assert_clean_failure(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and exactly one `error:` line holding each fragment, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_in_own_group(cmd: list[str], cwd, **env: str) -> subprocess.Popen:
    """A process with its stdout and stderr on one text pipe, in its own session (os.killpg reaches its children)."""
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=stage_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 300) -> list[str]:
    """Read the process's output line by line until one matches pattern; returns the lines read."""
    seen, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return seen
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError(f"process ended before printing {pattern!r}:\n{''.join(seen)}")


def wait_for_text(proc: subprocess.Popen, pattern: str, timeout: float = 300) -> str:
    """Read the raw output (progress bars end in \r, not \n) until pattern appears."""
    seen, deadline = "", time.monotonic() + timeout
    while not re.search(pattern, seen):
        chunk = os.read(proc.stdout.fileno(), 4096).decode(errors="replace")
        assert chunk, f"process ended before printing {pattern!r}:\n{seen}"
        seen += chunk
        assert time.monotonic() < deadline, seen
    return seen


def sigterm_after(cmd: list[str], cwd, pattern: str, raw: bool = False) -> str:
    """Start cmd, send it SIGTERM once it prints a line matching pattern (raw: anywhere in its output,
    e.g. a progress bar), and check that it exits with 128 + SIGTERM; returns all it printed."""
    proc = start_in_own_group(cmd, cwd)
    seen = wait_for_text(proc, pattern) if raw else "".join(wait_for_line(proc, pattern))
    proc.send_signal(signal.SIGTERM)
    out = seen + proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    return out


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path, timeout: float) -> None:
    """Poll `ready` (a server answering, a line in a log) until it holds; fail with the log if the process
    exits first or it never holds. The pause between polls only paces them: the condition decides."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            state = f"exited with {proc.returncode}" if proc.returncode is not None else f"not ready in {timeout} s"
            raise AssertionError(f"{what} {state}:\n{log.read_text(errors='replace')[-5000:]}")
        time.sleep(0.1)

"""What a run is tagged with: the commit, the user, the stage, flattened params, and the process that has it
open (so a run its process left RUNNING can be told apart)."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

PROCESS_TAG = "process"  # host:pid:start time of the process that has the run open


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry, as in some containers
        return "unknown"


def base_tags(stage: str) -> dict[str, str]:
    """Tags every run gets: MLflow's source tags, its DVC stage and, inside `dvc exp run`, the experiment's
    name (`dvc_exps` also gains the names of later experiments that reuse the run), its baseline commit and
    the git ref that DVC gives the experiment's own commit when it finishes."""
    tags = {
        "stage": stage,
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": f"dvc.yaml:{stage}",
        "mlflow.source.git.commit": git_commit(),
        "mlflow.user": user(),
    }
    exp, baseline = os.environ.get("DVC_EXP_NAME"), os.environ.get("DVC_EXP_BASELINE_REV")
    if exp:
        tags.update(dvc_exp_name=exp, dvc_exps=exp)
    if baseline:
        tags["dvc_exp_baseline"] = baseline
    if exp and baseline:
        tags["dvc_exp_ref"] = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{exp}"
    return tags


def flatten(d: Mapping, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def process_start_ticks(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (Linux /proc); None where that can't be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid) or ''}"


def process_alive(tag: str) -> bool:
    """Whether the process a PROCESS_TAG names may still run (True whenever this host can't tell)."""
    try:
        host, pid_text, ticks = tag.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    if ticks:  # the start time also tells a reused pid apart
        return process_start_ticks(pid) == ticks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


# A sweep's runs (commands/sweep.py): MLflow's runs table groups them by these tags.
SWEEP_TAG = "sweep"  # the sweep's name
CONFIG_TAG = "sweep.config"  # its configuration: the swept keys' values, seed left out, e.g. `cnn.optimizer.lr=0.01`
BASE_CONFIG = "base"  # the configuration of a sweep over seeds alone


def configuration(params: Mapping, keys: list[str]) -> str:
    """The values of `keys` (dotted params.yaml keys) in params, as `key=value` joined by `; `."""
    flat = flatten(params)
    return "; ".join(f"{key}={flat[key]}" for key in keys) or BASE_CONFIG


def sweep_tags(params) -> dict[str, str]:
    """The sweep tags of a run with these Params (core.config); none outside a sweep."""
    if params.sweep is None:
        return {}
    return {SWEEP_TAG: params.sweep.name, CONFIG_TAG: configuration(params.model_dump(), params.sweep.keys)}

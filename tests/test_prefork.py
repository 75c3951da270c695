"""Stages run as forks of a preloaded server (src/cifar_pipeline/prefork.py) and behave as the process DVC
started would: arguments, environment, working directory, streams, exit status and signals pass through,
the code on disk runs, and a killed stage leaves no child behind."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from cifar_pipeline import prefork
from helpers.processes import run, start_in_own_group, wait_for_line, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open") or sys.platform != "linux", reason="Linux only")

PROBE = """
import os, signal, sys, time
print("child", os.environ.get("CIFAR_PREFORK_CHILD"), os.getpid(), os.getcwd(), sys.argv[1:],
      "torch" in sys.modules, os.environ.get("PROBE_VALUE"), flush=True)
if sys.argv[1] == "exit":
    sys.exit(int(sys.argv[2]))
if sys.argv[1] == "wait":
    signal.signal(signal.SIGINT, lambda *_: sys.exit(42))
    print("waiting", flush=True)
    while True:  # not signal.pause(): a signal that lands on the child's other thread would not wake it
        time.sleep(0.05)
if sys.argv[1] == "modules":
    print("modules", "torchvision" in sys.modules, "matplotlib.pyplot" in sys.modules, flush=True)
if sys.argv[1] == "version":
    from cifar_pipeline import paths
    print("version", getattr(paths, "PROBE_VERSION", None), flush=True)
"""
# What a stage's process does first: hand itself to the server, or say it ran here.
CLIENT = (
    "import os, sys; from cifar_pipeline import prefork; print('client', os.getpid(), flush=True); "
    "code = prefork.delegate('probe'); print('no server' if code is None else '', flush=True); "
    "sys.exit(code or 0)"
)
ENV = {"CIFAR_PREFORK": "1", "CIFAR_PREFORK_IDLE_SECONDS": "120", "PROBE_VALUE": "from the stage"}


@pytest.fixture
def served(tmp_path):
    """A folder with the probe module and a started, ready server for it; the server is stopped after."""
    (tmp_path / "probe.py").write_text(PROBE)
    first = client(tmp_path, "exit", "0")
    assert "no server" in first.stdout and "child" not in first.stdout, first.stdout  # ran here, server starting
    yield tmp_path
    prefork.stop(tmp_path)


def client(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", CLIENT, *args], cwd, check=False, **ENV, **env)


def start_client(cwd: Path, *args: str) -> subprocess.Popen:
    return start_in_own_group([sys.executable, "-c", CLIENT, *args], cwd, **ENV)


def child_line(out: str) -> list[str]:
    return next(line for line in out.splitlines() if line.startswith("child")).split()


def wait_gone(pid: int, timeout: float = 60) -> bool:
    """True once process pid has exited (waits on its pidfd, no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_the_child_gets_arguments_environment_folder_and_streams_and_its_status_comes_back(served):
    result = client(served, "exit", "3")
    assert result.returncode == 3, result.stderr
    client_pid = int(re.search(r"^client (\d+)", result.stdout, re.M)[1])
    _, marker, pid, cwd, *rest = child_line(result.stdout)
    assert marker == "1" and int(pid) != client_pid
    assert Path(cwd) == served.resolve()
    assert " ".join(rest) == "['exit', '3'] True from the stage"  # argv, torch preloaded, the stage's env


def test_signals_reach_the_child(served):
    proc = start_client(served, "wait")
    wait_for_line(proc, "^waiting")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 42, out  # the child's own SIGINT handler ran


def test_a_killed_stage_process_takes_its_child_with_it(served):
    proc = start_client(served, "wait")
    child_pid = int(child_line("".join(wait_for_line(proc, "^child")))[2])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_gone(child_pid), "the child outlived the killed stage process"


def test_the_child_runs_the_project_code_on_disk_not_the_servers(served, tmp_path):
    package = tmp_path / "pkg" / "cifar_pipeline"
    package.parent.mkdir()
    source = Path(prefork.__file__).parent
    shutil.copytree(source, package)
    path = {"PYTHONPATH": f"{package.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    client(served, "exit", "0", **path)  # this copy's server (another key: another PYTHONPATH) starts
    assert "version None" in client(served, "version", **path).stdout
    with open(package / "paths.py", "a") as f:
        f.write("\nPROBE_VERSION = 2\n")
    after = client(served, "version", **path)
    assert "child" in after.stdout and "version 2" in after.stdout, after.stdout


def test_the_next_stage_runs_in_the_standby_with_the_later_imports_done(served):
    running = start_client(served, "wait")  # meanwhile the server imports PRELOAD_LATER and forks a standby
    try:
        taken = int(child_line("".join(wait_for_line(running, "^child")))[2])
        standby = warmed_standby(served, running, taken)
        result = client(served, "modules")
        assert int(child_line(result.stdout)[2]) == standby
        assert "modules True True" in result.stdout, result.stdout  # torchvision and matplotlib.pyplot
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.wait()


def test_a_dead_standby_is_replaced_by_a_fresh_fork(served):
    running = start_client(served, "wait")
    try:
        taken = int(child_line("".join(wait_for_line(running, "^child")))[2])
        standby = warmed_standby(served, running, taken)
        os.kill(standby, signal.SIGKILL)
        assert wait_gone(standby)
        result = client(served, "exit", "5")
        assert result.returncode == 5, result.stdout + result.stderr
        marker, pid = child_line(result.stdout)[1:3]
        assert marker == "1" and int(pid) != standby  # run in a fork, not here
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.wait()


def warmed_standby(folder: Path, alive: subprocess.Popen, taken: int) -> int:
    """The pid of the server's standby (not `taken`, the one running a stage) forked after the server's
    later imports, once it is ready (from the server's log)."""
    log = server_log_file(folder)

    def pids() -> list[int]:
        after_imports = newest_server_lines(log, folder).partition("matplotlib.pyplot too after")[2]
        return [int(pid) for pid in re.findall(r"^standby (\d+): ready", after_imports, re.M) if int(pid) != taken]

    wait_until(pids, alive, "the standby", log, timeout=120)
    return pids()[-1]


def test_stop_ends_the_server_and_the_next_stage_runs_here(served):
    assert "child" in client(served, "exit", "0").stdout
    prefork.stop(served)
    assert "no server" in client(served, "exit", "0").stdout


@pytest.mark.slow
def test_pipeline_through_the_server_killed_mid_training_resumes_and_finishes(project):
    """The real stages in forks: a SIGKILL of `dvc repro` kills the training child; the rerun resumes it and
    every later stage runs in a fork too."""
    env = {**ENV, "CIFAR_PREFORK_IDLE_SECONDS": "600"}
    try:
        run(["dvc", "repro", "download"], project, **env)  # starts the server
        proc = start_in_own_group(["dvc", "repro", "train_cnn"], project, **env)
        wait_for_line(proc, r"^train_cnn epoch 1:")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        forked = server_log_lines(project)
        assert any("stages.train cnn" in line for line in forked), forked
        assert wait_gone(int(re.search(r"forked (\d+)", forked[-1])[1]))

        rerun = run(["dvc", "repro"], project, **env)
        assert re.search(r"train_cnn: resuming MLflow run \w+ after epoch \d", rerun.stdout), rerun.stdout
        modules = " ".join(server_log_lines(project))
        for module in ("train cnn", "train resnet34", "train resnet18", "evaluate cnn", "compare"):
            assert f"stages.{module}" in modules, modules
        client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("cifar10").experiment_id])
        assert {r.info.status for r in runs} == {"FINISHED"}
        assert len([r for r in runs if r.data.tags.get("model") == "cnn"]) == 1  # the killed run was resumed
        assert (project / "reports" / "metrics.json").is_file()
    finally:
        prefork.stop(project)


def server_log_file(folder: Path) -> Path:
    """The log of the newest server started for folder."""
    started = f"starting a server for {folder.resolve()}\n"
    return max((log for log in prefork.socket_dir().glob("*.log") if started in log.read_text()), key=os.path.getmtime)


def newest_server_lines(log: Path, folder: Path) -> str:
    """What the newest server for folder wrote in log. A log keeps the lines of every server with its key,
    also those of an earlier test session whose folder had the same path."""
    return log.read_text().rpartition(f"starting a server for {folder.resolve()}\n")[2]


def server_log_lines(project: Path) -> list[str]:
    """The newest server's lines about forks for this project."""
    lines = newest_server_lines(server_log_file(project), project).splitlines()
    return [line for line in lines if line.endswith(f" in {project.resolve()}")]

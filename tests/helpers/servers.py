"""Real servers on 127.0.0.1 for the team tests: PostgreSQL, an S3-compatible server and `mlflow server`.

Each is a context manager that starts the server on a free port, waits until it answers, and stops it (and
removes its files) on exit. A server whose program is not installed skips the test with the install command.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.processes import free_port, stage_env, wait_until

READY_TIMEOUT_S = 180
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "team-test",
    "AWS_SECRET_ACCESS_KEY": "team-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    return check


@contextmanager
def background(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A server process in its own session; SIGTERM to the whole group on exit (SIGKILL if it hangs)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=30)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def postgres_bindir() -> Path:
    found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
    if found is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    return Path(found).resolve().parent


def postgres_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` account Debian's package creates."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        pytest.skip("running as root, and PostgreSQL refuses root; there is no `postgres` user to run it as")


@contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1; yields the SQLAlchemy URI of its `mlflow` database."""
    bindir, user = postgres_bindir(), postgres_user()
    root = Path(tempfile.mkdtemp(prefix="team-postgres-"))
    if user:
        shutil.chown(root, user, pwd.getpwnam(user).pw_gid)
    port = free_port()

    def pg(tool: str, *args: str) -> None:
        as_user = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} if user else {}
        result = subprocess.run(
            [str(bindir / tool), *args], cwd=root, capture_output=True, text=True, timeout=READY_TIMEOUT_S, **as_user
        )
        if result.returncode != 0:
            log = root / "postgres.log"
            raise AssertionError(
                f"{tool} failed: {result.stdout}{result.stderr}{log.read_text() if log.exists() else ''}"
            )

    try:
        pg("initdb", "-D", str(root / "data"), "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--no-sync")
        pg(
            "pg_ctl",
            "-D",
            str(root / "data"),
            "-l",
            str(root / "postgres.log"),
            "-w",
            "-t",
            str(READY_TIMEOUT_S),
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off",
            "start",
        )
        try:
            pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
            yield f"postgresql+psycopg://mlflow@127.0.0.1:{port}/mlflow"
        finally:
            pg("pg_ctl", "-D", str(root / "data"), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def s3_server(workdir: Path) -> Iterator[str]:
    """moto's S3-compatible server (in memory); yields its endpoint URL."""
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("moto_server not installed: pip install -r requirements-team.txt")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "s3.log"
    with background([exe, "-H", "127.0.0.1", "-p", str(port)], stage_env(), log) as proc:
        wait_until(http_ok(url + "/moto-api/"), proc, "S3 server (moto_server)", log, READY_TIMEOUT_S)
        yield url


@contextmanager
def mlflow_server(
    backend_uri: str, artifacts_destination: str, s3_endpoint: str, workdir: Path, ui_host: str
) -> Iterator[str]:
    """`mlflow server` on a PostgreSQL store with proxied S3 artifacts, as docs/setup.md starts it, with its UI
    opened as http://<ui_host>:<port> (a name that, on a team, resolves to the server host)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts_destination,
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--allowed-hosts",
        f"{ui_host}:{port},127.0.0.1:{port}",
        "--cors-allowed-origins",
        f"http://{ui_host}:{port}",
    ]
    env = stage_env(MLFLOW_S3_ENDPOINT_URL=s3_endpoint, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **S3_CREDENTIALS)
    log = workdir / "mlflow-server.log"
    with background(cmd, env, log) as proc:
        wait_until(http_ok(url + "/health"), proc, "mlflow server", log, READY_TIMEOUT_S)
        yield url

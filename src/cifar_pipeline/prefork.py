"""Prefork: stages run as forks of a process that imported torch, MLflow and inductor once.

A fresh interpreter pays 10-20 s of imports before a stage does any work (torch, torch._dynamo, MLflow
and its store, torch.compile's inductor, torchvision, matplotlib; docs/speed.md). The first stage of a
`dvc repro` starts a server in the background and runs as usual; the stages after it send their
arguments, environment, working directory and stdin/stdout/stderr to the server. The server imports
PRELOAD (and inductor where it can without initialising CUDA, which its forks could not use again), then
PRELOAD_LATER while no stage waits. It keeps one fork of itself on standby, which gets ready (CUDA's
driver initialised) while the stage before it runs; the next stage becomes that fork, and a new standby
starts.
The stage's own process stays the one DVC started: it forwards signals to the child and exits with the
child's status, and the child dies with it (a kill -9 of the stage kills the child too). The server
imports no project code, so every child runs the code on disk; it serves one project, interpreter and
environment (a different one starts its own) and exits when idle for CIFAR_PREFORK_IDLE_SECONDS (default
60). Linux only; CIFAR_PREFORK=0 turns it off.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import hashlib
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .environment import paused_gc
from .paths import project_root

PRELOAD = (  # before the server takes a stage: what the first training stage, waiting for it, needs
    "numpy",
    "yaml",
    "pydantic",
    "torch",
    "torch._dynamo",  # what torch.optim's first optimizer imports: 3-6 s
    "pandas",
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)
# What torch.compile() imports first (4-6 s); stages compile only on a GPU. Its import asks
# torch.cuda.is_available(), whose default check leaves the server's forks unable to use CUDA: the server
# imports it only where that check can go through NVML instead (torch's PYTORCH_NVML_BASED_CUDA_CHECK).
INDUCTOR = "torch._inductor.compile_fx"
# ResNets and plots, which the first training stage does not need: the server imports them once it serves,
# one at a time while no stage waits, each followed by the fork check and a fresh standby.
PRELOAD_LATER = ("torchvision", "matplotlib.pyplot")
# Vary between the stages of one `dvc repro` without changing how the libraries import.
VOLATILE_ENV = ("_", "OLDPWD", "PWD", "SHLVL")
CHILD_ENV = "CIFAR_PREFORK_CHILD"
_set_by_imports: dict[str, str] = {}  # environment variables the imports set in the server and the standby
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)  # forwarded to the child


def enabled() -> bool:
    return (
        sys.platform == "linux"
        and os.environ.get("CIFAR_PREFORK", "1") != "0"
        and CHILD_ENV not in os.environ
        and hasattr(os, "pidfd_open")
    )


def idle_seconds() -> float:
    return float(os.environ.get("CIFAR_PREFORK_IDLE_SECONDS", "60"))


def server_key(root: Path) -> str:
    """Same project, interpreter, environment, libraries and server code: the same server."""
    env = {k: v for k, v in os.environ.items() if k not in VOLATILE_ENV and not k.startswith("DVC_")}
    libs = {}
    for name in ("torch", "torchvision", "mlflow", "matplotlib", "numpy", "pandas"):
        spec = importlib.util.find_spec(name)
        libs[name] = spec and spec.origin and os.stat(spec.origin).st_mtime_ns
    identity = [
        str(root),
        sys.executable,
        sys.version,
        sys.flags,
        sys.warnoptions,
        env,
        libs,
        Path(__file__).read_bytes(),
    ]
    return hashlib.sha256(repr(identity).encode()).hexdigest()[:20]


def socket_dir() -> Path:
    """A folder only this user can enter (unix socket paths must stay short)."""
    folder = Path(tempfile.gettempdir()) / f"cifar-prefork-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{folder} is not private to this user")
    return folder


def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    frame = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [frame], fds)
    else:
        sock.sendall(frame)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _recv(sock: socket.socket, with_fds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(sock, 4, with_fds)
        if len(head) < 4:
            head += _recv_exact(sock, 4 - len(head))
    else:
        head = _recv_exact(sock, 4)
    return json.loads(_recv_exact(sock, struct.unpack("!I", head)[0])), fds


# Client: the stage process DVC started.


def delegate(module: str) -> int | None:
    """Run `python -m module <this process's arguments>` in a fork of the project's server and return
    its exit status; None when no server is ready (a new one is started for the next stages)."""
    if not enabled():
        return None
    try:
        root = project_root()
        key = server_key(root)
        base = socket_dir() / key
        sock = _connect(base)
        if sock is None:
            _start_server(base, root)
            return None
        request = {
            "module": module,
            "argv": sys.argv[1:],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "path": sys.path,
            "umask": _umask(),
        }
    except (OSError, ConnectionError, ValueError):
        return None  # no server, or it went away before forking: run here
    try:
        _send(sock, request, [0, 1, 2])
        pid = _recv(sock)[0]["pid"]
    except (OSError, ConnectionError, KeyError, ValueError):
        sock.close()  # a child forked for this request sees the close and dies before doing anything
        return None

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in SIGNALS:  # the terminal's and DVC's signals reach this process; pass them on
        signal.signal(signum, forward)
    try:
        status = _recv(sock)[0]["status"]
    except (OSError, ConnectionError, ValueError):
        status = signal.SIGKILL  # the server died: the child went with it (its watchdog)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: end the same way, as DVC would have seen it
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _connect(base: Path) -> socket.socket | None:
    """A connection to the ready server; waits while one is starting."""
    with open(base.with_suffix(".starting"), "a+b") as starting:
        fcntl.flock(starting, fcntl.LOCK_SH)  # held by a starting server until it listens
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(base.with_suffix(".sock")))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return sock


def _start_server(base: Path, root: Path) -> None:
    """Start a server in the background unless one is running (it may be exiting)."""
    alive = open(base.with_suffix(".lock"), "a+b")  # noqa: SIM115 (handed to the server)
    starting = open(base.with_suffix(".starting"), "a+b")  # noqa: SIM115
    try:
        try:
            fcntl.flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        if base.with_suffix(".refused").exists():  # this set-up can't be served; it said why there
            return
        fcntl.flock(starting, fcntl.LOCK_EX)
        with open(base.with_suffix(".log"), "ab") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} starting a server for {root}\n".encode())
            log.flush()
            subprocess.Popen(
                [sys.executable, "-m", __name__, str(base), str(alive.fileno()), str(starting.fileno())],
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(alive.fileno(), starting.fileno()),
                start_new_session=True,  # not in the stage's process group: its Ctrl-C is not ours
            )
    finally:  # the server holds both locks now
        alive.close()
        starting.close()


# Server.


def serve(base: Path, starting_fd: int, inherited: list[int]) -> None:
    """Preload, listen, hand each request to the standby fork; return when idle or asked to stop."""
    start = time.monotonic()
    try:
        _preload([*PRELOAD, *([INDUCTOR] if _nvml_works() else [])])
        problem = _fork_problem()
    except Exception as exc:
        problem = f"preloading failed: {exc!r}"
    if problem:  # the stages of this set-up run in their own processes from now on
        base.with_suffix(".refused").write_text(problem + "\n")
        raise SystemExit(f"prefork: not serving: {problem}")
    _log(f"ready after {time.monotonic() - start:.1f}s of imports")
    sock_path = base.with_suffix(".sock")
    sock_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(16)
    os.close(starting_fd)  # ready: waiting clients connect now
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, the stage process's connection)

    def server_fds() -> list[int]:  # what a fork closes
        return [listener.fileno(), *children, *(c.fileno() for _, c in children.values()), *inherited]

    standby = Standby(server_fds())
    idle_since = time.monotonic()
    listening, later = True, list(PRELOAD_LATER)
    try:
        while children or (listening and time.monotonic() - idle_since < idle_seconds()):
            timeout = None if children else max(idle_seconds() - (time.monotonic() - idle_since), 0)
            if later and listening:
                timeout = 0  # only look: import the next module unless a stage is waiting
            ready, _, _ = select.select([*children, *([listener] if listening else [])], [], [], timeout)
            if not ready and later and listening:
                name = later.pop(0)
                with contextlib.suppress(Exception):  # a child that needs it imports it and sees the error
                    _preload([name])
                problem = _fork_problem()
                standby.close()
                if problem:  # the import broke CUDA in forks: finish the running stages, take no more
                    base.with_suffix(".refused").write_text(f"after importing {name}: {problem}\n")
                    listening, later = False, []
                    sock_path.unlink(missing_ok=True)
                else:  # a standby with it; its own log line comes after this one
                    if not later:
                        _log(f"imported {', '.join(PRELOAD_LATER)} too after {time.monotonic() - start:.1f}s")
                    standby = Standby(server_fds())
                continue
            for fd in ready:
                if fd is not listener:
                    _report_exit(fd, *children.pop(fd))
                    idle_since = time.monotonic()
                    continue
                conn, _ = listener.accept()
                try:
                    request, fds = _recv(conn, with_fds=3)
                except (OSError, ConnectionError, ValueError):
                    conn.close()
                    continue
                if request.get("stop") == os.getcwd():  # finish the running children, take no more
                    listening = False
                    sock_path.unlink(missing_ok=True)
                    standby.close()
                    with contextlib.suppress(OSError):
                        _send(conn, {"stopping": True})
                if len(fds) != 3 or "module" not in request:
                    for fd in fds:
                        os.close(fd)
                    conn.close()
                    continue
                pid = standby.take(request, fds, conn)
                if pid is None:  # it died: fork one now
                    standby.close()
                    pid = _fork_child(request, fds, conn, server_fds())
                children[os.pidfd_open(pid)] = (pid, conn)
                standby = Standby(server_fds())
    finally:
        standby.close()
        if listening:
            sock_path.unlink(missing_ok=True)
        listener.close()


def _log(line: str) -> None:
    """One line of the server's log, in one write: the server and its forks share the file."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _preload(names: tuple[str, ...] | list[str]) -> None:
    """Import modules of installed packages for every child forked after, the garbage collector paused."""
    before = dict(os.environ)
    with paused_gc(), _cuda_checks_through_nvml():
        for name in names:
            if importlib.util.find_spec(name.split(".")[0]) is not None:
                __import__(name)
    _set_by_imports.update({k: v for k, v in os.environ.items() if before.get(k) != v})
    gc.collect()
    gc.freeze()  # children share the imported modules' pages instead of copying them


def _nvml_works() -> bool:
    """Whether NVIDIA's management library loads and starts: a GPU machine whose CUDA checks can go through it."""
    try:
        return ctypes.CDLL("libnvidia-ml.so.1").nvmlInit_v2() == 0
    except (OSError, AttributeError):
        return False


@contextlib.contextmanager
def _cuda_checks_through_nvml() -> Iterator[None]:
    """torch.cuda.is_available() asks NVML instead of the CUDA driver, which a fork could not use again."""
    before = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = before


class Standby:
    """A fork of the server that becomes the next stage's process, its imports done and, on a GPU, the
    CUDA driver initialised (and inductor imported where the server could not) while the stage before
    runs. Dies with the server (its end of the pair closes)."""

    def __init__(self, server_fds: list[int]):
        ours, theirs = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            ours.close()
            for fd in server_fds:
                os.close(fd)
            _stand_by(theirs)
        theirs.close()
        self.sock: socket.socket | None = ours

    def take(self, request: dict, fds: list[int], conn: socket.socket) -> int | None:
        """Hand the stage to the standby and return its pid, the stage's child from now on; None if the
        standby has died."""
        if self.sock is None or os.waitpid(self.pid, os.WNOHANG)[0]:
            return None
        try:
            _send(self.sock, request, [*fds, conn.fileno()])
        except OSError:
            return None
        self.sock.close()
        self.sock = None
        _announce(self.pid, request, fds, conn)
        return self.pid

    def close(self) -> None:
        """End a standby that took no stage."""
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


def _stand_by(server: socket.socket) -> None:
    """In the standby fork: get ready until a stage comes, then run it. Never returns."""
    start = time.monotonic()
    try:
        import torch

        if torch.cuda.is_available() and INDUCTOR not in sys.modules:  # fine here: this process never forks
            with contextlib.suppress(Exception):  # a stage that needs it imports it and sees the error
                _preload([INDUCTOR])
        _log(f"standby {os.getpid()}: ready after {time.monotonic() - start:.1f}s")
        request, fds = _recv(server, with_fds=4)
    except BaseException:  # the server is gone (or stopped us): nothing to run
        os._exit(0)
    server.close()
    _run_child(request, fds[:3], socket.socket(fileno=fds[3]))


def _fork_problem() -> str | None:
    """Why a fork of this process could not run a stage: tried in a fork that uses CUDA as stages do."""
    pid = os.fork()
    if pid == 0:
        try:
            import torch

            if torch.cuda.is_available():
                torch.ones(1, device="cuda").sum().item()
        except BaseException as exc:  # anything means: do not serve
            _log(f"{type(exc).__name__}: {exc}")
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return None if status == 0 else f"CUDA failed in a fork (status {status}); see the line above"


def _report_exit(pidfd: int, pid: int, conn: socket.socket) -> None:
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    with contextlib.suppress(OSError):  # the stage's process is gone; the child was killed with it
        _send(conn, {"status": status})
    conn.close()


def _fork_child(request: dict, fds: list[int], conn: socket.socket, server_fds: list[int]) -> int:
    """A child forked now for the request; its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd in server_fds:
            os.close(fd)
        _run_child(request, fds, conn)
    _announce(pid, request, fds, conn)
    return pid


def _announce(pid: int, request: dict, fds: list[int], conn: socket.socket) -> None:
    """The child has the request: close the server's copies of the stage's streams, tell its process."""
    for fd in fds:
        os.close(fd)
    _log(f"forked {pid}: {request['module']} {' '.join(request['argv'])} in {request['cwd']}")
    try:
        _send(conn, {"pid": pid})
    except OSError:
        os.kill(pid, signal.SIGKILL)


def stop(root: Path) -> None:
    """Stop this user's servers of the project at root (e.g. before timing a fresh start), starting ones too."""
    if sys.platform != "linux":
        return
    for starting in socket_dir().glob("*.starting"):
        base = starting.with_suffix("")
        try:
            sock = _connect(base)
            if sock is None:
                continue
            with sock:
                _send(sock, {"stop": str(root.resolve())}, [0, 1, 2])
                _recv(sock)  # only a server of this project answers
        except (OSError, ConnectionError, ValueError):
            continue
        with open(base.with_suffix(".lock"), "a+b") as alive:
            fcntl.flock(alive, fcntl.LOCK_SH)  # returns once that server has exited


def _run_child(request: dict, fds: list[int], conn: socket.socket) -> None:
    """In the fork: become the stage's process, run the module, exit. Never returns."""
    import runpy
    import threading
    import traceback

    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])
        os.environ.clear()  # the stage's environment, plus what the imports set as they would have in it
        os.environ.update(_set_by_imports)
        os.environ.update(request["env"])
        os.environ[CHILD_ENV] = "1"
        _rebind_stdio()
        sys.path[:] = request["path"]
        sys.argv = [sys.argv[0], *request["argv"]]
        for name in [m for m in sys.modules if m == "cifar_pipeline" or m.startswith("cifar_pipeline.")]:
            del sys.modules[name]  # the code on disk, not the version the server started with
        importlib.invalidate_caches()
        threading.Thread(target=_die_with_client, args=(conn,), daemon=True).start()
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:  # as the interpreter ends on an uncaught Ctrl-C: traceback, then killed by SIGINT
        traceback.print_exc()
        _exit(0, signal.SIGINT)
    except BaseException:
        traceback.print_exc()
    finally:
        _exit(code)


def _die_with_client(conn: socket.socket) -> None:
    """The stage's process closes the connection only by exiting: when it is gone, so is this child."""
    try:
        while conn.recv(1024):
            pass
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


def _rebind_stdio() -> None:
    """New sys.std* over fds 0-2, buffered as a fresh interpreter would buffer them."""
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for name, fd, errors in (("stdin", 0, "strict"), ("stdout", 1, "strict"), ("stderr", 2, "backslashreplace")):
        mode = "r" if fd == 0 else "w"
        tty = os.isatty(fd)
        stream = open(  # noqa: SIM115 (the process's own streams)
            fd,
            mode,
            closefd=False,
            errors=errors,
            encoding=getattr(sys, name).encoding,
            buffering=-1,
            newline=None if fd == 0 else "\n",
        )
        if fd:
            stream.reconfigure(line_buffering=tty or fd == 2, write_through=unbuffered)
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def _exit(code: int, signum: int | None = None) -> None:
    """Exit as the interpreter does (threads joined, atexit handlers run, streams flushed)."""
    import atexit
    import threading

    try:
        threading._shutdown()  # what the interpreter calls first at exit: waits for non-daemon threads
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        if signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        os._exit(code)


def main() -> None:
    base, alive_fd, starting_fd = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    try:
        serve(base, starting_fd, [alive_fd])
    finally:
        os.close(alive_fd)  # the next client may start a server


if __name__ == "__main__":
    main()

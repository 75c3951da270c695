"""Time the whole `dvc repro` cold and warm, per stage, with where each stage's seconds go.

Runs in a throw-away copy of this project (its tracked and untracked, not ignored files, committed to
a fresh git repo), with this interpreter's environment:
- cold: the fresh copy, so nothing in DVC's cache, no MLflow store and an empty torch.compile cache
  (the project's own state/torch_compile; TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR point into
  the copy);
- warm: `dvc repro -f` right after, in the same copy (compile cache, MLflow store and DVC cache filled).
One second after each `dvc repro` returns, it lists any process still running the copy's code (there
should be none: every stage is the process DVC started).

Per stage it reports the wall from `dvc repro`'s own "Running stage" lines and splits it, from the
times its output lines arrive and from a `python` wrapper put first on PATH that records when each
stage's process starts and ends, into: DVC before the process, the process's start-up (imports, CUDA
init, data load, MLflow store, up to "started MLflow run" in a training stage), training (from
reports/train/<model>.json), writing outputs, publishing the model (log_model and registration, as the
stage prints it), process exit, and DVC after the process (hashing outputs, caching them, dvc.lock).
After the last run a probe times, each in a fresh process: the interpreter's start, `import` of torch, torchvision,
mlflow and matplotlib, CUDA's initialisation, opening the MLflow store, and loading and hashing the
prepared data (--no-probe skips it). --profile runs every stage under pyinstrument.

Usage (from the project root, with the project's environment active):
    python benchmarks/pipeline.py [--archive data/cifar-10-python.tar.gz] [-S key=value ...]
        [--out DIR] [--runs cold warm] [--no-probe] [--profile] [--record [--results benchmarks/results.json]]
-S sets a params.yaml key in the copy before its first commit, as `dvc exp run -S` would, e.g.
    python benchmarks/pipeline.py -S data.md5=<md5 of your archive> -S resnet18.weights=none --record
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cifar_pipeline.core import atomic, yaml12
from cifar_pipeline.core.paths import STAGES
from cifar_pipeline.tracking.tags import git_commit

ROOT = Path(__file__).resolve().parents[1]

MODEL_OF_STAGE = {stage: model for model, stage in STAGES.items()}
STAGE_LINE = re.compile(r"^Running stage '(?P<stage>[^']+)':")
STARTED = re.compile(r": (started|resuming) MLflow run")
EPOCH = re.compile(r"^\S+ epoch \d+: ")
PUBLISHED = re.compile(r": logged best model .* in (?P<seconds>[0-9.]+)s$")
PARTS = ("dvc_before", "start_up", "training", "outputs", "publish", "run", "exit", "dvc_after")
PROBE = r"""
import json, sys, time
what = sys.argv[1]
t = time.perf_counter()
if what == "torch":
    import torch
elif what == "torchvision":
    import torch; t = time.perf_counter(); import torchvision
elif what == "mlflow":
    import mlflow
elif what == "matplotlib":
    import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot
elif what == "cuda_init":
    import torch; t = time.perf_counter()
    if torch.cuda.is_available():
        torch.ones(1, device="cuda").sum().item()
elif what == "mlflow_store":
    import mlflow; t = time.perf_counter(); mlflow.MlflowClient(sys.argv[2]).search_experiments()
elif what == "data_load_and_md5":
    from pathlib import Path
    from cifar_pipeline.core.data import load_arrays, md5sum
    t = time.perf_counter(); load_arrays(Path(sys.argv[2])); md5sum(Path(sys.argv[2]))
elif what == "device":
    import importlib.util, os, torch
    cuda = torch.cuda.is_available()
    print(json.dumps({
        "gpu": torch.cuda.get_device_name(0) if cuda else "none (cpu)",
        "torch": torch.__version__,
        "torch_bytecode_cached": os.path.exists(importlib.util.cache_from_source(torch.__file__)),
    }))
    raise SystemExit
print(json.dumps(time.perf_counter() - t))
"""
PROFILER = """# Run `-m module args` under pyinstrument.
import runpy, sys
from pyinstrument import Profiler
out, flag, module, *args = sys.argv[1:]
assert flag == "-m", sys.argv
sys.argv = [module, *args]
profiler = Profiler(interval=0.002)
profiler.start()
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    profiler.stop().save(out)
"""
WRAPPER = """#!/bin/sh
printf 'start %s %s\\n' "$(date +%s.%N)" "$*" >> "$PIPELINE_BENCH_PROCESSES"
if [ -n "$PIPELINE_BENCH_PROFILE" ]; then
  "{python}" "$PIPELINE_BENCH_PROFILER" \\
    "$PIPELINE_BENCH_PROFILE/$(date +%s.%N)-$(echo "$*" | tr -c 'A-Za-z0-9.\\n' _).pyisession" "$@"
else
  "{python}" "$@"
fi
rc=$?
printf 'end %s %s\\n' "$(date +%s.%N)" "$*" >> "$PIPELINE_BENCH_PROCESSES"
exit $rc
"""


def set_param(params: dict, dotted: str, value: str) -> None:
    """key.sub=value into params, the value parsed as YAML (as `dvc exp run -S` does)."""
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = yaml12.load(value)


def project_files(root: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def make_copy(work: Path, overrides: list[str], archive: Path | None) -> Path:
    """The project in work/project, params overridden, committed in a fresh git repo."""
    repo = work / "project"
    for name in project_files(ROOT):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    params = yaml12.load((repo / "params.yaml").read_text())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: -S {item}: expected key=value")
        set_param(params, key, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if archive is not None:  # linked where params.yaml's data.archive looks, as a user's copy would be
        target = repo / params["data"]["archive"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(archive.resolve())
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "benchmark copy"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    return repo


def stage_env(work: Path, repo: Path, processes: Path) -> dict[str, str]:
    """This interpreter's environment, the copy's code first, a timing `python` wrapper first on PATH."""
    shim = work / "bin"
    shim.mkdir(exist_ok=True)
    wrapper = shim / "python"
    wrapper.write_text(WRAPPER.format(python=sys.executable))
    wrapper.chmod(0o755)
    (shim / "profile_stage.py").write_text(PROFILER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_TRACKING_URI"))}
    env.update(
        PATH=os.pathsep.join([str(shim), str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join(filter(None, [str(repo / "src"), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        DVC_NO_ANALYTICS="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        PIPELINE_BENCH_PROCESSES=str(processes),
        PIPELINE_BENCH_PROFILER=str(shim / "profile_stage.py"),
        TORCHINDUCTOR_CACHE_DIR=str(repo / "state" / "torch_compile"),
        TRITON_CACHE_DIR=str(repo / "state" / "triton"),
    )
    return env


def run_repro(repo: Path, env: dict[str, str], force: bool, log: Path) -> tuple[list[tuple[float, str]], float]:
    """Run `dvc repro [-f]`; every output line with its arrival time (epoch seconds), and the end time."""
    lines: list[tuple[float, str]] = []
    cmd = ["dvc", "repro", *(["-f"] if force else [])]
    with open(log, "w") as out:
        start = time.time()
        out.write(f"{start:.3f} $ {' '.join(cmd)}\n")
        proc = subprocess.Popen(
            cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        for line in proc.stdout:
            now = time.time()
            for part in line.rstrip("\n").split("\r"):  # progress bars redraw with \r
                lines.append((now, part))
            out.write(f"{now:.3f} {line}")
            out.flush()
        end = time.time()
    if proc.wait() != 0:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed ({proc.returncode}); see {log}")
    return lines, end


def read_processes(path: Path) -> list[tuple[float, float, str]]:
    """(start, end, args) of each wrapped python process, in start order."""
    starts: dict[str, list[float]] = {}
    done = []
    for row in path.read_text().splitlines():
        kind, stamp, args = row.split(" ", 2)
        if kind == "start":
            starts.setdefault(args, []).append(float(stamp))
        else:
            done.append((starts[args].pop(0), float(stamp), args))
    return sorted(done)


def stage_breakdown(lines: list[tuple[float, str]], end: float, processes: list, repo: Path) -> dict[str, dict]:
    """Per stage: wall and its parts (seconds), in the order `dvc repro` ran them."""
    marks = [
        (t, m["stage"], lines[i + 1][1].removeprefix("> "))
        for i, (t, text) in enumerate(lines[:-1])
        if (m := STAGE_LINE.match(text))
    ]
    unclaimed = list(processes)
    stages = {}
    for i, (begin, stage, cmd) in enumerate(marks):
        finish = marks[i + 1][0] if i + 1 < len(marks) else end
        inside = [(t, text) for t, text in lines if begin <= t < finish]
        # The stage's own process, matched on its command: a line can arrive after the process started.
        proc = next((p for p in unclaimed if f"python {p[2]}" == cmd), None)
        if proc is not None:
            unclaimed.remove(proc)
        stages[stage] = split_stage(stage, begin, finish, inside, proc and proc[:2], repo)
    return stages


def split_stage(stage: str, begin: float, finish: float, inside: list, proc, repo: Path) -> dict:
    entry: dict = {"wall": finish - begin}
    if proc is None:
        return entry
    p_start, p_end = proc
    printed = [
        t
        for t, text in inside
        if p_start <= t <= p_end and text.strip() and not STAGE_LINE.match(text) and not text.startswith("> ")
    ]
    last_line = printed[-1] if printed else p_start
    # Training stages split at their own lines; the others' "run" is all they did up to their last line.
    parts = {
        "dvc_before": max(p_start - begin, 0.0),
        "dvc_after": finish - p_end,
        "exit": p_end - last_line,
        "run": last_line - p_start,
    }
    model = MODEL_OF_STAGE.get(stage)
    if model:
        started = next((t for t, text in inside if STARTED.search(text)), None)
        epochs = [t for t, text in inside if EPOCH.match(text)]
        published = [(t, float(m["seconds"])) for t, text in inside if (m := PUBLISHED.search(text))]
        summary = json.loads((repo / "reports" / "train" / f"{model}.json").read_text())
        entry["train_seconds"] = summary["train_seconds"]
        entry["first_step_seconds"] = summary.get("first_step_seconds")
        if started and epochs and published:
            publish_at, publish_s = published[-1]
            del parts["run"]
            parts.update(
                start_up=started - p_start,
                training=epochs[-1] - started,
                outputs=publish_at - publish_s - epochs[-1],
                publish=publish_s,
                exit=p_end - publish_at,
            )
    entry["parts"] = {k: round(parts[k], 2) for k in PARTS if k in parts}
    entry["overhead"] = entry["wall"] - entry.get("train_seconds", 0.0)
    return entry


def run_probe(repo: Path, env: dict[str, str], *args: str):
    """What PROBE prints last (JSON), run in a fresh process of this interpreter in the copy."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.splitlines()[-1])


def probe(repo: Path, env: dict[str, str]) -> dict[str, float]:
    """Start-up costs, each measured in a fresh process of this interpreter in the copy."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    costs = {"python_start": time.perf_counter() - start}
    for what in ("torch", "torchvision", "mlflow", "matplotlib", "cuda_init"):
        costs[f"import_{what}" if what != "cuda_init" else what] = run_probe(repo, env, what)
    costs["mlflow_store_open"] = run_probe(repo, env, "mlflow_store", f"sqlite:///{repo / 'mlflow.db'}")
    costs["data_load_and_md5"] = run_probe(repo, env, "data_load_and_md5", str(repo / "data" / "cifar10.npz"))
    return {k: round(v, 2) for k, v in costs.items()}


def device_info(repo: Path, env: dict[str, str]) -> dict[str, str]:
    return run_probe(repo, env, "device")


def measure(
    repo: Path, env: dict[str, str], name: str, out_dir: Path, processes: Path, profile: bool, with_probe: bool
) -> dict:
    processes.write_text("")
    if profile:
        (out_dir / f"profiles-{name}").mkdir(exist_ok=True)
        env = {**env, "PIPELINE_BENCH_PROFILE": str(out_dir / f"profiles-{name}")}
    start = time.time()
    lines, end = run_repro(repo, env, force=name != "cold", log=out_dir / f"repro-{name}.log")
    time.sleep(1)  # then nothing of the project may still run
    left = leftover_processes(repo)
    stages = stage_breakdown(lines, end, read_processes(processes), repo)
    return {
        "wall": round(end - start, 2),
        "stages": {s: round_all(e) for s, e in stages.items()},
        "processes_left_after_1s": left,
        "probe": probe(repo, env) if with_probe else {},
    }


def leftover_processes(repo: Path) -> list[str]:
    """`pid args` of each process that runs in the copy or names it (`ps` one second after the run)."""
    rows = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    left = []
    for row in rows.splitlines():
        pid = row.split()[0]
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # gone meanwhile, or not ours to read
            cwd = ""
        if int(pid) != os.getpid() and (str(repo) in row or Path(cwd).is_relative_to(repo)):
            left.append(row.strip())
    return left


def round_all(entry: dict) -> dict:
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in entry.items()}


def table(result: dict) -> str:
    runs = list(result["runs"])
    head = ["stage", *(f"{r} s" for r in runs), *(f"training {r} s" for r in runs), *(f"overhead {r} s" for r in runs)]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    stages = list(result["runs"][runs[0]]["stages"])
    for stage in stages:
        cells = [stage]
        for key in ("wall", "train_seconds", "overhead"):
            for r in runs:
                value = result["runs"][r]["stages"].get(stage, {}).get(key)
                cells.append(
                    "" if value is None or (key == "overhead" and stage not in MODEL_OF_STAGE) else f"{value:.1f}"
                )
        rows.append("| " + " | ".join(cells) + " |")
    total = ["**total**", *(f"**{result['runs'][r]['wall']:.1f}**" for r in runs), *([""] * 2 * len(runs))]
    rows.append("| " + " | ".join(total) + " |")
    lines = ["\n".join(rows), ""]
    for r in runs:
        lines += [
            f"Where each stage's seconds go, {r} run (s):",
            "",
            "| stage | " + " | ".join(PARTS) + " |",
            "|---|" + "---:|" * len(PARTS),
        ]
        for stage, entry in result["runs"][r]["stages"].items():
            parts = entry.get("parts", {})
            lines.append(f"| {stage} | " + " | ".join(f"{parts[p]:.2f}" if p in parts else "" for p in PARTS) + " |")
        left = result["runs"][r]["processes_left_after_1s"]
        lines += ["", f"Processes of the project 1 s after the {r} run: {'; '.join(left) if left else 'none'}"]
        probe_cells = ", ".join(f"{k} {v:.2f}" for k, v in result["runs"][r]["probe"].items())
        if probe_cells:
            lines += ["", f"Start-up costs, each in a fresh process after the {r} run (s): {probe_cells}"]
        lines.append("")
    return "\n".join(lines)


def record(result: dict, results: Path) -> None:
    """Merge into results.json: into the newest run if it is of this commit, else as a new newest run."""
    sys.path.insert(0, str(Path(__file__).parent))
    from record import push_run

    entry = {
        "pipeline_wall_seconds": {r: v["wall"] for r, v in result["runs"].items()},
        "pipeline_stage_wall_seconds": {
            r: {s: e["wall"] for s, e in v["stages"].items()} for r, v in result["runs"].items()
        },
        "pipeline_train_seconds": {
            r: {s: e["train_seconds"] for s, e in v["stages"].items() if "train_seconds" in e}
            for r, v in result["runs"].items()
        },
        "pipeline_command": result["command"],
        "pipeline_torch": result["torch"],
        "pipeline_torch_bytecode_cached": result["torch_bytecode_cached"],
        "pipeline_processes_left_after_1s": {r: v["processes_left_after_1s"] for r, v in result["runs"].items()},
    }
    current = json.loads(results.read_text()) if results.exists() else {}
    if current.get("commit") == result["commit"] and current.get("gpu") == result["gpu"]:
        atomic.write_json(results, {**current, **entry})
    else:
        push_run(results, {"gpu": result["gpu"], "date": result["date"], "commit": result["commit"], **entry})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key in the copy (repeatable), as `dvc exp run -S`",
    )
    parser.add_argument(
        "--archive",
        type=Path,
        default=None,
        help="cifar-10-python.tar.gz to use (default: data/cifar-10-python.tar.gz here, if "
        "present; else the stage downloads it)",
    )
    parser.add_argument("--runs", nargs="+", choices=("cold", "warm"), default=["cold", "warm"])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for pipeline.json and the logs (default: a new folder in the temp dir)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the project copy (its path is printed)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run every stage's process under pyinstrument (pip install pyinstrument), one session per process "
        "in --out/profiles-<run>/ (read with `pyinstrument --load FILE`); its overhead inflates the walls, so "
        "don't --record a profiled run",
    )
    parser.add_argument("--no-probe", action="store_true", help="skip the start-up probe after each run")
    parser.add_argument("--record", action="store_true", help="merge the result into --results")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    if args.profile and args.record:
        parser.error("--profile inflates the walls: record an unprofiled run")
    if args.profile and importlib.util.find_spec("pyinstrument") is None:
        parser.error("--profile needs pyinstrument: pip install pyinstrument")
    if args.runs[0] != "cold":
        parser.error("--runs must start with cold: the warm run reuses the cold run's caches")
    archive = args.archive or (ROOT / "data" / "cifar-10-python.tar.gz")
    archive = archive if archive.is_file() else None
    if args.archive and archive is None:
        parser.error(f"--archive {args.archive} is not a file")

    out_dir = args.out or Path(tempfile.mkdtemp(prefix="pipeline-bench-out-"))
    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        repo = make_copy(work, args.set_param, archive)
        processes = work / "processes.txt"
        env = stage_env(work, repo, processes)
        result = {
            "date": dt.date.today().isoformat(),
            "commit": git_commit(ROOT)[:7],
            "command": " ".join(["python", "benchmarks/pipeline.py", *sys.argv[1:]]),
            "runs": {},
        }
        result.update(device_info(repo, env))
        if not result["torch_bytecode_cached"]:
            print(
                "pipeline benchmark: warning: torch has no bytecode cache here, so every process compiles its "
                "modules from source (seconds per stage); pip writes it at install, or run "
                "`python -m compileall -q` over site-packages (PYTHONPYCACHEPREFIX if it is read-only)",
                flush=True,
            )
        for name in args.runs:  # written after each run, so a run cut short keeps the ones before it
            print(f"pipeline benchmark: {name} run in {repo}", flush=True)
            probe_now = not args.no_probe and name == args.runs[-1]
            result["runs"][name] = measure(repo, env, name, out_dir, processes, args.profile, probe_now)
            atomic.write_json(out_dir / "pipeline.json", result)
            report = table(result)
            atomic.write_text(out_dir / "pipeline.md", report + "\n")
        print(report)
        print(f"pipeline benchmark: wrote {out_dir / 'pipeline.json'}")
        if args.record:
            record(result, args.results)
            print(f"pipeline benchmark: recorded in {args.results}")
    finally:
        if args.keep:
            print(f"pipeline benchmark: project copy kept in {work / 'project'}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

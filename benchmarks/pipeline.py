"""Time the whole `dvc repro` cold and warm, per stage, with where each stage's seconds go.

Runs in a throw-away copy of this project (its tracked and untracked, not ignored files, committed to
a fresh git repo), with this interpreter's environment:
- cold: the fresh copy, so nothing in DVC's cache, no MLflow store and an empty torch.compile cache
  (the project's own state/torch_compile; TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR point into
  the copy);
- warm: `dvc repro -f` right after, in the same copy (compile cache, MLflow store and DVC cache filled).
One second after each `dvc repro` returns, it lists any process still running the copy's code (there
should be none: every stage is the process DVC started).

Per stage it reports the wall from `dvc repro`'s own "Running stage" lines, split into DVC, start-up,
training, outputs, publishing and exit (stage_timing.py says how). After the last run it times each
start-up cost in a fresh process (startup_probe.py; --no-probe skips it). --profile runs every stage
under pyinstrument.

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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cifar_pipeline.core import atomic, yaml12
from cifar_pipeline.tracking.tags import git_commit
from stage_timing import MODEL_OF_STAGE, PARTS, read_processes, run_repro, stage_breakdown, stage_env
from startup_probe import device_info, probe

ROOT = Path(__file__).resolve().parents[1]


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

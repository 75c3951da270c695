"""Where each stage of a `dvc repro` spends its seconds.

A `python` wrapper put first on PATH records when each stage's process starts and ends; `run_repro` keeps
the time each output line arrives. From both, `stage_breakdown` splits each stage's wall into: DVC before
the process, the process's start-up (imports, CUDA init, data load, MLflow store, up to "started MLflow
run" in a training stage), training, writing outputs, publishing the model (as the stage prints it),
process exit, and DVC after the process (hashing outputs, caching them, dvc.lock).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from cifar_pipeline.core.paths import STAGES

MODEL_OF_STAGE = {stage: model for model, stage in STAGES.items()}
STAGE_LINE = re.compile(r"^Running stage '(?P<stage>[^']+)':")
STARTED = re.compile(r": (started|resuming) MLflow run")
EPOCH = re.compile(r"^\S+ epoch \d+: ")
PUBLISHED = re.compile(r": logged best model .* in (?P<seconds>[0-9.]+)s$")
PARTS = ("dvc_before", "start_up", "training", "outputs", "publish", "run", "exit", "dvc_after")

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

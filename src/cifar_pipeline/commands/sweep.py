"""A sweep: a grid of params, each point a queued DVC experiment, run by DVC's queue.

    python -m cifar_pipeline.commands.sweep NAME KEY=V1,V2 [KEY=...] [--recipe R] [-j JOBS]

Expands the grid with DVC's own sweep syntax (`dvc exp run --queue -S KEY=V1,V2`: comma lists, range(),
choice()), checks every point against the params schema and that no experiment is named NAME-*, then
queues one experiment per point, named `NAME-<values>` (e.g. `my-lr-lr=0.01-seed=0`), and runs the queue
with `dvc exp run --run-all -j JOBS` (default: one job per GPU, else 1), in the foreground. Each point sets
`sweep.name` and `sweep.keys`, which no stage lists: its runs are tagged `sweep` and `sweep.config` in
MLflow (tracking/tags.py). `--recipe R` starts every point from recipes/R.yaml. Then:
`python -m cifar_pipeline.commands.report NAME`.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cifar_pipeline.commands import recipes
from cifar_pipeline.core import cli, paths, yaml12
from cifar_pipeline.core.config import MODELS, SWEEP_NAME, parse_params
from cifar_pipeline.core.errors import ParamsError
from cifar_pipeline.tracking.tags import flatten

SEED = "seed"
UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")  # what a git ref name (DVC's experiment name) may not hold


@dataclass(frozen=True)
class Point:
    name: str  # the DVC experiment's name
    values: dict[str, object]  # swept key -> this point's value


def grid(assignments: list[str]) -> list[dict[str, object]]:
    """Every point of the grid `KEY=V1,V2 ...`, expanded by DVC's own (Hydra's) sweep parser."""
    if not assignments:
        raise ParamsError("the grid is empty: give at least one KEY=V1,V2, e.g. cnn.optimizer.lr=0.01,0.003 seed=0,1,2")
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import HydraException

    for item in assignments:
        if "=" not in item or not item.split("=", 1)[1]:
            raise ParamsError(f"{item!r} gives no values: write KEY=V1,V2 (e.g. seed=0,1,2)")
    try:
        sweeps = get_hydra_sweeps({"params.yaml": [f"++{item}" for item in assignments]})
    except HydraException as exc:
        raise ParamsError(
            f"the grid {' '.join(assignments)} can't be parsed ({exc}); write KEY=V1,V2 per key"
        ) from None
    points = []
    for sweep in sweeps:
        pairs = (override.removeprefix("++").split("=", 1) for override in sweep["params.yaml"])
        points.append({key: yaml12.load(value) for key, value in pairs})
    if not points:
        raise ParamsError(f"the grid {' '.join(assignments)} has no points: give each key at least one value")
    return points


def nested(flat: dict[str, object]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        section = out
        for part in parents:
            section = section.setdefault(part, {})
        section[leaf] = value
    return out


def labels(keys: list[str]) -> dict[str, str]:
    """A short label per key for experiment names: its last part, or all of it where two would clash."""
    leaves = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves, strict=True)}


def plan(name: str, assignments: list[str], recipe: recipes.Recipe | None, root: Path) -> list[Point]:
    """The sweep's points, each checked against the schema with params.yaml and the recipe under it."""
    if not re.match(SWEEP_NAME, name):
        raise ParamsError(f"sweep name {name!r} must start with a letter and hold only letters, digits, - and _")
    points = grid(assignments)
    base = recipes.merged(yaml12.load((root / paths.PARAMS).read_text()), recipe.changes if recipe else {})
    known = flatten(parse_params(base, str(paths.PARAMS)).model_dump())
    keys = list(points[0])
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ParamsError(
            f"unknown param {', '.join(unknown)}: the sweep's keys must be params.yaml keys such as "
            "cnn.optimizer.lr or seed (docs/experiments.md lists them)"
        )
    short = labels(keys)
    planned = []
    for values in points:
        parse_params(recipes.merged(base, nested(values)), f"{paths.PARAMS} with {values}")
        label = "-".join(f"{short[k]}={UNSAFE.sub('_', str(v))}" for k, v in values.items())
        planned.append(Point(f"{name}-{label}", values))
    if len({p.name for p in planned}) != len(planned):
        raise ParamsError(f"the grid repeats a point: {', '.join(p.name for p in planned)}")
    return planned


def check_unused(name: str, root: Path) -> None:
    """No DVC experiment, finished, queued or failed, is named `name-*` (the sweep's runs would mix with its)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        done = [exp for exps in repo.experiments.ls(all_commits=True).values() for exp, _ in exps]
        queue = repo.experiments.celery_queue
        failed = [done.entry for done in queue.iter_failed()]
        waiting = [entry.name for entry in (*queue.iter_queued(), *queue.iter_active(), *failed)]
    taken = sorted(n for n in (*done, *waiting) if n and n.startswith(f"{name}-"))
    if taken:
        raise ParamsError(
            f"sweep {name!r} exists: experiments {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}; "
            f"pick another name, or remove them with `dvc exp remove` (and `dvc queue remove`)"
        )


def targets(keys: list[str], recipe: recipes.Recipe | None) -> list[str]:
    """Evaluate only the models whose sections the sweep changes; the whole pipeline if it changes none."""
    touched = {key.split(".")[0] for key in keys} | ({recipe.model} if recipe else set())
    return [f"evaluate@{m}" for m in MODELS if m in touched]


def queue(name: str, points: list[Point], recipe: recipes.Recipe | None, root: Path) -> None:
    """One queued experiment per point; `force`: every point trains afresh, none is restored from DVC's
    run cache or the baseline, so each run is tagged with the sweep."""
    from dvc.repo import Repo

    keys = [k for k in points[0].values if k != SEED]
    sweep = ["++sweep.name=" + name, f"++sweep.keys=[{','.join(keys)}]"]
    base = [o for o in recipe.overrides() if o != "-S"] if recipe else []
    with Repo(str(root)) as repo:
        for point in points:
            values = [f"++{k}={recipes.hydra(v)}" for k, v in point.values.items()]
            repo.experiments.run(
                targets(list(point.values), recipe) or None,
                params=[*base, *values, *sweep],
                queue=True,
                name=point.name,
                force=True,
            )


def failed(points: list[Point], root: Path) -> list[str]:
    """The sweep's experiments that DVC's queue reports as failed."""
    from dvc.repo import Repo

    names = {p.name for p in points}
    with Repo(str(root)) as repo:
        return sorted(
            done.entry.name for done in repo.experiments.celery_queue.iter_failed() if done.entry.name in names
        )


def relay(command: list[str]) -> int:
    """Run `command`, its output copied to ours until it exits. Not until its pipe closes: for `dvc exp run
    --run-all`, a process DVC forks for a queue worker keeps the pipe, and can hang on after the queue is
    done (DVC issue #10398)."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        out = proc.stdout.fileno()
        os.set_blocking(out, False)
        with selectors.DefaultSelector() as selector:
            selector.register(out, selectors.EVENT_READ)
            while True:
                exited = proc.poll() is not None
                while chunk := read_some(out):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                if exited or chunk is None:  # None: the pipe closed, nothing more to copy
                    return proc.wait()
                selector.select(timeout=1.0)


def read_some(fd: int) -> bytes | None:
    """What the pipe holds now: b"" when nothing is waiting, None once it is closed."""
    try:
        return os.read(fd, 1 << 16) or None
    except BlockingIOError:
        return b""


def default_jobs() -> int:
    import torch

    return max(1, torch.cuda.device_count())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("grid", nargs="*", metavar="KEY=V1,V2")
    parser.add_argument("--recipe", help="a recipe in recipes/ to start every point from")
    parser.add_argument("-j", "--jobs", type=int, help="experiments at a time (default: one per GPU, else 1)")
    args = parser.parse_args()
    root = Path(".")
    recipe = recipes.load(args.recipe, root) if args.recipe else None
    points = plan(args.name, args.grid, recipe, root)
    check_unused(args.name, root)
    queue(args.name, points, recipe, root)
    jobs = args.jobs or default_jobs()
    print(f"sweep {args.name}: {len(points)} experiments queued; running them, {jobs} at a time", flush=True)
    code = relay(["dvc", "exp", "run", "--run-all", "--jobs", str(jobs)])
    broken = failed(points, root)
    if broken:
        print(f"sweep {args.name}: {len(broken)} experiments failed; see `dvc queue logs NAME`: {', '.join(broken)}")
    print(f"report: python -m cifar_pipeline.commands.report {args.name}")
    return code or (1 if broken else 0)


if __name__ == "__main__":
    cli.run(main)

"""Measure named recipes: each recipe x seed is one DVC experiment, run with the command
`python -m cifar_pipeline.commands.recipes` runs (`dvc exp run --temp -n <recipe>-s<seed>-<stamp> ...`), so the
workspace's params.yaml is never edited. Each run's test accuracy is that of its best-validation
checkpoint (what `evaluate` scores); per model, the recipe with the best mean validation accuracy is
marked `selected_on_validation`.

Usage, from the project root of a git checkout (CUDA or not):
    python benchmarks/recipes.py --recipes cnn-fast cnn-best --seeds 0 1 2 --out DIR [-S key=value ...]
-S options go to every `dvc exp run` after the recipe's own (so they win), e.g.
`-S data.md5=<md5 of your copy> -S resnet18.weights=none`.
Writes DIR/runs.jsonl (a line per run as it ends) and DIR/recipes.json (per recipe: mean and sample std
of test accuracy, of the stage's training seconds (all epochs, data on the device; with and without the
first step, which holds the warm-up, compile and CUDA-graph capture), the first step and the stage's
wall seconds, n; and the date, GPU, torch version and commit), then prints them as a table.
Exits 1 if any run failed (its line says how); the others are still summarised.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from cifar_pipeline.commands.recipes import Recipe, load
from cifar_pipeline.core import atomic, cli, paths


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def experiment_ref(name: str) -> str:
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps").splitlines()
    found = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    if len(found) != 1:
        raise RuntimeError(f"expected one experiment ref named {name}, found {found}")
    return found[0]


def read_json_at(experiment: str, path: Path) -> dict:
    """A result file as the experiment left it: DVC caches the stages' outputs, so it is read through DVC."""
    import dvc.api

    return json.loads(dvc.api.read(path.as_posix(), rev=experiment))


def run_one(recipe: Recipe, seed: int, stamp: str, extra: list[str]) -> dict:
    named = dataclasses.replace(recipe, name=f"{recipe.name}-s{seed}-{stamp}")
    command = named.command(["-S", f"seed={seed}", *extra])
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    code = subprocess.run(command).returncode
    row = {
        "recipe": recipe.name,
        "model": recipe.model,
        "seed": seed,
        "experiment": named.name,
        "wall_seconds": round(time.perf_counter() - start, 2),
        "command": command,
    }
    if code != 0:
        return {**row, "error": f"dvc exp run exited {code}"}
    ref = experiment_ref(named.name)
    train = read_json_at(named.name, paths.train_summary(recipe.model))
    test = read_json_at(named.name, paths.eval_dir(recipe.model) / "metrics.json")
    first_step = train["first_step_seconds"] or 0.0  # None: no full-size batch ran
    return {
        **row,
        "experiment_rev": git("rev-parse", ref),
        "test_accuracy": test["accuracy"],
        "test_macro_auc": test.get("macro_auc"),
        "best_val_acc": train["best_val_acc"],
        "best_epoch": train["best_epoch"],
        "epochs": train["epochs"],
        "train_seconds": train["train_seconds"],
        "first_step_seconds": first_step,
        "train_seconds_after_first_step": train["train_seconds"] - first_step,
        "images_per_second": train["images_per_second"],
    }


def summarise(rows: list[dict]) -> dict:
    done = [r for r in rows if "error" not in r]

    def stats(key: str, recipe: str) -> tuple[float, float | None, int]:
        values = [r[key] for r in done if r["recipe"] == recipe]
        std = statistics.stdev(values) if len(values) > 1 else None
        return statistics.fmean(values), std, len(values)

    out = {}
    for recipe in dict.fromkeys(r["recipe"] for r in done):
        acc, acc_std, n = stats("test_accuracy", recipe)
        out[recipe] = {
            "model": next(r["model"] for r in done if r["recipe"] == recipe),
            "test_accuracy_mean": acc,
            "test_accuracy_std": acc_std,
            "n": n,
            **{
                f"{key}{suffix}": value
                for key in ("train_seconds", "train_seconds_after_first_step", "first_step_seconds", "wall_seconds")
                for suffix, value in zip(("", "_std"), stats(key, recipe)[:2], strict=True)
            },
            "best_val_acc_mean": stats("best_val_acc", recipe)[0],
            "seeds": [r["seed"] for r in done if r["recipe"] == recipe],
        }
    for model in {s["model"] for s in out.values()}:
        best = max((name for name in out if out[name]["model"] == model), key=lambda k: out[k]["best_val_acc_mean"])
        for name, s in out.items():
            if s["model"] == model:
                s["selected_on_validation"] = name == best
    return out


def table(summary: dict) -> str:
    """The summary as a fixed-width table: mean ± sample sd over the seeds."""

    def pm(mean: float, std: float | None, scale: float = 1.0, digits: int = 2) -> str:
        return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std is not None else "")

    head = (
        f"{'recipe':<24} {'n':>2}  {'test acc %':>14}  {'train s':>13}  {'w/o 1st step':>13}  "
        f"{'1st step s':>12}  {'stage wall s':>13}"
    )
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        lines.append(
            f"{name:<24} {s['n']:>2}  {pm(s['test_accuracy_mean'], s['test_accuracy_std'], 100):>14}  "
            f"{pm(s['train_seconds'], s['train_seconds_std']):>13}  "
            f"{pm(s['train_seconds_after_first_step'], s['train_seconds_after_first_step_std']):>13}  "
            f"{pm(s['first_step_seconds'], s['first_step_seconds_std']):>12}  "
            f"{pm(s['wall_seconds'], s['wall_seconds_std'], digits=1):>13}"
        )
    return "\n".join(lines)


def environment(argv: list[str], extra: list[str]) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "machine": platform.node(),
        "torch": torch.__version__,
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "command": " ".join(["python", *argv]),
        "extra_overrides": extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    recipes = [load(name) for name in args.recipes]  # every recipe checked before the first run
    extra = [a for o in args.overrides for a in ("-S", o)]
    env = environment(sys.argv, args.overrides)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for recipe in recipes:
        for seed in args.seeds:
            rows.append(run_one(recipe, seed, stamp, extra))
            atomic.write_text(args.out / "runs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            atomic.write_json(args.out / "recipes.json", {"environment": env, "recipes": summarise(rows)})
    print(table(summarise(rows)))
    print(f"details: {args.out / 'recipes.json'}, {args.out / 'runs.jsonl'}")
    failed = [r["experiment"] for r in rows if "error" in r]
    if failed:
        print(f"failed runs: {', '.join(failed)} (see {args.out / 'runs.jsonl'})", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)

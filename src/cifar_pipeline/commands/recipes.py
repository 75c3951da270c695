"""Named recipes: recipes/<name>.yaml holds params.yaml keys to change; running one is one DVC experiment.

    python -m cifar_pipeline.commands.recipes NAME [dvc exp run options...]

runs `dvc exp run --temp -n NAME -S ++key=value ... evaluate@MODEL`: the recipe's keys set on top of the
workspace's params.yaml (checked against the schema first), in a temporary copy, so the workspace and
its params.yaml stay as they are and one recipe never inherits another's settings; only its model trains.
`++` adds keys that params.yaml leaves at their schema default. Options after NAME go to `dvc exp run` (e.g.
`-S seed=1`, `--queue`, `-f` to overwrite an experiment of the same name); `--print` shows the command instead.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cifar_pipeline.core import cli, paths, yaml12
from cifar_pipeline.core.config import MODELS, parse_params
from cifar_pipeline.core.errors import ParamsError
from cifar_pipeline.tracking.tags import flatten

RECIPES_DIR = Path("recipes")


@dataclass(frozen=True)
class Recipe:
    name: str
    model: str  # the one model section it changes
    changes: dict  # nested params.yaml keys

    def overrides(self) -> list[str]:
        """The changes as `dvc exp run` options: -S ++dotted.key=value (values in Hydra's syntax)."""
        return [arg for key, value in flatten(self.changes).items() for arg in ("-S", f"++{key}={hydra(value)}")]

    def command(self, extra: list[str] = ()) -> list[str]:
        return ["dvc", "exp", "run", "--temp", "-n", self.name, *self.overrides(), *extra, f"evaluate@{self.model}"]


def hydra(value: object) -> str:
    """A YAML value in Hydra's override grammar (what `dvc exp run -S` parses)."""
    if isinstance(value, list):
        return "[" + ",".join(hydra(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, (bool, type(None))) else str(value)


def available(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / RECIPES_DIR).glob("*.yaml"))


def merged(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def load(name: str, root: Path = Path(".")) -> Recipe:
    """The recipe `name`, checked: it changes exactly one model, and params.yaml with its changes is valid."""
    path = root / RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"no recipe {name!r}: {path} not found; recipes here: {', '.join(available(root)) or 'none'}")
    changes = yaml12.load(path.read_text())
    models = [m for m in MODELS if m in (changes or {})] if isinstance(changes, dict) else []
    if len(models) != 1:
        raise ParamsError(f"{path} must change exactly one of the sections {', '.join(MODELS)}; found {models}")
    base = yaml12.load((root / paths.PARAMS).read_text())
    parse_params(merged(base, changes), f"{paths.PARAMS} with {path}")
    return Recipe(name, models[0], changes)


def main() -> int:
    """Print (and unless --print, run) the recipe's command; returns its exit status."""
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip(), "\n\nrecipes:", ", ".join(available(Path("."))))
        return 0
    name, extra = args[0], args[1:]
    show = "--print" in extra
    recipe = load(name)
    command = recipe.command([a for a in extra if a != "--print"])
    print(" ".join(command), flush=True)
    return 0 if show else subprocess.run(command).returncode


if __name__ == "__main__":
    cli.run(main)

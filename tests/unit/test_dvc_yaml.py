"""dvc.yaml against the code: each stage's deps (files or package folders) cover every project module its
command imports, and no stage depends on params that can't change its result."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from helpers.project import ROOT

PACKAGE = "cifar_pipeline"
SRC = ROOT / "src"


def stages() -> dict[str, dict]:
    """Every stage of dvc.yaml, `foreach` expanded."""
    out = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        if "foreach" not in stage:
            out[name] = stage
            continue
        for item in stage["foreach"]:
            text = yaml.safe_dump(stage["do"]).replace("${item}", item)
            out[f"{name}@{item}"] = yaml.safe_load(text)
    return out


def module_path(dotted: str) -> Path | None:
    base = SRC.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports(path: Path) -> set[str]:
    """The project modules `path` imports anywhere in its body (function-level imports included)."""
    dotted = ".".join(path.relative_to(SRC).with_suffix("").parts)
    package = dotted.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + (node.module.split(".") if node.module else []))
            if target.split(".")[0] != PACKAGE:
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if module_path(f"{target}.{a.name}"))
    return found


def closure(module: str) -> set[Path]:
    todo, seen = [module], set()
    while todo:
        path = module_path(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imports(path))
    return {p for p in seen if p.name != "__init__.py"}


STAGES = stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_modules_its_command_imports(name):
    cmd = STAGES[name]["cmd"].split()
    assert cmd[:3] == ["python", "-m", cmd[2]] and cmd[2].startswith(f"{PACKAGE}.stages."), cmd
    needed = {p.relative_to(ROOT).as_posix() for p in closure(cmd[2])}
    assert len(needed) > 3  # the import walk found the stage's modules
    deps = STAGES[name]["deps"]
    missing = {m for m in needed if not any(m == d or m.startswith(f"{d}/") for d in deps)}
    assert not missing, f"{name}: add to its deps in dvc.yaml: {sorted(missing)}"
    unused = [d for d in deps if d.startswith("src/") and not any(m == d or m.startswith(f"{d}/") for m in needed)]
    assert not unused, f"{name} reruns on code it never imports: {unused}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_params_leave_out_what_cannot_change_results(name):
    keys = [k if isinstance(k, str) else next(iter(k)) for k in STAGES[name].get("params", [])]
    no_effect = [k for k in keys if k in ("data", "mlflow", "progress") or k.startswith("mlflow.")]
    assert not no_effect, f"{name} reruns on changes that can't change its result: {no_effect}"

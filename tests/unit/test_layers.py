"""The package's folders are layers: a module imports only from its own folder and the layers below it, so the
training engine never reaches for MLflow or DVC and nothing imports upward."""

from __future__ import annotations

import ast

import pytest

from helpers.project import ROOT

PACKAGE = ROOT / "src" / "cifar_pipeline"
# Lowest first; folders in one tuple are side by side and don't import each other.
LAYERS = [("core",), ("engine",), ("serving",), ("tracking",), ("training", "reporting"), ("stages", "commands")]
RANK = {folder: rank for rank, folders in enumerate(LAYERS) for folder in folders}
OUTSIDE_LIBRARIES = {"engine": ("mlflow", "dvc")}  # what a folder must not import at all


def imported(path) -> set[str]:
    """Every absolute module name that `path` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_every_folder_of_the_package_has_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(RANK)
    assert not [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"], "modules belong in a folder"


@pytest.mark.parametrize("folder", sorted(RANK))
def test_a_folder_imports_only_from_itself_and_the_layers_below(folder):
    wrong = []
    for path in sorted((PACKAGE / folder).glob("*.py")):
        for name in imported(path):
            parts = name.split(".")
            if parts[0] in OUTSIDE_LIBRARIES.get(folder, ()):
                wrong.append(f"{path.name} imports {name}")
            upward = len(parts) > 1 and parts[1] != folder and (parts[1] not in RANK or RANK[parts[1]] >= RANK[folder])
            if parts[0] == "cifar_pipeline" and upward:
                wrong.append(f"{path.name} imports {name}")
    assert not wrong, f"{folder}/ reaches up or sideways: {wrong}"

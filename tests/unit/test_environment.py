"""Importing the package changes nothing in the process: what an entry point changes (the compile cache's
folder, the GPU it claims) happens only when it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from cifar_pipeline.core import atomic
from helpers.project import ROOT

# In a fresh interpreter: import what the package's modules import at their top level, note the process
# state, import every module of the package, and report what changed. serving/pyfunc.py is left out: MLflow
# runs it to build the logged model, and registering that model on import is its one job.
PROBE = r"""
import ast, importlib, json, os, pathlib, pkgutil, sys
import cifar_pipeline

package = pathlib.Path(cifar_pipeline.__file__).parent
modules = [m.name for m in pkgutil.walk_packages([str(package)], "cifar_pipeline.")
           if m.name != "cifar_pipeline.serving.pyfunc"]
for name in modules:
    path = package.joinpath(*name.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for node in ast.parse(path.read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for dotted in names:
            if not dotted.startswith("cifar_pipeline"):
                importlib.import_module(dotted)

def umask():
    mask = os.umask(0o022)  # this probe is single-threaded: reading the umask by setting it is safe here
    os.umask(mask)
    return mask

def state():
    return {"umask": umask(), "environ": dict(os.environ),
            "blocked": sorted(k for k, v in sys.modules.items() if v is None),
            "lightning": sorted(k for k in sys.modules if "lightning" in k)}

before = state()
for name in modules:
    importlib.import_module(name)
after = state()
print(json.dumps({"modules": len(modules), "changed": {k: [before[k], after[k]] for k in before
                                                        if before[k] != after[k]}}))
"""


def test_importing_the_package_changes_no_process_state():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    report = json.loads(out.splitlines()[-1])
    assert report["modules"] > 20  # the walk found the package
    assert report["changed"] == {}


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    previous = os.umask(0o027)
    try:
        target = atomic.write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o640

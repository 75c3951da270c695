"""Start-up costs of a stage, each timed in a fresh process of this interpreter: the interpreter's start,
`import` of torch, torchvision, mlflow and matplotlib, CUDA's initialisation, opening the MLflow store,
and loading and hashing the prepared data; and which GPU and torch ran them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

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

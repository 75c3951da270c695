"""The stages' start-up and exit shortcuts keep what they replace: the same digest, MLflow's version
check of the logged model's requirements, and no compile workers left for the exit to wait on."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from cifar_pipeline.core.data import in_background, md5sum
from cifar_pipeline.environment import release_compile_workers
from cifar_pipeline.tracking.registry import REQUIREMENTS


def test_background_md5_is_the_md5(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 20_000)
    assert in_background(md5sum, path)() == md5sum(path)


def test_background_md5_of_a_missing_file_raises_when_asked(tmp_path):
    digest = in_background(md5sum, tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        digest()


# In a fresh interpreter (the module map is built once per process): MLflow's requirement check with the
# map that registry.log_model gives it.
REQUIREMENTS_PROBE = r"""
import json, logging
import torch
from mlflow.utils import requirements_utils
from cifar_pipeline.tracking.registry import skip_installed_packages_scan

warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger(requirements_utils.__name__).addHandler(handler)
skip_installed_packages_scan()
requirements_utils.warn_dependency_requirement_mismatches(
    ["numpy==0.0.1", f"torch=={torch.__version__.split('+')[0]}", "pyyaml>=1"]
)
print(json.dumps({"map": requirements_utils._MODULES_TO_PACKAGES, "warnings": warnings}))
"""


def test_requirement_check_still_compares_versions_without_the_package_scan():
    out = subprocess.run([sys.executable, "-c", REQUIREMENTS_PROBE], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["map"] == {module: [package] for package, module in REQUIREMENTS.items()}
    [warning] = result["warnings"]
    assert "numpy" in warning and "0.0.1" in warning
    assert "torch" not in warning and "pyyaml" not in warning


def test_released_compile_workers_are_gone_before_exit():
    from torch._inductor import async_compile

    async_compile.maybe_warm_pool()  # what the first torch.compile on a GPU does
    if not async_compile._pool_set:
        pytest.skip("torch starts no compile worker pool here (one core, or no triton)")
    sidecars = [pool.process for pool in async_compile._pool_set]

    release_compile_workers()
    [shutdown] = [t for t in threading.enumerate() if t.name == "compile-workers-shutdown"]
    shutdown.join(timeout=300)

    assert not shutdown.is_alive()
    assert [p.poll() is not None for p in sidecars] == [True] * len(sidecars)
    assert not async_compile._pool_set

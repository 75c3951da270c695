"""The stages' start-up shortcuts keep what they replace: the same digest from a background thread, and
MLflow's version check of the logged model's requirements without its scan of every installed package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cifar_pipeline.core.data import in_background, md5sum
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

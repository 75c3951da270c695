"""Where each stage reads and writes, relative to the project root (the stage's working dir)."""

import json
import os
import tempfile
from pathlib import Path

from cifar_pipeline.core.errors import DataError, OutputError

PARAMS = Path("params.yaml")
DATA = Path("data/cifar10.npz")
MODELS = Path("models")
REPORTS = Path("reports")
METRICS = REPORTS / "metrics.json"  # the one file in dvc.yaml's `metrics:`: each model's test accuracy
RESUME_DIR = Path("state/resume")  # under the project root, never a DVC output
COMPILE_CACHE_DIR = Path("state/torch_compile")  # torch.compile's on-disk cache, shared by all runs
GPU_LOCK_DIR = Path("state/gpu_locks")  # one lock per GPU index, held by the process using it

DVC_EXPS_DIR = Path(".dvc") / "tmp" / "exps"
STAGES = {"cnn": "train_cnn", "resnet34": "train_resnet34", "resnet18": "finetune_resnet18"}


def model_dir(name: str) -> Path:
    return MODELS / name


def run_info(name: str) -> Path:
    return model_dir(name) / "mlflow_run.json"


def train_summary(name: str) -> Path:
    return REPORTS / "train" / f"{name}.json"


def history(name: str) -> Path:
    return REPORTS / "history" / f"{name}.csv"


def eval_dir(name: str) -> Path:
    return REPORTS / "eval" / name


def project_root(cwd: Path | None = None) -> Path:
    """The repo root, also from inside a `dvc exp run --temp`/queue copy under <root>/.dvc/tmp/exps/."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    marker = DVC_EXPS_DIR.parts
    for i in range(len(parts) - len(marker)):
        if parts[i : i + len(marker)] == marker:
            return Path(*parts[:i])
    return cwd


def read_json(path: Path, producer: str, *keys: str) -> dict:
    """A JSON object an earlier stage wrote, holding keys; a missing or broken file names the stage to rerun."""
    rebuild = f"run `dvc repro -f {producer}` to rebuild it"
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro {producer}` first")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc}); {rebuild}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; {rebuild}")
    return obj


def can_create_files_in(folder: Path) -> bool:
    """Tried, not inferred from mode bits: root passes those, and /proc or a read-only mount can still refuse."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_writable(*targets: Path) -> None:
    """Fail before any work if a stage could not create its outputs at targets (files or folders)."""
    for target in targets:
        folder = target
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(f"{folder} is a file, but {target} has to be written inside it: move {folder} away")
        if not can_create_files_in(folder):
            raise OutputError(
                f"{folder.resolve()} is not writable, and {target} has to be written there: "
                f"make it writable (chmod u+w {folder}) and rerun"
            )

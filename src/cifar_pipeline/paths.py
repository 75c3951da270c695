"""Where each stage reads and writes, relative to the project root (the stage's working dir)."""

from pathlib import Path

PARAMS = Path("params.yaml")
DATA = Path("data/cifar10.npz")
MODELS = Path("models")
REPORTS = Path("reports")
METRICS = REPORTS / "metrics.json"  # the one file in dvc.yaml's `metrics:`: each model's test accuracy
RESUME_DIR = Path("state/resume")  # under the project root, never a DVC output
COMPILE_CACHE_DIR = Path("state/torch_compile")  # torch.compile's on-disk cache, shared by all runs

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

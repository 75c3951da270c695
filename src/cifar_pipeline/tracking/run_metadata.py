"""What a run shows in MLflow: its name, tags, params that line up across models, dataset and metric names."""

from __future__ import annotations

import json
import os
import platform

from cifar_pipeline.core.config import Params, RuntimeParams
from cifar_pipeline.tracking.connection import retry_locked
from cifar_pipeline.tracking.tags import flatten, git_commit

DATASET_NAME = "cifar10"
SPLIT_TAG = "validation_split"  # which images validated the run: `champion` compares runs with equal values only


def epoch_metric(column: str) -> str:
    """A history column's MLflow name: `val_*` under `Val/`, the rest under `Train/`. MLflow's UI groups
    charts by the part before "/" and orders the groups by code point: capitalised, the per-epoch curves
    come before the single values (summary/, test/, test_per_class/)."""
    if column.startswith("val_"):
        return "Val/" + column.removeprefix("val_")
    return "Train/" + column.removeprefix("train_")


def pipeline_label() -> str:
    """The DVC experiment's name inside `dvc exp run`, else the short git commit."""
    return os.environ.get("DVC_EXP_NAME") or git_commit()[:7]


def run_name(prefix: str) -> str:
    return f"{prefix}-{pipeline_label()}"


def with_exp(names: str | None, exp: str) -> str:
    """The space-separated `dvc_exps` tag with `exp` added once."""
    listed = (names or "").split()
    return " ".join(listed if exp in listed else [*listed, exp])


def model_description(name: str, stage: str) -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    where = f"DVC experiment `{exp}` at commit `{git_commit()[:7]}`" if exp else f"commit `{git_commit()[:7]}`"
    return (
        f"**{name}**, trained by the DVC stage `{stage}` ({where}). Curves: `Train/`, `Val/` per epoch; "
        f"`test/` comes from `evaluate@{name}` on the test split and is linked to the logged model."
    )


def resolved_runtime(runtime: RuntimeParams, settings) -> dict[str, object]:
    """What really ran: the device picked for `auto`, its name, torch's version and the switches in effect."""
    import torch

    device = settings.device
    cuda = device.type == "cuda"
    resolved = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else f"{platform.machine()} x{os.cpu_count()}",
        "torch": torch.__version__,
        "bf16": settings.bf16,
        "channels_last": settings.channels_last,
        "cuda_graphs": settings.cuda_graphs,
        "compile": settings.compile,
        "deterministic": runtime.deterministic,
        "eval_batch_size": settings.eval_batch_size,
        # several ranks: batch sizes and lrs are the global ones, each rank trains on batch_size / world_size
        "world_size": settings.ranks.world_size if settings.ranks else 1,
        "backend": settings.ranks.backend if settings.ranks else "none",
        "sync_bn": bool(settings.ranks) and runtime.sync_bn,
    }
    if cuda:
        resolved["cudnn_benchmark"] = runtime.cudnn_benchmark and not runtime.deterministic
    return resolved


SCHEDULER_KEYS = {
    "step_size": ("step",),
    "gamma": ("step",),
    "pct_start": ("onecycle", "linear"),
    "div_factor": ("onecycle",),
    "final_div_factor": ("onecycle",),
    "warmup_epochs": ("warmup_cosine",),
    "start_factor": ("linear",),
    "end_factor": ("linear",),
}


def model_params(params: Params, name: str) -> dict[str, object]:
    """The model section under names common to all models, without settings that have no effect."""
    cfg = params.model(name).model_dump()
    if cfg["optimizer"]["name"] != "sgd":
        del cfg["optimizer"]["momentum"], cfg["optimizer"]["nesterov"]
    scheduler = cfg["scheduler"]
    for key, used_by in SCHEDULER_KEYS.items():
        if scheduler["name"] not in used_by:
            del scheduler[key]
    if cfg.get("arch") == "seed":
        del cfg["wide"]
    if not cfg["lookahead"]["every"]:
        del cfg["lookahead"]["decay"]
    if name == "resnet18":
        del cfg["weights" if cfg["weights_path"] else "weights_path"]
    return {k: v for k, v in flatten(cfg).items() if v is not None}  # an unset option has no effect


def run_params(params: Params, name: str, settings, counts: dict[str, int]) -> dict[str, object]:
    data = params.data
    return {
        "model": name,
        **model_params(params, name),
        "seed": params.seed,
        **flatten(
            {"data": {"val_size": data.val_size, "train_limit": data.train_limit, "test_limit": data.test_limit}}
        ),
        **flatten({"runtime": resolved_runtime(params.runtime, settings)}),
        **counts,
    }


def validation_split(params: Params, digest: str) -> str:
    """The validation split's identity: it is drawn from the prepared data (digest) by data.val_size and seed."""
    return f"data {digest[:8]}, data.val_size {params.data.val_size}, seed {params.seed}"


def dataset(params: Params, arrays, digest: str):
    """The prepared data as an MLflow dataset: digest = md5 of data/cifar10.npz, profile = split sizes."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.entities import Dataset

    val = params.data.val_size
    sizes = {"train": len(arrays.train_y) - val, "val": val, "test": len(arrays.test_y)}
    source = HTTPDatasetSource(params.data.url)
    return Dataset(
        name=DATASET_NAME, digest=digest, source_type="http", source=source.to_json(), profile=json.dumps(sizes)
    )


def link_model_runs(tracker, runs: dict[str, dict]) -> str:
    """Add this DVC experiment to each model run's `dvc_exps` tag (runs reused from an earlier experiment
    included); returns the comparison run's description, one link per model run."""
    exp = os.environ.get("DVC_EXP_NAME")
    links = []
    for name, info in runs.items():
        run = retry_locked(lambda run_id=info["run_id"]: tracker.client.get_run(run_id))
        if exp:
            tracker.set_tags({"dvc_exps": with_exp(run.data.tags.get("dvc_exps"), exp)}, run_id=info["run_id"])
        links.append(f"- {name}: [{run.info.run_name}](#/experiments/{info['experiment_id']}/runs/{info['run_id']})")
    return (
        "Comparison of the three model runs (in the artifacts: the table, `comparison.md`, and their confusion "
        "matrices side by side, `confusion_matrices.png`):\n\n" + "\n".join(links)
    )

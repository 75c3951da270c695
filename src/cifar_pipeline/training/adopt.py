"""A training result that was published but never recorded by DVC: the stage ended, and DVC was stopped
before it wrote dvc.lock. The next run with the same resume key (params, data digest, device), in the same
DVC experiment (or both outside one), adopts that MLflow run instead of training again: it restores the
outputs from the run and reuses its logged model and registered version."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from cifar_pipeline.core import atomic, paths, yaml12
from cifar_pipeline.core.data import md5sum
from cifar_pipeline.tracking import registry
from cifar_pipeline.tracking.connection import retry_locked
from cifar_pipeline.tracking.store import Tracker

LOCK = Path("dvc.lock")  # in the folder DVC runs the stage in, as every path of core/paths.py


def record_path(resume_file: Path) -> Path:
    return resume_file.with_suffix(".published.json")


def remember(resume_file: Path, name: str, summary: dict) -> None:
    """After the run ended FINISHED: what adopt() needs to restore the outputs DVC may not record."""
    atomic.write_json(
        record_path(resume_file),
        {
            "dvc_exp": os.environ.get("DVC_EXP_NAME"),
            "summary": summary,
            "summary_md5": md5sum(paths.train_summary(name)),
            "run_info": json.loads(paths.run_info(name).read_text()),
        },
    )


def recorded_by_dvc(stage: str, out: Path, md5: str) -> bool:
    """Whether dvc.lock records `out` of `stage` with this md5; DVC writes it after the stage has exited."""
    try:
        outs = yaml12.load(LOCK.read_text())["stages"][stage]["outs"]
    except (OSError, KeyError, TypeError):
        return False
    return any(o.get("path") == str(out) and o.get("md5") == md5 for o in outs)


def adoption_problem(tracker: Tracker, info: dict) -> str | None:
    """Why the recorded run can't be adopted in this store and experiment; None if it can."""
    problem = tracker.resume_problem(info["run_id"])
    if problem:
        return problem
    if retry_locked(lambda: tracker.client.get_run(info["run_id"])).info.status != "FINISHED":
        return f"its MLflow run {info['run_id']} is not FINISHED"
    if "version" in info and not registry.version_exists(tracker.client, info["registered_model"], info["version"]):
        return f"{info['registered_model']} v{info['version']} was deleted from the registry"
    return None


def adopt(tracker: Tracker, name: str, resume_file: Path) -> dict | None:
    """The summary of the adopted run, its outputs restored; None when there is nothing to adopt."""
    record_file = record_path(resume_file)
    try:
        record = json.loads(record_file.read_text())
        info, summary, summary_md5 = record["run_info"], record["summary"], record["summary_md5"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    stage = paths.STAGES[name]
    if record.get("dvc_exp") != os.environ.get("DVC_EXP_NAME"):  # another experiment trains its own run
        return None
    if recorded_by_dvc(stage, paths.train_summary(name), summary_md5):  # a deliberate rerun
        record_file.unlink()
        return None
    problem = adoption_problem(tracker, info)
    if problem:
        warnings.warn(f"{record_file} can't be adopted: {problem}; training again", stacklevel=2)
        record_file.unlink()
        return None
    tracker.attach(info["run_id"], stage)
    model_dir = paths.model_dir(name)
    for artifact, dest in (
        ("checkpoints/best.pt", model_dir / "best.pt"),
        ("checkpoints/last.pt", model_dir / "last.pt"),
        (f"history/{paths.history(name).name}", paths.history(name)),
    ):
        tracker.download_artifact(artifact, dest)
    atomic.write_json(paths.train_summary(name), summary)
    atomic.write_json(paths.run_info(name), info)
    resume_file.unlink(missing_ok=True)
    print(
        f"{stage}: adopted MLflow run {info['run_id']}: an earlier attempt with the same params and data finished "
        "and published it, but was stopped before DVC recorded it in dvc.lock; nothing was retrained",
        flush=True,
    )
    return summary

"""The README's commands, in its order, as a newcomer runs them: a fresh clone, a fresh shell with the venv not
on PATH, the demo's size on the CPU (on the tests' tiny archive, offline, through `DEMO_ARGS` as the README
says). Each succeeds; a changed CNN param reruns only the CNN's stages; queued experiments keep their own
params and names; each table fits 120 columns; params.yaml ends as it was. `make ui` starts a server and is
covered by tests/e2e/test_views.py."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from helpers.processes import run
from helpers.project import EVERY_STAGE, PROJECT_FILES, ROOT, random_resnet18_weights, stages_ran

WIDTH = 120
MODEL_STAGES = {"cnn": {"train_cnn", "evaluate@cnn"}}


def readme_commands() -> list[str]:
    """`make demo`, then the lines of the README's compare block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"After `make demo`.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    return ["make demo", *(line.split("  #")[0].strip() for line in block.splitlines() if line.strip())]


def fresh_clone(tmp_path: Path, archive: Path) -> Path:
    """The project's files committed in a repo, cloned; the archive in place; .venv = the tests' venv."""
    origin = tmp_path / "origin"
    for name in [*PROJECT_FILES, "Makefile", "README.md", "requirements.txt", "pyproject.toml"]:
        (origin / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, origin / name)
    shutil.copytree(ROOT / "src", origin / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, origin)
    run(["git", "clone", "-q", str(origin), "clone"], tmp_path)
    clone = tmp_path / "clone"
    (clone / "data").mkdir()
    shutil.copy(archive, clone / "data" / "cifar-10-python.tar.gz")
    (clone / ".venv").symlink_to(sys.prefix)  # what `make` created: its install stamp is older than the clone
    installed = (clone / ".venv" / "bin" / ".installed").stat().st_mtime
    for name in ("requirements.txt", "pyproject.toml"):
        os.utime(clone / name, (installed - 1, installed - 1))
    return clone


def shell(line: str, cwd: Path, env: dict[str, str]):
    """One README line in a new bash that activates the venv first, as the README says."""
    return run(["bash", "-c", f"source .venv/bin/activate && {line}"], cwd, timeout=600, **env)


def table_lines(line: str, output: str) -> list[str]:
    """The lines of the table a command printed: all of `make show`'s and `dvc metrics diff`'s, and for the
    others the `dvc exp show` table they end with (from its first rule; the stages' own logs come before)."""
    lines = output.splitlines()
    if line.startswith(("make show", "dvc metrics")):
        return lines
    rules = [i for i, text in enumerate(lines) if "─" in text]
    return lines[rules[0] :] if rules else []


@pytest.mark.slow
def test_the_readme_commands_in_order_on_a_cpu(tmp_path, archive, archive_md5):
    commands = readme_commands()
    assert commands[:3] == ["make demo", "make exp N=cnn-lr2e-3 S=cnn.optimizer.lr=0.002", "make show"], commands
    clone = fresh_clone(tmp_path, archive)
    params = (clone / "params.yaml").read_bytes()
    weights = random_resnet18_weights(tmp_path / "resnet18.pth")
    # Offline params, as the README says; then sizes below the demo's, to keep the test within minutes.
    demo_args = (
        f"-S data.md5={archive_md5} -S resnet18.weights_path={weights} -S progress=false "
        "-S data.train_limit=300 -S data.test_limit=100 -S data.val_size=50 -S resnet18.image_size=32"
    )
    # The venv is not on PATH: each line activates it; COLUMNS=1000 lets tables take their natural width.
    env = {"DEMO_ARGS": demo_args, "COLUMNS": "1000", "PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert "dvc" not in (shutil.which("dvc", path=env["PATH"]) or "")

    outputs = {}
    for line in commands:
        if line.startswith("make ui"):
            continue
        result = shell(line, clone, env)
        outputs[line] = result.stdout + result.stderr
        wide = [row for row in table_lines(line, result.stdout) if len(row) > WIDTH]
        assert not wide, f"{line}: table wider than {WIDTH} columns:\n" + "\n".join(wide)

    assert stages_ran(outputs["make demo"]) == EVERY_STAGE
    lr2 = outputs["make exp N=cnn-lr2e-3 S=cnn.optimizer.lr=0.002"]
    for output in (outputs["make demo"], lr2):  # none of the warnings the project caused
        assert "No file hash info found" not in output and "untracked files" not in output, output
    assert stages_ran(lr2) == MODEL_STAGES["cnn"] | {"compare"}, lr2  # the ResNets come from DVC's run cache
    assert "Stage 'train_resnet34' is cached" in lr2
    shown = outputs["make show"]
    assert "cnn.optimizer.lr" in shown and "test_acc.cnn" in shown and "data.md5" not in shown

    plots = (clone / "dvc_plots" / "index.html").read_text()
    for rev in ("cpu-demo", "cnn-lr2e-3"):
        assert re.search(rf'"rev":\s*"{rev}"', plots), rev

    # The queue: each experiment has its name and only its own change, on top of params.yaml.
    table = run(["dvc", "exp", "show", "--csv", "--no-pager"], clone).stdout
    rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(table)) if r["Experiment"]}
    for name, dropout in [("cnn-do3", "0.3"), ("cnn-do7", "0.7")]:
        assert rows[name]["cnn.dropout"] == dropout, rows[name]
        assert rows[name]["cnn.optimizer.lr"] == "0.001", rows[name]  # not cnn-lr2e-3's
        assert rows[name]["test_acc.cnn"], rows[name]
        assert rows[name]["resnet34.optimizer.lr"] == "0.001"
    assert rows["cpu-demo"]["cnn.dropout"] == "0.5"

    assert (clone / "params.yaml").read_bytes() == params
    # Nothing else changed either (.venv is a symlink here, which `.venv/` in .gitignore doesn't match).
    assert run(["git", "status", "--porcelain", "--", ".", ":!.venv"], clone).stdout == ""

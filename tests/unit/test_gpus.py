"""One GPU per process: the choice among several GPUs, with fake device counts (no GPU needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cifar_pipeline.engine import gpus

CLAIM = """
import sys
from pathlib import Path
from cifar_pipeline.engine import gpus
lock_dir, count, claims = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
got, kept = [], []
for _ in range(claims):
    got.append(gpus.claim_free_gpu(count, lock_dir))
    kept.append(gpus._held.popitem())  # the lock stays open; the next claim looks for another GPU
print("got", got, flush=True)
sys.stdin.readline()  # hold the GPUs until the test closes stdin
"""


def holder(lock_dir: Path, count: int, claims: int = 1) -> subprocess.Popen:
    """Another process of the project: claims `claims` GPUs and holds them until its stdin closes."""
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(lock_dir), str(count), str(claims)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen, prefix: str) -> str:
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"process ended without printing {prefix!r}")


def finish(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


@pytest.fixture(autouse=True)
def no_held_gpu():
    yield
    for index in list(gpus._held):
        gpus.release(index)


def test_a_process_keeps_the_gpu_it_claimed(tmp_path):
    assert gpus.claim_free_gpu(4, tmp_path) == 0
    assert gpus.claim_free_gpu(4, tmp_path) == 0


def test_a_gpu_held_by_another_process_is_skipped(tmp_path):
    other = holder(tmp_path, 2)
    assert read_until(other, "got") == "got [0]"
    assert gpus.claim_free_gpu(2, tmp_path) == 1
    finish(other)


def test_all_gpus_taken_waits_for_the_first_freed(tmp_path):
    other = holder(tmp_path, 2, claims=2)
    assert read_until(other, "got") == "got [0, 1]"
    waiting = holder(tmp_path, 2)
    assert read_until(waiting, "waiting").startswith("waiting: all 2 GPUs are taken")
    finish(other)
    assert read_until(waiting, "got") == "got [0]"
    finish(waiting)


def test_a_killed_holder_frees_its_gpu(tmp_path):
    other = holder(tmp_path, 2)
    read_until(other, "got")
    other.kill()
    other.wait(timeout=60)
    assert gpus.claim_free_gpu(2, tmp_path) == 0

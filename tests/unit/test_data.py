"""CIFAR-10 archive: parsing the official layout, every way it can be broken, the download stage, the split."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from cifar_pipeline.core.data import ensure_archive, first_n, load_arrays, read_archive, split_indices, verify_archive
from cifar_pipeline.core.errors import DataError
from helpers.data import CLASSES, members, write_archive
from helpers.processes import stage
from helpers.project import read_params, write_params

PER_BATCH = 20


@pytest.fixture
def batches() -> dict[str, dict]:
    return members(n_train=5 * PER_BATCH, n_test=30, seed=1)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_reads_official_layout(tmp_path, batches):
    data = read_archive(write_archive(tmp_path / "c.tar.gz", batches))
    rows = np.concatenate([batches[f"data_batch_{b}"]["data"] for b in range(1, 6)])

    assert data.train_x.shape == (5 * PER_BATCH, 32, 32, 3) and data.train_x.dtype == np.uint8
    # pixel [i, y, x, c] is row i at c*1024 + y*32 + x: R, G, B planes of 32x32, row-major
    i, y, x, c = np.indices(data.train_x.shape)
    assert np.array_equal(data.train_x, rows[i, c * 1024 + y * 32 + x])
    assert data.train_y.tolist() == [y for b in range(1, 6) for y in batches[f"data_batch_{b}"]["labels"]]
    assert data.train_y.dtype == np.int64

    i, y, x, c = np.indices(data.test_x.shape)
    assert np.array_equal(data.test_x, batches["test_batch"]["data"][i, c * 1024 + y * 32 + x])
    assert data.test_y.tolist() == batches["test_batch"]["labels"]
    assert data.classes == CLASSES


def test_md5_mismatch(tmp_path, batches):
    path = write_archive(tmp_path / "c.tar.gz", batches)
    wrong = "0" * 32
    with pytest.raises(DataError) as err:
        verify_archive(path, wrong)
    message = str(err.value)
    assert md5_of(path) in message and wrong in message
    assert "Delete the file" in message and "data.md5" in message


def test_an_archive_in_place_is_used_as_it_is_and_a_matching_md5_passes(tmp_path, batches):
    path = write_archive(tmp_path / "c.tar.gz", batches)
    assert ensure_archive(path, "http://127.0.0.1:9/unused", "0" * 32) == path  # not downloaded, not checked
    verify_archive(path, md5_of(path))


def test_truncated_archive(tmp_path, batches):
    path = write_archive(tmp_path / "c.tar.gz", batches)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cut_short = ".*not a readable.*Compressed file ended before the end-of-stream marker"
    with pytest.raises(DataError, match=re.escape(str(path)) + cut_short):
        read_archive(path)


def test_not_gzip(tmp_path):
    path = tmp_path / "c.tar.gz"
    path.write_text("<html>Not Found</html>\n" * 20)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*not a readable.*Not a gzipped file"):
        read_archive(path)


def test_missing_batch(tmp_path, batches):
    del batches["data_batch_3"]
    path = write_archive(tmp_path / "c.tar.gz", batches)
    with pytest.raises(DataError, match="no member cifar-10-batches-py/data_batch_3"):
        read_archive(path)


def test_wrong_array_shape(tmp_path, batches):
    batches["data_batch_2"]["data"] = np.zeros((PER_BATCH, 3000), np.uint8)
    path = write_archive(tmp_path / "c.tar.gz", batches)
    with pytest.raises(DataError, match=re.escape(f"data_batch_2 holds data uint8[{PER_BATCH}, 3000]")):
        read_archive(path)


def test_labels_out_of_range(tmp_path, batches):
    batches["test_batch"]["labels"][5] = 10
    path = write_archive(tmp_path / "c.tar.gz", batches)
    with pytest.raises(DataError, match=r"test_batch has labels outside 0\.\.9"):
        read_archive(path)


def test_offline_without_archive(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    md5 = "c58f30108f718f92721af3b95e74349a"
    with pytest.raises(DataError) as err:
        ensure_archive(path, "http://127.0.0.1:9/cifar-10-python.tar.gz", md5, timeout=5)
    assert str(path.resolve()) in str(err.value) and md5 in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the archive nor a temp file


def corrupt(project: Path) -> None:
    """Truncate the project's archive and make params expect it, so the read (not the md5) fails."""
    archive = project / "data" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:1000])
    params = read_params(project)
    params["data"]["md5"] = md5_of(archive)
    write_params(project, params)


def assert_one_line_error(result) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_download_stage_fails_cleanly_on_corrupt_archive(project):
    corrupt(project)
    result = stage("download", cwd=project, check=False)
    assert_one_line_error(result)
    assert "not a readable" in result.stderr
    assert sorted(p.name for p in (project / "data").iterdir()) == ["cifar-10-python.tar.gz"]


def test_download_stage_names_the_md5_when_the_archive_is_both_wrong_and_unreadable(project):
    archive = project / "data" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:1000])  # read on a thread while the md5 is checked
    result = stage("download", cwd=project, check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert f"has md5 {md5_of(archive)}" in result.stderr and "Delete the file" in result.stderr
    assert sorted(p.name for p in (project / "data").iterdir()) == ["cifar-10-python.tar.gz"]


def test_failed_rerun_keeps_previous_arrays(project):
    stage("download", cwd=project)
    npz = project / "data" / "cifar10.npz"
    before = npz.read_bytes()

    corrupt(project)
    assert_one_line_error(stage("download", cwd=project, check=False))
    assert npz.read_bytes() == before


def test_download_stage_applies_limits(project, archive):
    params = read_params(project)
    params["data"].update(train_limit=150, test_limit=20)
    write_params(project, params)
    stage("download", cwd=project)

    full = read_archive(archive)
    data = load_arrays(project / "data" / "cifar10.npz")
    assert np.array_equal(data.train_x, full.train_x[:150]) and np.array_equal(data.train_y, full.train_y[:150])
    assert np.array_equal(data.test_x, full.test_x[:20]) and np.array_equal(data.test_y, full.test_y[:20])
    assert data.classes == CLASSES


def test_first_n():
    x, y = np.arange(10) * 10, np.arange(10)
    assert [a.tolist() for a in first_n(x, y, 3)] == [[0, 10, 20], [0, 1, 2]]
    assert [a.tolist() for a in first_n(x, y, 0)] == [x.tolist(), y.tolist()]  # 0 = keep all


def test_split_is_a_seeded_partition():
    train, val = split_indices(100, 20, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.union1d(train, val), np.arange(100))

    again_train, again_val = split_indices(100, 20, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not np.array_equal(val, split_indices(100, 20, seed=4)[1])


@pytest.mark.parametrize("val_size, left", [(99, 1), (100, 0), (101, 0)])
def test_split_needs_two_training_images(val_size, left):
    with pytest.raises(DataError, match=f"val_size = {val_size} leaves {left} training images out of 100"):
        split_indices(100, val_size, seed=0)

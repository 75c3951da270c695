"""CIFAR-10: fetch the official archive, verify it, and turn its pickle batches into uint8 arrays."""

from __future__ import annotations

import hashlib
import http.client
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from isal import igzip, isal_zlib

from cifar_pipeline.core import atomic
from cifar_pipeline.core.config import MIN_TRAIN_IMAGES
from cifar_pipeline.core.errors import DataError

BATCH_DIR = "cifar-10-batches-py"
TRAIN_MEMBERS = [f"data_batch_{i}" for i in range(1, 6)]
TEST_MEMBER = "test_batch"
META_MEMBER = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)
READ_BUFFER = 4 << 20  # bytes the tar stream inflates at a time (tarfile reads 10 KiB by default)
T = TypeVar("T")


@dataclass(frozen=True)
class Cifar10:
    """Images as (N, 32, 32, 3) uint8 in RGB, labels as (N,) int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def in_background(work: Callable[..., T], *args) -> Callable[[], T]:
    """Start work(*args) on a thread (hashing and inflating release the GIL, so other work goes on
    meanwhile); call the returned function for its result (or its exception)."""
    pool = ThreadPoolExecutor(1, thread_name_prefix=work.__name__)
    future = pool.submit(work, *args)
    pool.shutdown(wait=False)  # the thread ends when the work is done
    return future.result


def ensure_archive(path: Path, url: str, md5: str, timeout: float = 60) -> Path:
    """The archive at path, downloaded from url first if it is not there (not verified yet)."""
    if path.exists() and not path.is_file():
        raise DataError(
            f"data.archive = {path} is a directory, not a file: point data.archive at cifar-10-python.tar.gz itself"
        )
    if not path.exists():
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                atomic.write_with(path, lambda tmp: _copy_stream(response, tmp))
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            raise DataError(
                f"CIFAR-10 archive not found at {path.resolve()} and the download from {url} failed ({exc}).\n"
                f"Offline? Copy cifar-10-python.tar.gz (md5 {md5}) to {path.resolve()}, "
                "or point data.archive in params.yaml at your copy."
            ) from None
    return path


def verify_archive(path: Path, md5: str) -> None:
    actual = md5sum(path)
    if actual != md5:
        raise DataError(
            f"{path} has md5 {actual}, but params.yaml expects data.md5 = {md5}.\n"
            "Delete the file to download it again, or set data.md5 to the md5 of the copy you trust."
        )


def _copy_stream(response, tmp: Path) -> None:
    with open(tmp, "wb") as out:
        shutil.copyfileobj(response, out)


def _unpickle(fh, name: str, archive: Path) -> dict:
    with fh:
        raw = fh.read()  # in one piece: unpickling from the stream reads it in thousands of small pieces
    try:
        batch = pickle.loads(raw, encoding="bytes")
    except Exception as exc:  # any unpickling failure means a broken member
        raise DataError(f"{archive}: {BATCH_DIR}/{name} is not a readable pickle ({exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{archive}: {BATCH_DIR}/{name} holds a {type(batch).__name__}, expected a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _read_members(archive: Path) -> dict[str, dict]:
    """The unpickled batches, read in one streaming pass: a random-access .tar.gz read decompresses the
    archive again on every backward seek. ISA-L inflates it in half the time zlib takes."""
    wanted = {f"{BATCH_DIR}/{name}": name for name in (META_MEMBER, *TRAIN_MEMBERS, TEST_MEMBER)}
    found: dict[str, dict] = {}
    with igzip.open(archive, "rb") as gz, tarfile.open(fileobj=gz, mode="r|", bufsize=READ_BUFFER) as tar:
        for member in tar:
            name = wanted.get(member.name)
            if name is None:
                continue
            fh = tar.extractfile(member)
            if fh is None:
                raise DataError(f"{archive}: {member.name} is not a file")
            found[name] = _unpickle(fh, name, archive)
    for path, name in wanted.items():
        if name not in found:
            raise DataError(f"{archive} has no member {path}: it is not a complete CIFAR-10 archive")
    return found


def _batch_arrays(batch: dict, name: str, archive: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(batch.get("data"))
    labels = np.asarray(batch.get("labels"), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"{archive}: {name} holds data {data.dtype}{list(data.shape)} and {len(labels)} labels; "
            "expected uint8 [N, 3072] (R, G, B planes of 32x32) with N labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{archive}: {name} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def read_archive(archive: Path) -> Cifar10:
    """Parse the official python-pickle layout into arrays; any defect raises DataError."""
    try:
        batches = _read_members(archive)
    except (tarfile.TarError, EOFError, OSError, isal_zlib.error) as exc:
        raise DataError(
            f"{archive} is not a readable cifar-10-python.tar.gz ({type(exc).__name__}: {exc}). "
            "Delete it and download it again."
        ) from None
    names = [*TRAIN_MEMBERS, TEST_MEMBER]
    with ThreadPoolExecutor(len(names)) as pool:  # side by side: numpy's transposing copies release the GIL
        *parts, (test_x, test_y) = pool.map(lambda name: _batch_arrays(batches[name], name, archive), names)
    classes = [c.decode() if isinstance(c, bytes) else c for c in batches[META_MEMBER].get("label_names", [])]
    if len(classes) != 10:
        raise DataError(f"{archive}: batches.meta lists {len(classes)} class names, expected 10")
    return Cifar10(
        train_x=np.concatenate([x for x, _ in parts]),
        train_y=np.concatenate([y for _, y in parts]),
        test_x=test_x,
        test_y=test_y,
        classes=classes,
    )


def first_n(x: np.ndarray, y: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    return (x[:limit], y[:limit]) if limit else (x, y)


def save_arrays(data: Cifar10, path: Path) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                train_x=data.train_x,
                train_y=data.train_y,
                test_x=data.test_x,
                test_y=data.test_y,
                classes=np.array(data.classes),
            )

    atomic.write_with(path, write)


def load_arrays(path: Path) -> Cifar10:
    if not path.is_file():
        raise DataError(f"{path} not found: run `dvc repro download` first")
    rebuild = "run `dvc repro -f download` to rebuild it"
    try:
        with np.load(path) as npz:
            data = Cifar10(npz["train_x"], npz["train_y"], npz["test_x"], npz["test_y"], npz["classes"].tolist())
    except Exception as exc:  # BadZipFile, EOFError, KeyError, ValueError (pickled arrays): all mean "broken"
        reason = f"{type(exc).__name__}: {exc}"
        raise DataError(f"{path} is not a readable prepared-data file ({reason}); {rebuild}") from None
    for name, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE:
            raise DataError(
                f"{path}: {name} images are {x.dtype}{list(x.shape)}, expected uint8 [N, 32, 32, 3]; {rebuild}"
            )
        if (
            y.ndim != 1
            or len(y) != len(x)
            or not np.issubdtype(y.dtype, np.integer)
            or (y.size and (y.min() < 0 or y.max() > 9))
        ):
            raise DataError(
                f"{path}: {name} labels are {y.dtype}{list(y.shape)} for {len(x)} images, expected "
                f"one label in 0..9 per image; {rebuild}"
            )
    if len(data.classes) != 10:
        raise DataError(f"{path} lists {len(data.classes)} class names, expected 10; {rebuild}")
    return data


def split_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split of range(n): (train_idx, val_idx)."""
    if n - val_size < MIN_TRAIN_IMAGES:
        raise DataError(
            f"data.val_size = {val_size} leaves {max(n - val_size, 0)} training images out of {n}, and training "
            f"needs at least {MIN_TRAIN_IMAGES}; lower data.val_size or raise data.train_limit"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[val_size:]), np.sort(order[:val_size])

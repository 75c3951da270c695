"""A tiny, learnable CIFAR-10 look-alike written in the official cifar-10-python.tar.gz layout."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# One well-separated colour per class: the classes survive crop, flip and colour jitter.
PALETTE = np.array(
    [
        [0, 0, 0],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [255, 255, 255],
        [128, 128, 128],
        [255, 128, 0],
    ]
)


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """(n, 3072) uint8 rows in R, G, B planes, and labels."""
    labels = rng.integers(0, 10, n)
    noise = rng.integers(-40, 41, (n, 32, 32, 3))
    images = np.clip(PALETTE[labels][:, None, None, :] * 0.7 + 38 + noise, 0, 255).astype(np.uint8)
    return images.transpose(0, 3, 1, 2).reshape(n, -1), labels.tolist()


def batch(data: np.ndarray, labels: list[int], name: str) -> dict:
    return {
        "batch_label": name,
        "labels": labels,
        "data": data,
        "filenames": [f"img_{i}.png" for i in range(len(labels))],
    }


def members(n_train: int, n_test: int, seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    per_batch = n_train // 5
    out = {"batches.meta": {"num_cases_per_batch": per_batch, "label_names": CLASSES, "num_vis": 3072}}
    for b in range(1, 6):
        out[f"data_batch_{b}"] = batch(*make_images(per_batch, rng), f"training batch {b} of 5")
    out["test_batch"] = batch(*make_images(n_test, rng), "testing batch 1 of 1")
    return out


def write_archive(path: Path, batches: dict[str, dict]) -> Path:
    """Write batches as cifar-10-batches-py/<name> pickles inside a .tar.gz, like the official file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, obj in batches.items():
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return path


def make_archive(path: Path, n_train: int = 500, n_test: int = 200, seed: int = 0) -> Path:
    return write_archive(path, members(n_train, n_test, seed))

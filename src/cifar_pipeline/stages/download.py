"""Stage `download`: fetch and verify cifar-10-python.tar.gz, write data/cifar10.npz."""

from __future__ import annotations

from cifar_pipeline.core import cli, paths
from cifar_pipeline.core.data import (
    Cifar10,
    ensure_archive,
    first_n,
    in_background,
    read_archive,
    save_arrays,
    verify_archive,
)
from cifar_pipeline.core.paths import project_root


def main() -> None:
    params = cli.parse_args(__doc__, per_model=False)[0]
    cfg = params.data

    # Anchored at the project root, so `dvc exp run --temp`/queued copies reuse the one archive.
    archive = ensure_archive(project_root() / cfg.archive, cfg.url, cfg.md5)
    reading = in_background(read_archive, archive)  # while the md5 is checked; nothing is written before
    verify_archive(archive, cfg.md5)
    full = reading()
    data = Cifar10(
        *first_n(full.train_x, full.train_y, cfg.train_limit),
        *first_n(full.test_x, full.test_y, cfg.test_limit),
        full.classes,
    )
    save_arrays(data, paths.DATA)
    print(f"download: {len(data.train_y)} train and {len(data.test_y)} test images -> {paths.DATA}")


if __name__ == "__main__":
    cli.run(main)

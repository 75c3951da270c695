"""Stage `download`: fetch and verify cifar-10-python.tar.gz, write data/cifar10.npz."""

from __future__ import annotations

from .. import cli, paths
from ..data import Cifar10, fetch_archive, first_n, read_archive, save_arrays
from ..paths import project_root


def main() -> None:
    cfg = cli.parse_args(__doc__, per_model=False)[0].data

    # Anchored at the project root, so `dvc exp run --temp`/queued copies reuse the one archive.
    archive = fetch_archive(project_root() / cfg.archive, cfg.url, cfg.md5)
    full = read_archive(archive)
    data = Cifar10(
        *first_n(full.train_x, full.train_y, cfg.train_limit),
        *first_n(full.test_x, full.test_y, cfg.test_limit),
        full.classes,
    )
    save_arrays(data, paths.DATA)
    print(f"download: {len(data.train_y)} train and {len(data.test_y)} test images -> {paths.DATA}")


if __name__ == "__main__":
    cli.run_stage(main)

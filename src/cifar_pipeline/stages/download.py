"""Stage `download`: fetch and verify cifar-10-python.tar.gz, write data/cifar10.npz."""

from __future__ import annotations

from .. import cli, compile_cache, paths
from ..data import Cifar10, ensure_archive, first_n, in_background, read_archive, save_arrays, verify_archive
from ..paths import project_root


def main() -> None:
    params, _, params_file = cli.parse_stage_args(__doc__, per_model=False)
    cfg = params.data

    # Anchored at the project root, so `dvc exp run --temp`/queued copies reuse the one archive.
    archive = ensure_archive(project_root() / cfg.archive, cfg.url, cfg.md5)
    reading = in_background(read_archive, archive)  # while the md5 is checked; nothing is written before
    verify_archive(archive, cfg.md5)
    compile_cache.start_compiling_ahead(params, params_file)  # the training steps, while the pipeline runs
    full = reading()
    data = Cifar10(
        *first_n(full.train_x, full.train_y, cfg.train_limit),
        *first_n(full.test_x, full.test_y, cfg.test_limit),
        full.classes,
    )
    save_arrays(data, paths.DATA)
    print(f"download: {len(data.train_y)} train and {len(data.test_y)} test images -> {paths.DATA}")


if __name__ == "__main__":
    cli.run_stage(main)

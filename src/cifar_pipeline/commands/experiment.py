"""`make demo` and `make exp`: `dvc exp run` with the given options, minus one warning per output that DVC
prints when the experiment's baseline commit has no dvc.lock ("No file hash info found for '…'. It won't be
created."). The project commits no dvc.lock, so every experiment would start with a dozen of them."""

from __future__ import annotations

import logging
import sys

MISSING_HASH = "No file hash info found"
CHECKOUT_LOGGERS = ["dvc_data.index.checkout", "dvc_data.hashfile.checkout"]  # where DVC 3.67 logs it


class NoMissingHashWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(MISSING_HASH)


def main() -> int:
    from dvc.cli import main as dvc

    for name in CHECKOUT_LOGGERS:
        logging.getLogger(name).addFilter(NoMissingHashWarning())
    return dvc(["exp", "run", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())

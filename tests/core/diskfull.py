"""Full-disk helpers for the download and conversion tests (see the ``small_disk`` fixture in conftest.py)."""

import errno
import shutil
from pathlib import Path


def fill(folder: Path, leave: int) -> None:
    """Fill the volume of ``folder`` until ``leave`` bytes are free (a stand-in for another program's files)."""
    free = shutil.disk_usage(folder).free
    try:
        with open(folder / "filler.bin", "ab") as f:
            f.write(b"\0" * max(0, free - leave))
    except OSError as exc:  # the volume counts whole pages, so the last page may already be too much
        if exc.errno != errno.ENOSPC:
            raise


class ENOSPCWriter:
    """File wrapper whose writes fail with ENOSPC once ``budget`` bytes are written (a simulated full disk)."""

    def __init__(self, file, budget: int) -> None:
        self._file, self._budget = file, budget

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if size > self._budget:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget -= size
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

"""Fixtures shared by the core tests."""

import subprocess
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one thread avoids OpenMP oversubscription on the shared test machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def small_disk(tmp_path):
    """Factory ``small_disk(size_bytes) -> folder`` on a tmpfs of that size, unmounted afterwards.

    Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the test is skipped, and the tests that
    simulate ENOSPC with a patched write cover a full disk instead.
    """
    mounted = []

    def make(size: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        try:
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                  capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("there is no mount command here; the simulated ENOSPC tests cover a full disk")
        if proc.returncode != 0:
            pytest.skip(f"mounting a small tmpfs is not permitted here ({proc.stderr.strip()}); the simulated "
                        "ENOSPC tests cover a full disk")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


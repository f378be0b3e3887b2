"""Device selection and the deterministic-kernel scope the fit runs in."""

import os

import pytest
import torch

from core.device import deterministic_kernels, resolve_device
from core.errors import Pixel3DMMError

_VAR = "CUBLAS_WORKSPACE_CONFIG"


@pytest.fixture
def default_mode(monkeypatch):
    """Torch's default (non-deterministic) mode and no cuBLAS setting, whatever an earlier test left."""
    mode = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    monkeypatch.delenv(_VAR, raising=False)
    yield
    torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])


def _mode():
    return torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), os.environ.get(_VAR)


def test_cuda_block_runs_deterministic_and_restores_the_callers_mode(default_mode):
    # The scope only sets torch's flags, so it is checked here without a GPU.
    with deterministic_kernels(torch.device("cuda")):
        assert _mode() == (True, True, ":4096:8")
    assert _mode() == (False, False, None)
    with pytest.raises(KeyError):
        with deterministic_kernels(torch.device("cuda", 0)):
            raise KeyError("a failed fit")
    assert _mode() == (False, False, None)


def test_a_callers_own_settings_survive(default_mode, monkeypatch):
    monkeypatch.setenv(_VAR, ":16:8")
    torch.use_deterministic_algorithms(True)  # strict, not warn-only
    with deterministic_kernels(torch.device("cuda")):
        assert _mode() == (True, True, ":16:8")
    assert _mode() == (True, False, ":16:8")


@pytest.mark.parametrize("device, enabled", [("cpu", True), ("mps", True), ("cuda", False)])
def test_other_devices_and_the_switch_leave_torch_alone(default_mode, device, enabled):
    with deterministic_kernels(torch.device(device), enabled):
        assert _mode() == (False, False, None)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(Pixel3DMMError, match="No usable GPU"):
            resolve_device("gpu")
    with pytest.raises(Pixel3DMMError, match="Unknown device 'warp-drive'"):
        resolve_device("warp-drive")

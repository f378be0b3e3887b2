"""Device and dtype selection: the only module that names a device type.

``resolve_device("auto")`` prefers CUDA, then Apple MPS, then the CPU. Everything else in the core takes its
device and dtype from tensors it is given or from :func:`resolve_device`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .errors import Pixel3DMMError

DEVICE_CHOICES = ("auto", "gpu", "cpu")


def gpu_available() -> bool:
    """True when a CUDA or an Apple MPS device can be used."""
    return torch.cuda.is_available() or _mps_available()


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(preference: str = "auto") -> torch.device:
    """Map a user preference ("auto", "gpu", "cpu", or an explicit torch device string) to a device.

    "gpu" without a usable GPU raises :class:`Pixel3DMMError`; "auto" silently falls back to the CPU.
    """
    pref = (preference or "auto").lower()
    if pref == "cpu":
        return torch.device("cpu")
    if pref in ("auto", "gpu"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        if pref == "gpu":
            raise Pixel3DMMError("No usable GPU was found; choose the CPU or Auto device instead.")
        return torch.device("cpu")
    try:
        return torch.device(pref)
    except RuntimeError as exc:
        raise Pixel3DMMError(f"Unknown device '{preference}'; use auto, gpu or cpu.") from exc


def is_gpu(device: torch.device) -> bool:
    """True for CUDA and MPS devices."""
    return device.type in ("cuda", "mps")


def release_memory(device: torch.device) -> None:
    """Return cached GPU memory to the driver after a reconstruction."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and _mps_available():
        torch.mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` is a GPU out-of-memory error (CUDA or MPS)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


#: cuBLAS products are deterministic on one stream only with a fixed workspace layout; torch refuses (or, with
#: warn_only, warns about) them in deterministic mode unless this variable names one.
_CUBLAS_CONFIG = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextlib.contextmanager
def deterministic_kernels(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Run the block with torch's deterministic kernels when ``device`` is CUDA; restore the caller's settings after.

    On CUDA, ``index_add`` (the gradient of every gather: the rasterizer's, the vertex normals', the losses') and
    ``scatter_add`` sum with float atomics in a varying order, so two runs differ in the last bits and a fit of
    hundreds of steps drifts apart. The CPU kernels the core uses are deterministic already, and torch has no such
    mode for MPS, so other devices run the block unchanged. An op without a deterministic CUDA kernel warns
    (``warn_only``) rather than stopping the fit. The mode is process-wide while the block runs.
    """
    if not enabled or device.type != "cuda":
        yield
        return
    mode = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    name, value = _CUBLAS_CONFIG
    cublas = os.environ.get(name)
    if cublas is None:
        os.environ[name] = value
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(mode[0], warn_only=mode[1])
        if cublas is None:
            os.environ.pop(name, None)


def meta_device() -> torch.device:
    """The shape-only device: build a module there (no memory, no random init), then load weights with assign."""
    return torch.device("meta")

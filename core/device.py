"""Device and dtype selection: the only module that names a device type.

``resolve_device("auto")`` prefers CUDA, then Apple MPS, then the CPU. Everything else in the core takes its
device and dtype from tensors it is given or from :func:`resolve_device`.
"""

from __future__ import annotations

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


def meta_device() -> torch.device:
    """The shape-only device: build a module there (no memory, no random init), then load weights with assign."""
    return torch.device("meta")

"""The add-on's only door into ``core`` (imported lazily, on first use, never at registration).

In the built extension ``core`` is vendored as the subpackage ``pixel3dmm_blender.core``; in the development
checkout it is the top-level package ``core``. Nothing here touches bpy, so the worker thread may call
:func:`run_reconstruction`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

ASSET_KEYS = ("flame", "uv_template", "uv_checkpoint", "normals_checkpoint")
"""The asset keys of ``core.assets`` (the preferences hold one path per key)."""


def _core_module(name: str):
    try:
        from . import core
    except ImportError:
        import core
    return importlib.import_module(f"{core.__name__}.{name}")


@dataclass(frozen=True)
class ReconstructionRequest:
    """Everything the worker needs, gathered on the main thread (no bpy objects inside).

    ``source`` is a photo path or an (H, W, 3) float32 sRGB array in [0, 1], row 0 at the top; ``assets`` maps
    :data:`ASSET_KEYS` to paths (empty when unset); ``cache_dir`` is where the core may keep converted assets
    (None: the core's default).
    """

    source: str | np.ndarray
    assets: dict[str, str]
    quality: str
    device: str
    texture_size: int
    cache_dir: str | None


def asset_report(paths: dict[str, str]):
    """The core's ``AssetReport`` for the preference paths only (no environment or config file)."""
    assets = _core_module("assets")
    return assets.AssetRegistry(paths, use_environment=False).report()


def run_reconstruction(
    request: ReconstructionRequest,
    on_progress: Callable[[str, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
):
    """Run the whole core pipeline; returns its ``Reconstruction`` (fields ``fit``, ``flame``, ``uv``,
    ``texture``, ``used_synthetic``, ``messages``). Raises the core's errors unchanged."""
    pipeline = _core_module("pipeline")
    registry = _core_module("assets").AssetRegistry(request.assets, use_environment=False)
    settings = pipeline.PipelineSettings(
        quality=request.quality,
        device=request.device,
        texture_size=request.texture_size,
        cache_dir=request.cache_dir,
    )
    return pipeline.reconstruct(
        request.source, registry, settings, on_progress=on_progress, should_cancel=should_cancel
    )


def is_cancellation(exc: BaseException) -> bool:
    """True when ``exc`` is the core's "the user cancelled" error."""
    return isinstance(exc, _core_module("errors").FitCancelled)


def error_message(exc: BaseException) -> str:
    """One sentence for the user: the core's own message, or a generic one naming an unexpected error."""
    if isinstance(exc, _core_module("errors").Pixel3DMMError):
        return str(exc)
    return f"Reconstruction failed with an unexpected {type(exc).__name__} ({exc}); please report this as a bug."

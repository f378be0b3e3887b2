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

def _core_module(name: str):
    try:
        from . import core
    except ImportError:
        import core
    return importlib.import_module(f"{core.__name__}.{name}")


@dataclass(frozen=True)
class ReconstructionRequest:
    """Everything the worker needs, gathered on the main thread (no bpy objects inside).

    ``source`` is a photo path or an (H, W, 3) float32 sRGB array in [0, 1], row 0 at the top. ``assets`` maps
    the keys of ``core.assets`` (flame, uv_template, uv_checkpoint, normals_checkpoint) to paths, empty when
    unset. ``cache_dir`` is where the core may keep converted assets (None: the core's default).
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


def configured_assets() -> dict[str, str] | None:
    """Asset paths from the core's environment variables / config file when all four are usable, else None
    (the CLI's configuration, for headless runs)."""
    report = _core_module("assets").AssetRegistry(use_environment=True).report()
    return {state.spec.key: str(state.path) for state in report.states} if report.complete else None


def standin_assets(folder, network_size: str = "published") -> dict[str, str]:
    """Write (or reuse) the project-made stand-in assets in ``folder``; their paths by asset key."""
    paths = _core_module("pipeline").write_standin_assets(folder, network_size=network_size)
    return {key: str(path) for key, path in paths.items()}


def default_cache_dir() -> str:
    """The core's per-user cache folder (``PIXEL3DMM_CACHE_DIR`` or the platform's cache folder)."""
    return str(_core_module("assets").cache_dir())


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

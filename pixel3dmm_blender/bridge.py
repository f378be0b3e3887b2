"""The add-on's only door into ``core`` (imported lazily, on first use, never at registration).

In the built extension ``core`` is vendored as the subpackage ``pixel3dmm_blender.core``; in the development
checkout it is the top-level package ``core``. Each of the ``_core_*`` functions (and :func:`console`) imports
one group of core modules from whichever is present, once: the panel needs only the light group (no torch, no
OpenCV), a photo from an image datablock the intake, the worker thread (or a headless run) the reconstruction
group, the preferences' validated asset rows and the network download the asset tools (the last two load
torch), and only the headless runner the console helpers. Nothing here touches bpy, so the worker thread may
call :func:`run_reconstruction`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np

_VENDORED_CORE = f"{__package__}.core"


@functools.cache
def _core_basics() -> SimpleNamespace:
    """core's assets and errors modules."""
    try:
        from .core import assets, errors
    except ModuleNotFoundError as exc:
        if exc.name != _VENDORED_CORE:
            raise
        from core import assets, errors
    return SimpleNamespace(assets=assets, errors=errors)


@functools.cache
def _core_intake() -> SimpleNamespace:
    """core's preprocess package (photo intake; imports OpenCV)."""
    try:
        from .core import preprocess
    except ModuleNotFoundError as exc:
        if exc.name != _VENDORED_CORE:
            raise
        from core import preprocess
    return SimpleNamespace(preprocess=preprocess)


@functools.cache
def _core_reconstruction() -> SimpleNamespace:
    """core's pipeline, rig and texture modules (import torch: seconds)."""
    try:
        from .core import pipeline, rig, texture
    except ModuleNotFoundError as exc:
        if exc.name != _VENDORED_CORE:
            raise
        from core import pipeline, rig, texture
    return SimpleNamespace(pipeline=pipeline, rig=rig, texture=texture)


@functools.cache
def console():
    """core's console module: progress display, hidden console output, checked output folders (headless runs)."""
    try:
        from .core import console
    except ModuleNotFoundError as exc:
        if exc.name != _VENDORED_CORE:
            raise
        from core import console
    return console


@dataclass(frozen=True)
class ReconstructionRequest:
    """Everything the worker needs, gathered on the main thread (no bpy objects inside).

    ``source`` is a photo path (str) or a core ``Photo`` (see :func:`photo_from_pixels`). ``assets`` maps the
    keys of ``core.assets`` (flame, uv_template, uv_checkpoint, normals_checkpoint) to paths, empty when unset.
    ``cache_dir`` is where the core may keep converted assets (None: the core's default). ``face_index`` picks the
    face when the photo shows several (0 = the largest, then by size).
    """

    source: object
    assets: dict[str, str]
    quality: str
    device: str
    texture_size: int
    cache_dir: str | None
    face_index: int = 0


@dataclass(frozen=True)
class ReconstructionResult:
    """A finished reconstruction made ready for the scene builder (on the worker thread).

    ``reconstruction`` is the core's ``Reconstruction`` (fields ``fit``, ``flame``, ``uv``, ``texture``,
    ``used_synthetic``, ``messages``, ...), ``rig`` its ``core.rig.Rig`` and ``texture`` the baked texture as
    (T, T, 4) float32 RGBA in Blender's pixel order (row 0 at the bottom).
    """

    reconstruction: object
    rig: object
    texture: np.ndarray


def asset_report(paths: dict[str, str]):
    """The core's ``AssetReport`` for the preference paths only (no environment or config file)."""
    return _core_basics().assets.AssetRegistry(paths, use_environment=False).report()


def configured_assets() -> dict[str, str] | None:
    """Asset paths from the core's environment variables / config file when all four are usable, else None
    (the CLI's configuration, for headless runs)."""
    report = _core_basics().assets.AssetRegistry(use_environment=True).report()
    return {state.spec.key: str(state.path) for state in report.states} if report.complete else None


def standin_assets(folder, network_size: str = "published") -> dict[str, str]:
    """Write (or reuse) the project-made stand-in assets in ``folder``; their paths by asset key."""
    paths = _core_reconstruction().pipeline.write_standin_assets(folder, network_size=network_size)
    return {key: str(path) for key, path in paths.items()}


def default_cache_dir() -> str:
    """The core's per-user cache folder (``PIXEL3DMM_CACHE_DIR`` or the platform's cache folder)."""
    return str(_core_basics().assets.cache_dir())


def photo_from_pixels(pixels: np.ndarray, width: int, height: int, *, linear: bool, name: str):
    """The core's ``Photo`` of a Blender image's pixel buffer.

    ``pixels`` is ``Image.pixels`` as a flat float32 array (``width * height`` pixels of 1, 3 or 4 channels,
    bottom row first); ``linear`` says the values are scene-linear (float buffers). The photo holds sRGB with
    NaN as 0 and alpha composited over white; ``name`` (the datablock's) appears in the core's messages.
    """
    return _core_intake().preprocess.photo_from_pixels(pixels, width, height, bottom_up=True, linear=linear, name=name)


def prepare_result(reconstruction) -> ReconstructionResult:
    """The rig and the texture's Blender pixels of a core ``Reconstruction`` (fields ``fit``, ``flame``, ``uv``
    and ``texture`` (T, T, 3) float32 in [0, 1], row 0 at the top)."""
    core = _core_reconstruction()
    rig = core.rig.build_rig(reconstruction.flame, reconstruction.uv, reconstruction.fit)
    height, width = reconstruction.texture.shape[:2]
    texture = core.texture.blender_pixels(reconstruction.texture).reshape(height, width, 4)
    return ReconstructionResult(reconstruction, rig, texture)


def run_reconstruction(
    request: ReconstructionRequest,
    on_progress: Callable[[str, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> ReconstructionResult:
    """Run the whole core pipeline and prepare its result for the scene (:func:`prepare_result`). Raises the
    core's errors unchanged."""
    pipeline = _core_reconstruction().pipeline
    registry = _core_basics().assets.AssetRegistry(request.assets, use_environment=False)
    settings = pipeline.PipelineSettings(
        quality=request.quality,
        device=request.device,
        texture_size=request.texture_size,
        cache_dir=request.cache_dir,
        face_index=request.face_index,
    )
    reconstruction = pipeline.reconstruct(
        request.source, registry, settings, on_progress=on_progress, should_cancel=should_cancel
    )
    return prepare_result(reconstruction)


def is_cancellation(exc: BaseException) -> bool:
    """True when ``exc`` is the core's "the user cancelled" error."""
    return isinstance(exc, _core_basics().errors.FitCancelled)


def is_user_error(exc: BaseException) -> bool:
    """True for the core's deliberate errors, whose message is one sentence telling the user what to do."""
    return isinstance(exc, _core_basics().errors.Pixel3DMMError)


def error_message(exc: BaseException) -> str:
    """One sentence for the user: the core's own message, or a generic one naming an unexpected error."""
    if is_user_error(exc):
        return str(exc)
    return f"Reconstruction failed with an unexpected {type(exc).__name__} ({exc}); please report this as a bug."


# --- asset validation and the network download (preferences.py, downloads.py) -------------------------------------
@functools.cache
def _core_asset_tools() -> SimpleNamespace:
    """core's asset validation and network download (they read checkpoints, so they import torch: seconds, once)."""
    try:
        from .core import validation
        from .core.network import download
    except ModuleNotFoundError as exc:
        if exc.name != _VENDORED_CORE:
            raise
        from core import validation
        from core.network import download
    return SimpleNamespace(validation=validation, download=download)


def validated_asset_report(paths: dict[str, str]):
    """The core's ``AssetReport`` for the preference paths, each file validated the way a reconstruction loads it
    (cached by path, size and modification time, so redrawing the preferences reads nothing again)."""
    return _core_asset_tools().validation.validated_registry(paths, use_environment=False).report()


def asset_pages() -> dict[str, str]:
    """The web page where the user gets each asset, by asset key."""
    return {spec.key: spec.page for spec in _core_basics().assets.ASSETS}


def default_download_folder() -> str:
    """Where the CLI puts downloaded networks (the add-on uses its extension folder when installed)."""
    return str(_core_basics().assets.default_download_dir())


def download_terms() -> dict[str, str]:
    """What the consent dialog shows: ``consent`` (one sentence), ``size``, ``licence``, ``licence_url``, ``page``."""
    download = _core_asset_tools().download
    return {
        "consent": download.consent_text(download.NETWORK_FILES, download.HF_REPO_ID),
        "size": _core_basics().assets.format_bytes(download.total_size(download.NETWORK_FILES)),
        "licence": download.LICENCE,
        "licence_url": download.LICENCE_URL,
        "page": download.REPO_URL,
    }


def download_networks(dest: str, on_progress: Callable[[str, float], None] | None = None,
                      should_cancel: Callable[[], bool] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Download the published networks into ``dest`` (resuming a partial download) and convert them to float16.

    Runs on the worker thread (no bpy). ``on_progress(message, fraction)`` spans both steps (the download takes
    the first 85 %). Returns (downloaded checkpoints, converted files), each by asset key. Raises the core's
    errors (``DownloadError``, ``DiskFullError``, ``CheckpointError``, ``OperationCancelled``) unchanged.
    """
    download = _core_asset_tools().download
    report = on_progress or (lambda message, fraction: None)
    paths = download.download_networks(
        dest, files=download.NETWORK_FILES, repo_id=download.HF_REPO_ID, revision=download.HF_REVISION,
        on_progress=lambda message, fraction: report(message, 0.85 * fraction), should_cancel=should_cancel)
    converted = download.convert_downloads(
        paths, download.NETWORK_FILES, on_progress=lambda message, fraction: report(message, 0.85 + 0.15 * fraction),
        should_cancel=should_cancel)
    return {k: str(v) for k, v in paths.items()}, {k: str(v) for k, v in converted.items()}


def delete_files(paths: list[str]) -> int:
    """Delete downloaded checkpoints once converted; returns the bytes freed."""
    from pathlib import Path

    return _core_asset_tools().download.delete_originals({str(i): Path(p) for i, p in enumerate(paths)})


def format_bytes(n: int) -> str:
    """A byte count for the user ("3.72 GB")."""
    return _core_basics().assets.format_bytes(n)


def is_download_cancellation(exc: BaseException) -> bool:
    """True when ``exc`` is the core's "the user stopped the download or conversion" error."""
    return isinstance(exc, _core_basics().errors.OperationCancelled)


def download_error_message(exc: BaseException) -> str:
    """One sentence for the user: the core's own message, or a generic one naming an unexpected error."""
    if isinstance(exc, _core_basics().errors.Pixel3DMMError):
        return str(exc)
    return f"The download failed with an unexpected {type(exc).__name__} ({exc}); please report this as a bug."

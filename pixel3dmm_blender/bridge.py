"""The add-on's only door into ``core`` (imported lazily, on first use, never at registration).

In the built extension ``core`` is vendored as the subpackage ``pixel3dmm_blender.core``; in the development
checkout it is the top-level package ``core``. Each of the ``_core_*`` functions (and :func:`console`) imports
one group of core modules from whichever is present, once: the panel needs only the light group (no torch, no
OpenCV), a photo from an image datablock the intake, the worker thread (or a headless run) the reconstruction
group, or the tracking group for a clip, the preferences' validated asset rows and the network download the asset
tools, the animation operators (takes, FLAME parameter files) the animation group (the last four load torch), and
only the headless runner the console helpers. Nothing here touches bpy, so the worker thread may call
:func:`run_reconstruction` and :func:`run_tracking`.
"""

from __future__ import annotations

import dataclasses
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


@functools.cache
def _core_tracking() -> SimpleNamespace:
    """core's tracker (``core.track``: the tracker and the Track type) and the rotation helpers the scene's keys
    need (import torch: seconds)."""
    try:
        from .core import animation, track
        from .core.flame import rotation
    except ModuleNotFoundError as exc:
        if exc.name != _VENDORED_CORE:
            raise
        from core import animation, track
        from core.flame import rotation
    return SimpleNamespace(animation=animation, rotation=rotation, track=track)


def _core_animation() -> SimpleNamespace:
    """core's take, parameter-file and model modules (import torch: seconds)."""
    try:
        from .core import animation, arkit, flame, flame_params, landmarks, livelink, rig
    except ModuleNotFoundError as exc:
        if exc.name != _VENDORED_CORE:
            raise
        from core import animation, arkit, flame, flame_params, landmarks, livelink, rig
    return SimpleNamespace(animation=animation, arkit=arkit, flame=flame, flame_params=flame_params,
                           landmarks=landmarks, livelink=livelink, rig=rig)


@dataclass(frozen=True)
class ReconstructionRequest:
    """Everything the worker needs, gathered on the main thread (no bpy objects inside).

    ``source`` is a photo path (str) or a core ``Photo`` (see :func:`photo_from_pixels`). ``assets`` maps the
    keys of ``core.assets`` (flame, uv_template, uv_checkpoint, normals_checkpoint) to paths, empty when unset.
    ``cache_dir`` is where the core may keep converted assets (None: the core's default). ``face_index`` picks the
    face when the photo shows several (0 = the largest, then by size). ``mode`` is the core's fitting mode
    (``core.pipeline.MODES``: auto, networks, landmarks).
    """

    source: object
    assets: dict[str, str]
    quality: str
    device: str
    texture_size: int
    cache_dir: str | None
    face_index: int = 0
    mode: str = "auto"


@dataclass(frozen=True)
class ReconstructionResult:
    """A finished reconstruction made ready for the scene builder (on the worker thread).

    ``reconstruction`` is the core's ``Reconstruction`` (fields ``fit``, ``flame``, ``uv``, ``texture``,
    ``landmark_embedding``, ``used_synthetic``, ``messages``, ...), ``rig`` its ``core.rig.Rig`` and ``texture``
    the baked texture as (T, T, 4) float32 RGBA in Blender's pixel order (row 0 at the bottom). ``warnings`` are
    sentences for the user about the rig (a head without ARKit keys says why).
    """

    reconstruction: object
    rig: object
    texture: np.ndarray
    warnings: tuple[str, ...] = ()


NO_EMBEDDING = ("The head has no ARKit expression keys because no MediaPipe landmark embedding is available for this "
                "FLAME model; put FLAME's mediapipe_landmark_embedding.npz next to the model file (or run Blender "
                "with Python 3.11, where MediaPipe derives one) to get them.")


def asset_report(paths: dict[str, str]):
    """The core's ``AssetReport`` for the preference paths only (no environment or config file)."""
    return _core_basics().assets.AssetRegistry(paths, use_environment=False).report()


def configured_assets() -> dict[str, str] | None:
    """Asset paths from the core's environment variables / config file when all four are usable, else None
    (the CLI's configuration, for headless runs)."""
    report = _core_basics().assets.AssetRegistry(use_environment=True).report()
    return {state.spec.key: str(state.path) for state in report.states} if report.complete else None


def standin_assets(folder, network_size: str = "published", networks: bool = True) -> dict[str, str]:
    """Write (or reuse) the project-made stand-in assets in ``folder`` (``networks=False``: the FLAME ones only);
    their paths by asset key."""
    paths = _core_reconstruction().pipeline.write_standin_assets(folder, network_size=network_size, networks=networks)
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


def _rig_with_keys(flame, uv, fit, embedding) -> tuple[object, tuple[str, ...]]:
    """The rig with the ARKit keys when the embedding allows them, else without them and a sentence why."""
    core = _core_reconstruction()
    if embedding is None:
        return core.rig.build_rig(flame, uv, fit), (NO_EMBEDDING,)
    try:
        return core.rig.build_rig(flame, uv, fit, embedding), ()
    except _core_basics().errors.AssetInvalidError as exc:
        return core.rig.build_rig(flame, uv, fit), (str(exc),)


def prepare_result(reconstruction) -> ReconstructionResult:
    """The rig (with the ARKit keys when ``landmark_embedding`` allows them) and the texture's Blender pixels of a
    core ``Reconstruction`` (fields ``fit``, ``flame``, ``uv``, ``landmark_embedding`` and ``texture`` (T, T, 3)
    float32 in [0, 1], row 0 at the top)."""
    core = _core_reconstruction()
    rig, warnings = _rig_with_keys(reconstruction.flame, reconstruction.uv, reconstruction.fit,
                                   reconstruction.landmark_embedding)
    height, width = reconstruction.texture.shape[:2]
    texture = core.texture.blender_pixels(reconstruction.texture).reshape(height, width, 4)
    return ReconstructionResult(reconstruction, rig, texture, warnings)


def head_record(rig) -> dict:
    """The core's ``head_record`` of a rig: plain lists and numbers for a custom property."""
    return _core_reconstruction().rig.head_record(rig)


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
        mode=request.mode,
    )
    reconstruction = pipeline.reconstruct(
        request.source, registry, settings, on_progress=on_progress, should_cancel=should_cancel
    )
    return prepare_result(reconstruction)


@dataclass(frozen=True)
class TrackRequest:
    """Everything the tracking worker needs, gathered on the main thread (no bpy objects inside).

    ``source`` is a clip path or a folder of frames (str), or a list of photo paths of one person. ``assets``,
    ``quality``, ``device``, ``texture_size``, ``cache_dir`` and ``mode`` are as in :class:`ReconstructionRequest`;
    ``stride`` tracks every ``stride``-th frame of a clip. The core keeps finished frames in its cache folder, so
    a cancelled track of the same source and settings resumes.
    """

    source: object
    assets: dict[str, str]
    quality: str
    device: str
    texture_size: int
    cache_dir: str | None
    stride: int = 1
    mode: str = "auto"


@dataclass(frozen=True)
class TrackingResult:
    """A finished track made ready for the scene builder (on the worker thread).

    ``clip`` is the core's ``TrackedClip`` (fields ``track`` (a ``core.track.Track``), ``flame``, ``uv``,
    ``landmark_embedding``, ``texture``, ``first_frame``, ``neutral``, ``messages``, ``used_synthetic``), ``rig``
    the ``core.rig.Rig`` of its first tracked frame, ``texture`` and ``warnings`` as in
    :class:`ReconstructionResult`.
    """

    clip: object
    rig: object
    texture: np.ndarray
    warnings: tuple[str, ...] = ()


def prepare_track(clip) -> TrackingResult:
    """The rig of a tracked clip's first frame (its identity mesh ``neutral`` as the neutral vertices; the ARKit
    keys when ``landmark_embedding`` allows them) and the texture's Blender pixels (see :func:`prepare_result`)."""
    first = clip.track.frame_result(0, vertices_neutral=clip.neutral)
    rig, warnings = _rig_with_keys(clip.flame, clip.uv, first, clip.landmark_embedding)
    height, width = clip.texture.shape[:2]
    texture = _core_reconstruction().texture.blender_pixels(clip.texture).reshape(height, width, 4)
    return TrackingResult(clip, rig, texture, warnings)


def run_tracking(
    request: TrackRequest,
    on_progress: Callable[[str, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> TrackingResult:
    """Track the clip, folder or photos with the core's tracker and prepare the result for the scene
    (:func:`prepare_track`). Raises the core's errors unchanged."""
    track = _core_tracking().track
    registry = _core_basics().assets.AssetRegistry(request.assets, use_environment=False)
    settings = track.TrackSettings(
        quality=request.quality,
        mode=request.mode,
        device=request.device,
        stride=request.stride,
        texture_size=request.texture_size,
        cache_dir=request.cache_dir,
    )
    clip = track.track(request.source, registry, settings, on_progress=on_progress, should_cancel=should_cancel)
    return prepare_track(clip)


def frame_files(folder: str) -> list[str]:
    """The image files of a folder of frames in the order the tracker numbers them (frame 0 first)."""
    return [str(p) for p in _core_tracking().track.open_clip(folder).paths]


def arkit_split(rig, expression, eyelids):
    """The core's ``arkit_split``: per-frame ARKit weights (T, 51) and the expression (T, Ne) and eyelids (T, 2)
    they leave to FLAME's keys (``weights``, ``expression``, ``eyelids``)."""
    return _core_tracking().animation.arkit_split(rig, expression, eyelids)


def axis_angle_matrices(axis_angle) -> np.ndarray:
    """(..., 3) axis-angle rotations (radians) as (..., 3, 3) float64 rotation matrices."""
    import torch  # loaded with core already

    rotation = _core_tracking().rotation
    return rotation.axis_angle_to_matrix(torch.from_numpy(np.asarray(axis_angle, dtype=np.float64))).numpy()


def rotation_quaternions(matrices) -> np.ndarray:
    """(T, 3, 3) rotations, one per frame, as (T, 4) unit quaternions (w, x, y, z) whose signs follow each other
    from frame to frame, so that interpolating keyed components never takes the long way round."""
    q = _core_tracking().animation.quaternions_from_matrices(matrices)
    flips = np.where(np.sum(q[1:] * q[:-1], axis=-1) < 0.0, -1.0, 1.0)
    return q * np.concatenate(([1.0], np.cumprod(flips)))[:, None]


@dataclass(frozen=True)
class TakeMotion:
    """A Live Link Face take as the head plays it: ``motion`` is the core's ``RigMotion`` (frames (T,) from the
    first row, weights (T, K) on the ARKit keys ``names``, neck (T, 4) and eyes (T, 2, 4) quaternions w, x, y, z),
    ``fps`` the take's frame rate, ``start`` the first row's time (seconds since midnight), ``source`` the file."""

    names: tuple[str, ...]
    motion: object
    fps: float
    start: float
    source: str


def _eye_poses(record) -> np.ndarray:
    """(K, 2, 3) eye axis-angles of the ARKit keys in the core's ARKIT_NAMES order, from a head record."""
    names = _core_animation().arkit.ARKIT_NAMES
    return np.array([record["arkit"][name]["eye_poses"] for name in names], dtype=np.float64)


def read_take_motion(path: str, record) -> TakeMotion:
    """Read a Live Link Face take and turn it into the motion of the head with this head record (which has the
    ARKit keys). Raises the core's ``TakeError`` (one sentence) for a bad file."""
    core = _core_animation()
    take = core.livelink.read_take(path)
    motion = core.animation.motion_from_take(take, _eye_poses(record))
    return TakeMotion(tuple(core.arkit.ARKIT_NAMES), motion, take.fps, float(take.times[0]), take.source)


def arkit_names() -> tuple[str, ...]:
    """The 51 ARKit key names in the Live Link column order."""
    return tuple(_core_animation().arkit.ARKIT_NAMES)


def write_take_motion(path: str, record, frames, weights, neck, eyes, fps: float, start: float) -> None:
    """Write the head's motion as a Live Link Face take: ``frames`` (T,) increasing, ``weights`` (T, 51) in
    :func:`arkit_names` order, ``neck`` (T, 4) and ``eyes`` (T, 2, 4) joint quaternions (w, x, y, z), ``start`` the
    first frame's time (seconds since midnight). Raises the core's ``TakeError`` when the file cannot be
    written."""
    core = _core_animation()
    motion = core.animation.RigMotion(np.asarray(frames, np.int64), np.asarray(weights, np.float32),
                                      np.asarray(neck, np.float64), np.asarray(eyes, np.float64))
    take = core.animation.take_from_motion(motion, fps, _eye_poses(record), start=start)
    core.livelink.write_take(path, take)


def _flame_model(assets: dict[str, str], cache_dir: str | None, record):
    """The FLAME model of the preferences, which must be the release the head was built with."""
    core = _core_animation()
    registry = _core_basics().assets.AssetRegistry(assets, use_environment=False)
    path = registry.require("flame")
    flame = core.flame.load_flame(path, cache_dir=cache_dir)
    if flame.release != record["flame"]:
        raise _core_basics().errors.AssetInvalidError(
            f"This head was built with the FLAME {record['flame']} model but the preferences name the FLAME "
            f"{flame.release} model; choose the model the head was built with."
        )
    return flame, path, registry


def save_shown_parameters(path: str, record, values: dict[str, float], rotations, head_pose, joints,
                          assets: dict[str, str], cache_dir: str | None) -> str:
    """Write the FLAME parameters the head shows (the core's ``shown_parameters``: keys at ``values``, joints at
    ``rotations`` (J, 3, 3), ``head_pose`` (4, 4) canonical to world, rest ``joints`` (J, 3)) as .npz or .json by
    the path's suffix; the FLAME model (from ``assets``) places the root joint. Returns the written path. Raises
    the core's errors (one sentence)."""
    core = _core_animation()
    flame, _, _ = _flame_model(assets, cache_dir, record)
    params = core.rig.shown_parameters(record, values, np.asarray(rotations), np.asarray(head_pose),
                                       np.asarray(joints))
    return str(core.flame_params.save_flame_params(path, params, flame))


def rig_from_parameter_file(path: str, record, assets: dict[str, str],
                            cache_dir: str | None) -> tuple[object, tuple[str, ...]]:
    """The rig of a FLAME parameter file (this project's or another FLAME tool's) for the head with this record:
    the preferences' FLAME model and UV template, the file's parameters (its camera, else the head's), and the
    ARKit keys when a landmark embedding is available. Returns the rig and sentences for the user. Raises the
    core's ``ParameterFileError`` or asset errors (one sentence)."""
    core = _core_animation()
    flame, flame_path, registry = _flame_model(assets, cache_dir, record)
    uv = core.flame.load_uv_template(registry.require("uv_template"))
    params = core.flame_params.load_flame_params(path, flame)
    params = dataclasses.replace(
        params,
        camera_K=np.asarray(record["camera_K"], np.float64) if params.camera_K is None else params.camera_K,
        image_size=tuple(int(s) for s in record["image_size"]) if params.image_size is None else params.image_size,
    )
    embedding, _note = core.landmarks.resolve_embedding(flame, flame_path, cache_dir)
    return _rig_with_keys(flame, uv, params, embedding)


def is_cancellation(exc: BaseException) -> bool:
    """True when ``exc`` is the core's "the user cancelled" error."""
    return isinstance(exc, _core_basics().errors.FitCancelled)


def is_user_error(exc: BaseException) -> bool:
    """True when ``exc`` is an error the core raises on purpose (its message is one sentence for the user)."""
    return isinstance(exc, _core_basics().errors.Pixel3DMMError)


def error_message(exc: BaseException, doing: str = "Reconstruction") -> str:
    """One sentence for the user: the core's own message, or a generic one naming an unexpected error that
    happened while ``doing`` (a noun phrase such as "Reconstruction")."""
    if is_user_error(exc):
        return str(exc)
    return f"{doing} failed with an unexpected {type(exc).__name__} ({exc}); please report this as a bug."


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

"""The stages end to end: photo → crop → network cues → FLAME fit → texture.

:func:`reconstruct` is what the Blender add-on's worker thread and the CLI call. It touches no bpy, checks
``should_cancel`` between stages and at every fitting step, reports ``on_progress(stage, fraction)`` with a
monotone overall fraction, and frees GPU memory when it ends (also on errors and cancellation).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .assets import AssetRegistry
from .device import CpuThreads, release_memory, resolve_device
from .errors import FitCancelled, Pixel3DMMError
from .fit.config import PRESETS

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]
CancelFn = Callable[[], bool]

# Share of the whole run each stage takes on a CPU (measured with the balanced preset); drives the bar.
_STAGES = (("load", 0.04), ("detect", 0.03), ("network", 0.25), ("fit", 0.63), ("texture", 0.05))
QUALITY_PRESETS = tuple(PRESETS)  # the fitting presets are the quality choices
#: What the head is fitted to: ``"networks"`` (the method: UV and normal predictions, plus landmarks),
#: ``"landmarks"`` (network-free: the face landmarks alone, needs only the FLAME model) or ``"auto"`` (the
#: networks when both checkpoints are configured, else the landmarks, saying so).
MODES = ("auto", "networks", "landmarks")


@dataclass(frozen=True)
class PipelineSettings:
    """User choices for one reconstruction (the add-on's panel mirrors these)."""

    quality: str = "balanced"  # fitting preset: fast / balanced / best
    mode: str = "auto"  # see MODES
    device: str = "auto"  # auto / gpu / cpu
    texture_size: int = 1024
    face_index: int = 0  # which face when the photo shows several (0 = largest)
    flip_tta: bool = True
    cache_dir: str | None = None  # where converted assets are cached (None: core.assets.cache_dir())
    seed: int = 0
    fit_step_scale: float = 1.0  # multiplies every fitting stage's steps (tests and quick previews)
    exif_focal: bool = True  # hold the focal at the photo's EXIF 35 mm-equivalent focal length when it has one

    def __post_init__(self):
        if self.quality not in QUALITY_PRESETS:
            raise Pixel3DMMError(f"Unknown quality preset '{self.quality}'; use one of {', '.join(QUALITY_PRESETS)}.")
        if self.mode not in MODES:
            raise Pixel3DMMError(f"Unknown fitting mode '{self.mode}'; use one of {', '.join(MODES)}.")
        if not 64 <= self.texture_size <= 8192:
            raise Pixel3DMMError("The texture size must be between 64 and 8192 pixels.")


@dataclass
class Reconstruction:
    """Everything the scene builder and exporters need, as plain data."""

    photo: object  # core.preprocess.Photo
    crop: object  # core.preprocess.FaceCrop
    prediction: object  # core.network.Prediction
    fit: object  # core.fit.FitResult
    texture: np.ndarray  # (T, T, 3) float32 in [0, 1], row 0 = top of the texture (v = 1)
    flame: object  # core.flame.FlameData
    uv: object  # core.flame.UVTemplate
    used_synthetic: bool  # True when the FLAME model or a checkpoint is a project-made stand-in
    messages: list[str] = field(default_factory=list)  # warnings for the user, one sentence each
    landmark_embedding: object | None = None  # core.flame.io.LandmarkEmbedding of the model, or None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Models:
    """What a fit needs from the assets: the mode it runs in, the asset paths, the FLAME model, its UV template and
    landmark embedding (with the sentence saying where that came from)."""

    mode: str
    paths: dict
    flame: object
    uv: object
    embedding: object | None
    embedding_note: str


def load_models(assets: AssetRegistry, mode: str, cache_dir: str | None, messages: list[str]) -> Models:
    """Resolve the fitting ``mode`` (``"auto"``: the networks when both checkpoints are configured, else the
    landmarks, saying so in ``messages``) and load the FLAME model, UV template and landmark embedding."""
    from .errors import AssetError
    from .flame import load_flame, load_uv_template
    from .flame.uv import check_topology
    from .landmarks import resolve_embedding

    paths = {key: assets.require(key) for key in ("flame", "uv_template")}
    if mode == "auto":
        try:
            paths.update({key: assets.require(key) for key in ("uv_checkpoint", "normals_checkpoint")})
            mode = "networks"
        except AssetError:
            mode = "landmarks"
            messages.append("The Pixel3DMM networks are not configured, so the head was fitted to the face landmarks "
                            "alone; set uv.ckpt and normals.ckpt for the full method.")
    elif mode == "networks":
        paths.update({key: assets.require(key) for key in ("uv_checkpoint", "normals_checkpoint")})
    flame = load_flame(paths["flame"], cache_dir=cache_dir)
    uv = load_uv_template(paths["uv_template"])
    check_topology(uv, flame.faces, flame.n_vertices)  # before the networks run (the fitter checks it again)
    embedding, embedding_note = resolve_embedding(flame, paths["flame"], cache_dir)
    log.info(embedding_note)
    return Models(mode, paths, flame, uv, embedding, embedding_note)


class StageProgress:
    """Maps per-stage fractions onto one monotone overall fraction (stages: ``(name, share)`` pairs in order), checks
    for cancellation and re-measures the CPU threads at every report."""

    def __init__(self, on_progress: ProgressFn | None, should_cancel: CancelFn | None, threads: CpuThreads,
                 stages: tuple[tuple[str, float], ...] = _STAGES, cancelled: str = "Reconstruction cancelled; the "
                 "scene was left unchanged."):
        self._on_progress = on_progress
        self._should_cancel = should_cancel
        self._threads = threads
        self._starts = {}
        total = 0.0
        self._message = cancelled
        for name, share in stages:
            self._starts[name] = (total, share)
            total += share
        self._total = total

    def cancelled(self) -> bool:
        return self._should_cancel is not None and bool(self._should_cancel())

    def check_cancel(self) -> None:
        if self.cancelled():
            raise FitCancelled(self._message)

    def __call__(self, stage: str, fraction: float = 0.0) -> None:
        self.check_cancel()
        self._threads.poll(dense=stage == "network")
        if self._on_progress is not None:
            start, share = self._starts[stage]
            self._on_progress(stage, min(1.0, (start + share * min(max(fraction, 0.0), 1.0)) / self._total))


def reconstruct(
    source: str | Path | np.ndarray | object,
    assets: AssetRegistry,
    settings: PipelineSettings | None = None,
    *,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> Reconstruction:
    """Reconstruct the head in one photo.

    Parameters
    ----------
    source:
        A photo path, an (H, W, 3) float32 sRGB array in [0, 1] (row 0 at the top), or a ``Photo``.
    assets:
        Where the FLAME model, UV template and both checkpoints are (the checkpoints only for the networks mode).
    settings, on_progress, should_cancel:
        See :class:`PipelineSettings`; ``on_progress(stage, overall_fraction)``; ``should_cancel()``
        returning True raises :class:`~core.errors.FitCancelled` at the next check.

    CPU work runs with :class:`~core.device.CpuThreads`: as many torch threads as the cores other processes leave
    free, re-measured at each progress step.
    """
    settings = settings or PipelineSettings()
    with CpuThreads() as threads:
        return _reconstruct(source, assets, settings, StageProgress(on_progress, should_cancel, threads))


def _reconstruct(source, assets: AssetRegistry, settings: PipelineSettings, progress: StageProgress) -> Reconstruction:
    from .fit import FitConfig, fit
    from .fit.config import BOUNDS
    from .fit.verdict import NETWORK_UV_AGREEMENT, uv_agreement
    from .flame import FlameModel
    from .network import load_network, predict
    from .preprocess import Photo, crop_face, detect_faces, load_photo, refine_crop_masks, select_face
    from .render.camera import focal_from_35mm
    from .texture import bake_from_fit

    timings: dict[str, float] = {}
    messages: list[str] = []
    device = resolve_device(settings.device)

    t0 = time.perf_counter()
    progress("load", 0.0)
    models = load_models(assets, settings.mode, settings.cache_dir, messages)
    mode, paths, flame, uv, embedding, embedding_note = (models.mode, models.paths, models.flame, models.uv,
                                                         models.embedding, models.embedding_note)
    photo = source if isinstance(source, Photo) else load_photo(source)
    timings["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    progress("detect", 0.0)
    faces = detect_faces(photo)
    crop = crop_face(photo, select_face(photo, faces, settings.face_index))
    timings["detect"] = time.perf_counter() - t
    if len(faces) > 1:
        i = settings.face_index
        which = "the largest (face 0)" if i == 0 else f"face {i} (0 is the largest)"
        messages.append(f"'{photo.name}' shows {len(faces)} faces and {which} was fitted; choose another face "
                        f"number from 0 to {len(faces) - 1} to fit a different one.")
    if crop.landmarks is None or embedding is None:
        why = "no face landmarks were found" if crop.landmarks is None else embedding_note
        messages.append(f"The fit ran without landmark terms: {why[0].lower() + why[1:].rstrip('.')}.")

    prediction, doubt = None, None
    try:
        if mode == "networks":
            t = time.perf_counter()
            progress("network", 0.0)
            uv_net = load_network(paths["uv_checkpoint"], device, cache_dir=settings.cache_dir)
            progress("network", 0.25)
            normal_net = load_network(paths["normals_checkpoint"], device, cache_dir=settings.cache_dir)
            progress("network", 0.5)
            prediction = predict(uv_net, normal_net, crop.image, flip_tta=settings.flip_tta,
                                 on_progress=lambda f: progress("network", 0.5 + 0.5 * f))
            del uv_net, normal_net
            crop = refine_crop_masks(crop, prediction.mask)
            timings["network"] = time.perf_counter() - t
            check = uv_agreement(prediction, crop.landmarks, embedding, uv)
            if check is not None and check[0] < NETWORK_UV_AGREEMENT:
                mode = "landmarks"
                doubt = (f"The UV network's prediction disagrees with the face landmarks (agreement {check[0]:.2f}, "
                         f"median {check[1]:.2f} UV apart), so the head was fitted to the landmarks alone.")

        t = time.perf_counter()
        progress("fit", 0.0)
        model = FlameModel(flame).to(device)
        if mode == "networks":
            cfg = FitConfig.preset(settings.quality)
        else:
            cfg = FitConfig.landmarks_preset(settings.quality)
        focal_note = "fitted" if cfg.fit_focal else "held at its default"
        if settings.exif_focal and photo.focal_35mm is not None:
            fl = focal_from_35mm(photo.focal_35mm, photo.original_size, crop.transform)
            if BOUNDS["focal"][0] <= fl <= BOUNDS["focal"][1]:
                # a known focal fixes the head's distance, which the image alone barely shows (ground truth:
                # depth error 16.5 -> 5.6 mm median; docs/PERFORMANCE.md, "Landmarks")
                cfg = dataclasses.replace(cfg, focal=fl, fit_focal=False)
                focal_note = f"held at the EXIF {photo.focal_35mm:g} mm (35 mm equivalent)"
            else:
                log.info("Ignoring the EXIF focal length of %g mm: normalised %.2f is outside %s", photo.focal_35mm,
                         fl, BOUNDS["focal"])
        result = fit(
            prediction if mode == "networks" else None, crop, model, uv, cfg.with_steps(settings.fit_step_scale),
            device=device, seed=settings.seed, embedding=embedding,
            on_progress=lambda p: progress("fit", p.fraction), should_cancel=progress.cancelled,
        )
        if doubt is not None:
            result.verdict.doubt(doubt)
        result.info["mode"] = mode
        result.info["focal"] = focal_note
        timings["fit"] = time.perf_counter() - t
    finally:
        release_memory(device)

    t = time.perf_counter()
    progress("texture", 0.0)
    baked = bake_from_fit(photo.rgb, result, uv, size=settings.texture_size, skin_mask=_skin_in_photo(crop))
    timings["texture"] = time.perf_counter() - t
    progress("texture", 1.0)

    used_synthetic = flame.release == "synthetic"
    if used_synthetic:
        messages.append("The FLAME model is the project's synthetic stand-in: the head shows that the pipeline "
                        "runs, not what the method can do.")
    if not result.verdict.ok:
        messages.append("The fit is doubtful: " + " ".join(result.verdict.reasons))
    log.info("reconstruction timings: %s", {k: round(v, 2) for k, v in timings.items()})
    return Reconstruction(photo, crop, prediction, result, baked.image, flame, uv, used_synthetic, messages,
                          landmark_embedding=embedding, timings=timings)


def _skin_in_photo(crop) -> np.ndarray | None:
    """The crop's skin mask resampled to full-photo pixels (nearest), or None when it is empty/approximate.

    The texture's fallback colour is the median of these photo pixels (hair and eyes excluded).
    """
    import cv2

    skin = crop.masks.get("skin")
    if skin is None or "skin" in crop.approximate_masks or not skin.any():
        return None
    t = crop.transform
    s = t.out_size / t.size
    # photo pixel index -> crop pixel index, with pixel centres at index + 0.5 in both images
    m = np.array([[s, 0.0, s * (0.5 - t.x0) - 0.5], [0.0, s, s * (0.5 - t.y0) - 0.5]])
    h, w = crop.photo_size
    warped = cv2.warpAffine(skin.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped.astype(bool)


def write_standin_assets(
    folder: str | Path, *, network_size: str = "published", seed: int = 0, networks: bool = True
) -> dict[str, Path]:
    """Write the project-made stand-ins for the four assets into ``folder`` (reused when already there).

    The FLAME model is the full-size synthetic FLAME-format head (plain pickle) with its UV template. The
    networks have random weights and either the published module tree (``network_size="published"``), stored as
    float16 ``.safetensors`` like ``python -m core convert-checkpoint`` writes them (about 0.2 GB each, and
    loaded without the float32 copy a ``.ckpt`` leaves in the cache: 1.2 GB less on disk than Lightning files),
    or the tiny test configuration (``"tiny"``) as Lightning-format ``.ckpt`` files.
    ``networks=False`` writes only the FLAME stand-ins (for the network-free mode).
    Returns the paths keyed like :data:`core.assets.ASSET_KEYS`, ready for ``AssetRegistry(paths)``.
    """
    from .flame import write_synthetic_flame
    from .flame.io import EYELID_FILES
    from .network import convert_checkpoint, write_synthetic_checkpoint

    if network_size not in ("published", "tiny"):
        raise Pixel3DMMError("The stand-in network size must be 'published' or 'tiny'.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    flame_dir = folder / "flame"
    # stand-ins written before the eyelid blendshapes sat beside the pickles are written again
    if not (flame_dir / "done").exists() or not all((flame_dir / name).is_file() for name in EYELID_FILES):
        files = write_synthetic_flame(flame_dir, size="full", seed=seed)
        (flame_dir / "done").write_text("\n".join(f"{k}={v.name}" for k, v in files.items()))
    names = dict(line.split("=", 1) for line in (flame_dir / "done").read_text().splitlines())
    paths = {"flame": flame_dir / names["plain"], "uv_template": flame_dir / names["obj"]}
    suffix = ".ckpt" if network_size == "tiny" else ".safetensors"
    for key, kind in (("uv_checkpoint", "uv"), ("normals_checkpoint", "normals")) if networks else ():
        path = folder / f"{kind}-{network_size}{suffix}"
        if not path.exists():
            tmp = path.with_suffix(".part")
            write_synthetic_checkpoint(tmp, "tiny" if network_size == "tiny" else kind, seed=seed,
                                       prediction_type="uv_map" if kind == "uv" else "normals")
            if network_size == "tiny":
                tmp.replace(path)
            else:
                converted = convert_checkpoint(tmp, tmp.with_suffix(".part.safetensors"), dtype="float16")
                tmp.unlink()
                converted.replace(path)
        paths[key] = path
    return paths

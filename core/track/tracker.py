"""Track a clip or several photos: per-frame fits, warm-started, then the joint stage (:mod:`core.fit.joint`).

The steps, as the reference's tracker (``pixel3dmm.md`` sections 2.1, 3.5, 3.6) with this project's fits:

1. **Read and find the face** in every ``stride``-th frame (:mod:`.clip`); frames without a face are reported
   and skipped. A clip gets **one crop for all its frames**, as the reference's static crop: the mean face box,
   or, when the face moves further than that box allows, the union of the boxes (the reference's rule: mean box
   x 1.42 unless the union box x 1.1 is larger). Photos of one person are cropped one by one.
2. **Landmarks and networks** per frame: the crop's MediaPipe landmarks; in the networks mode both networks run
   on batches of :data:`NETWORK_BATCH` crops (flip-TTA off by default for video: it doubles the cost and the joint
   stage smooths what it would average out).
3. **Per-frame fits**: the first frame gets the single-photo fit (identity free); every later frame starts from
   the previous frame's result with the identity and camera held (:func:`frame_config`). Each finished frame is
   written to the work folder, so a cancelled track resumes where it stopped.
4. **Joint stage**: identity shared, per-frame motion, consecutive frames smoothed
   (:data:`core.fit.joint.SMOOTHING`; none for photos), by Levenberg-Marquardt over all frames.
5. The texture is baked from the first tracked frame.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from ..assets import AssetRegistry
from ..device import CpuThreads, release_memory, resolve_device
from ..errors import FitCancelled, NoFaceError, Pixel3DMMError
from ..fit.config import PRESETS, FitConfig, StageSpec
from .clip import LONG_CLIP_SECONDS, Clip, open_clip
from .result import Track

__all__ = ["TrackSettings", "TrackedClip", "SequenceFit", "track", "default_work_dir", "frame_config", "joint_stage", "static_box", "NETWORK_BATCH",
           "FRAME_STEPS", "JOINT_ITERATIONS"]

log = logging.getLogger(__name__)

_STAGES = (("load", 0.03), ("detect", 0.12), ("network", 0.25), ("fit", 0.35), ("joint", 0.22), ("texture", 0.03))
#: Crops per network batch (bounds the memory of a forward pass: about 1 GB per crop for the published networks).
NETWORK_BATCH = 4
#: preset -> (Adam steps, Levenberg-Marquardt iterations) of a warm-started frame in the networks mode, and
#: Levenberg-Marquardt iterations in the landmarks mode.
FRAME_STEPS: dict[str, tuple[int, int, int]] = {"fast": (40, 1, 2), "balanced": (60, 2, 3), "best": (120, 3, 4)}
#: preset -> iterations of the joint stage.
JOINT_ITERATIONS = {"fast": 3, "balanced": 4, "best": 6}
_STATE_VERSION = 1
CANCELLED = "Tracking cancelled; run it again to continue from the frames already tracked."


@dataclass(frozen=True)
class TrackSettings:
    """User choices for one track (the add-on's operator mirrors these).

    ``quality`` the fitting preset; ``mode`` as :data:`core.pipeline.MODES`; ``stride`` tracks every n-th frame;
    ``flip_tta`` the networks' mirrored pass; ``smooth`` the joint stage's temporal smoothing (never for photos);
    ``max_frames`` stops after that many frames; ``fit_step_scale`` multiplies the per-frame steps (tests).
    """

    quality: str = "fast"
    mode: str = "auto"
    device: str = "auto"
    stride: int = 1
    flip_tta: bool = False
    smooth: bool = True
    texture_size: int = 1024
    cache_dir: str | None = None
    max_frames: int | None = None
    seed: int = 0
    fit_step_scale: float = 1.0

    def __post_init__(self):
        from ..pipeline import MODES

        if self.quality not in PRESETS:
            raise Pixel3DMMError(f"Unknown quality preset '{self.quality}'; use one of {', '.join(PRESETS)}.")
        if self.mode not in MODES:
            raise Pixel3DMMError(f"Unknown fitting mode '{self.mode}'; use one of {', '.join(MODES)}.")
        if not isinstance(self.stride, int) or self.stride < 1:
            raise Pixel3DMMError("The frame stride must be a whole number of at least 1.")
        if self.max_frames is not None and self.max_frames < 1:
            raise Pixel3DMMError("The frame limit must be at least 1.")


@dataclass
class TrackedClip:
    """A finished track with what the scene builder needs (see :class:`core.pipeline.Reconstruction`)."""

    track: Track
    flame: object  # core.flame.FlameData
    uv: object  # core.flame.UVTemplate
    landmark_embedding: object | None
    texture: np.ndarray  # (T, T, 3) float32 in [0, 1], row 0 at the top, baked from the first tracked frame
    first_frame: np.ndarray  # (H, W, 3) float32 sRGB of the first tracked frame
    neutral: np.ndarray  # (V, 3) the identity mesh
    messages: list[str] = field(default_factory=list)
    used_synthetic: bool = False


def static_box(boxes: np.ndarray) -> tuple[float, float, float, float]:
    """One face box (x0, y0, w, h) for a whole clip from its per-frame boxes (N, 4): the mean box, or the union box
    shrunk by 1.1 / 1.42 when that is larger (the reference's rule, in this project's box units)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    mean = boxes.mean(0)
    x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
    x1, y1 = (boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()
    side_mean = max(mean[2], mean[3])
    side_union = max(x1 - x0, y1 - y0) * 1.1 / 1.42
    if side_union <= side_mean:
        return tuple(float(v) for v in mean)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side_union / 2, cy - side_union / 2, side_union, side_union)


def frame_config(first: FitConfig, first_result, mode: str, quality: str, step_scale: float = 1.0) -> FitConfig:
    """The fit of a frame after the first: the first frame's camera held, no camera stage, the identity fixed; the
    image stage (networks) or the landmarks stage, with :data:`FRAME_STEPS` steps."""
    adam, lm_net, lm_lmk = FRAME_STEPS[quality]
    stages = []
    for s in first.stages:
        if s.name == "camera":
            continue
        lr = {k: v for k, v in s.lr.items() if k not in ("shape", "focal", "principal_point")}
        steps = lm_lmk if mode == "landmarks" else (lm_net if s.method == "lm" else adam)
        stages.append(dataclasses.replace(s, lr=lr, steps=max(1, int(round(steps * step_scale))), lr_decay_at=None))
    return dataclasses.replace(first, stages=tuple(stages), init="frontal", fit_focal=False,
                               focal=float(first_result.focal),
                               principal_point=tuple(float(v) for v in first_result.principal_point))


def joint_stage(cfg: FitConfig) -> StageSpec:
    """The per-frame terms of the joint stage: those of the configuration's last stage (image / refinement, or the
    landmarks stage)."""
    return cfg.stages[-1]


class SequenceFit:
    """The fits of a sequence of frames: each frame fitted as it comes (the first as a single photo, every later one
    warm-started from the one before with the identity and camera held; with ``photos`` every frame as a single
    photo), then :meth:`joint`. The tracker and the ground-truth benchmark share it."""

    def __init__(self, model, uv, mode: str, quality: str, *, photos: bool = False, device=None, seed: int = 0,
                 step_scale: float = 1.0, embedding=None, should_cancel: Callable[[], bool] | None = None,
                 first_cfg: FitConfig | None = None) -> None:
        self.model, self.uv, self.mode, self.quality, self.photos = model, uv, mode, quality, photos
        self.device, self.seed, self.step_scale, self.embedding = device, seed, step_scale, embedding
        self.should_cancel = should_cancel
        if first_cfg is None:
            first_cfg = FitConfig.preset(quality) if mode == "networks" else FitConfig.landmarks_preset(quality)
        self.first_cfg = first_cfg
        self.frames: list = []  # core.fit.joint.JointFrame

    def add(self, prediction, crop):
        """Fit one more frame (``prediction`` None in the landmarks mode) and keep it; returns its FitResult."""
        import torch

        from ..fit import fit
        from ..fit.init import PoseInit
        from ..flame import FlameParams

        kw = dict(device=self.device, seed=self.seed, embedding=self.embedding, should_cancel=self.should_cancel)
        if not self.frames or self.photos:
            result = fit(prediction, crop, self.model, self.uv, self.first_cfg.with_steps(self.step_scale), **kw)
        else:
            first, prev = self.frames[0].start, self.frames[-1].start
            cfg = frame_config(self.first_cfg, first, self.mode, self.quality, self.step_scale)
            f = lambda a: torch.as_tensor(np.asarray(a, np.float64)[None])  # noqa: E731
            start = FlameParams(shape=f(first.shape), expression=f(prev.expression), jaw_pose=f(prev.jaw_pose),
                                neck_pose=f(prev.neck_pose), eye_pose_left=f(prev.eye_pose_left),
                                eye_pose_right=f(prev.eye_pose_right),
                                eyelids=f(prev.eyelids) if self.model.has_eyelids else None)
            pose = PoseInit(np.asarray(prev.head_rotation, np.float64), np.asarray(prev.head_translation, np.float64),
                            "previous frame", 0, 0)
            result = fit(prediction, crop, self.model, self.uv, cfg, init_pose=pose, init_flame=start, **kw)
        self.keep(prediction, crop, result)
        return result

    def keep(self, prediction, crop, result) -> None:
        """Keep a frame fitted earlier (a resumed track)."""
        from ..fit.joint import JointFrame

        self.frames.append(JointFrame(prediction, crop, result))

    def _refit_with_anchor(self) -> None:
        """Several photos: each photo's identity is tried on the others (fitted again with it held), and the
        identity under which all photos together fit best (lowest summed loss) is kept with those fits. A photo
        whose own fit went astray (e.g. at a wide angle) then starts the joint stage near the right head instead
        of pulling the shared identity away; neither the lowest single loss nor the median identity picked that
        identity reliably (docs/PERFORMANCE.md, "Tracking")."""
        import torch

        from ..fit import fit
        from ..flame import FlameParams

        def final_loss(result) -> float:
            last = result.info.get("steps", {})
            stage = [name for name, steps in last.items() if steps][-1]
            # the size term's weight is each fit's own (from its priors' value), so it does not compare across fits
            size = result.loss_history.get(f"{stage}/size_marginal", [0.0])[-1]
            return result.loss_history[f"{stage}/total"][-1] - size

        cfg = self.first_cfg.with_steps(self.step_scale)
        held = dataclasses.replace(cfg, stages=tuple(
            dataclasses.replace(s, lr={k: v for k, v in s.lr.items() if k != "shape"}) for s in cfg.stages))
        best = None
        for k, anchor in enumerate([f.start for f in self.frames]):
            shape = FlameParams(shape=torch.as_tensor(np.asarray(anchor.shape, np.float64)[None]))
            starts = [f.start if i == k else fit(f.prediction, f.crop, self.model, self.uv, held, device=self.device,
                                                 seed=self.seed, embedding=self.embedding,
                                                 should_cancel=self.should_cancel, init_flame=shape)
                      for i, f in enumerate(self.frames)]
            total = sum(final_loss(r) for r in starts)
            log.info("Photo %d's identity: summed loss %.4g over the photos.", k, total)
            if best is None or total < best[0]:
                best = (total, k, starts)
        self.frames = [dataclasses.replace(f, start=r) for f, r in zip(self.frames, best[2])]
        log.info("Photo %d lends its identity to the others.", best[1])

    def joint(self, smoothing: dict[str, float] | None, gaps=None, iterations: int | None = None,
              on_progress: Callable[[float], None] | None = None, order: int | None = None) -> list:
        """The joint stage over the kept frames (:func:`core.fit.joint.fit_joint`); their final FitResults."""
        from ..fit.joint import SMOOTHING_ORDER, fit_joint

        if iterations is None:
            iterations = JOINT_ITERATIONS[self.quality]
        if self.photos and len(self.frames) > 1:
            self._refit_with_anchor()
        return fit_joint(self.frames, self.model, self.uv, self.first_cfg, joint_stage(self.first_cfg), iterations,
                         smoothing=smoothing, gaps=gaps, order=SMOOTHING_ORDER if order is None else order,
                         embedding=self.embedding, on_progress=on_progress,
                         should_cancel=self.should_cancel)


# ------------------------------------------------------------------------------------------ the work folder
class _WorkFolder:
    """Finished frames of a track (fit result and fit inputs), kept so that a cancelled track resumes."""

    def __init__(self, folder: Path | None, signature: dict):
        self.folder = folder
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        state = folder / "state.json"
        try:
            old = json.loads(state.read_text()) if state.is_file() else None
        except (OSError, ValueError):
            old = None
        if old != signature:
            for child in [*folder.glob("frame_*"), folder / "fallback.txt"]:
                child.unlink(missing_ok=True)
            state.write_text(json.dumps(signature, indent=1))

    def fallback(self) -> str | None:
        """Why an earlier run of this track fitted the landmarks alone (its frames were fitted so), or None."""
        path = None if self.folder is None else self.folder / "fallback.txt"
        return path.read_text() if path is not None and path.is_file() else None

    def set_fallback(self, reason: str) -> None:
        if self.folder is not None:
            (self.folder / "fallback.txt").write_text(reason)

    def _path(self, index: int) -> Path:
        return self.folder / f"frame_{index:06d}.npz"

    def load(self, index: int):
        """``(prediction or None, crop, result)`` of a finished frame, or None."""
        from ..fit import FitResult

        if self.folder is None or not self._path(index).is_file():
            return None
        try:
            with np.load(self._path(index), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                prediction = None
                if "uv" in z:
                    prediction = SimpleNamespace(uv=z["uv"].astype(np.float32), normals=z["normals"].astype(np.float32),
                                                 mask=z["pmask"])
                masks = {k[5:]: z[k] for k in z.files if k.startswith("mask_")}
                landmarks = z["landmarks"] if "landmarks" in z else None
            from ..preprocess.transform import CropTransform

            crop = SimpleNamespace(masks=masks, landmarks=landmarks, transform=CropTransform(*meta["transform"]),
                                   photo_size=tuple(meta["photo_size"]), approximate_masks=tuple(meta["approximate"]))
            result = FitResult.load(self.folder / f"frame_{index:06d}_fit")
        except (OSError, ValueError, KeyError, Pixel3DMMError) as exc:
            log.warning("Frame %d of the earlier run could not be read again (%s); tracking it anew.", index, exc)
            return None
        return prediction, crop, result

    def save(self, index: int, prediction, crop, result) -> None:
        if self.folder is None:
            return
        t = crop.transform
        meta = {"transform": [t.x0, t.y0, t.size, t.out_size], "photo_size": list(crop.photo_size),
                "approximate": list(getattr(crop, "approximate_masks", ()))}
        arrays = {"meta": np.array(json.dumps(meta))}
        arrays.update({f"mask_{k}": v for k, v in crop.masks.items()})
        if crop.landmarks is not None:
            arrays["landmarks"] = crop.landmarks
        if prediction is not None:
            arrays.update(uv=prediction.uv.astype(np.float16), normals=prediction.normals.astype(np.float16),
                          pmask=prediction.mask)
        result.save(self.folder / f"frame_{index:06d}_fit")
        tmp = self.folder / f"frame_{index:06d}.part.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, self._path(index))

    def remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _signature(clip: Clip, settings: TrackSettings, mode: str, paths: dict) -> dict:
    def stat(p) -> list:
        st = Path(p).stat()
        return [str(Path(p).resolve()), st.st_size, int(st.st_mtime)]

    sources = clip.paths if clip.paths else [Path(clip.source)]
    return {
        "version": _STATE_VERSION, "sources": [stat(p) for p in sources], "mode": mode, "quality": settings.quality,
        "stride": settings.stride, "flip_tta": settings.flip_tta, "seed": settings.seed,
        "fit_step_scale": settings.fit_step_scale, "assets": {k: stat(v) for k, v in sorted(paths.items())},
    }


def default_work_dir(source, cache_dir: str | None = None) -> Path:
    """Where a track of ``source`` keeps its finished frames by default (in the cache folder)."""
    from ..assets import cache_dir as default_cache

    key = json.dumps([str(Path(s).resolve()) for s in (source if isinstance(source, (list, tuple)) else [source])])
    return Path(cache_dir or default_cache()) / "tracks" / hashlib.sha256(key.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ tracking
def track(
    source,
    assets: AssetRegistry,
    settings: TrackSettings | None = None,
    *,
    on_progress: Callable[[str, float], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    work_dir: str | Path | None = None,
) -> TrackedClip:
    """Track a video file, a folder of frames, or a list of photos of one person.

    Parameters
    ----------
    source : a video path, a folder of frames, or a list of photo paths (several photos: one identity, no smoothing)
    assets : the FLAME model and UV template (and both checkpoints for the networks mode)
    settings : :class:`TrackSettings`
    on_progress : ``on_progress(stage, overall_fraction)``
    should_cancel : returning True raises :class:`~core.errors.FitCancelled` at the next check; the finished
        frames stay in ``work_dir`` and a later call with the same source and settings starts after them
    work_dir : where finished frames are kept (default: :func:`default_work_dir`); removed when the track ends

    Raises
    ------
    ImageError / NoFaceError when the source cannot be read or no frame shows a face; AssetError as the pipeline.
    """
    from ..pipeline import StageProgress

    settings = settings or TrackSettings()
    with CpuThreads() as threads:
        progress = StageProgress(on_progress, should_cancel, threads, _STAGES, CANCELLED)
        try:
            return _track(source, assets, settings, progress, work_dir)
        except FitCancelled:  # the fits' own sentence speaks of one photo
            raise FitCancelled(CANCELLED) from None


def _track(source, assets: AssetRegistry, settings: TrackSettings, progress, work_dir) -> TrackedClip:
    import torch

    from ..fit.joint import SMOOTHING
    from ..fit.verdict import NETWORK_UV_AGREEMENT, uv_agreement
    from ..flame import FlameModel
    from ..network import load_network, predict_batch
    from ..pipeline import _skin_in_photo, load_models
    from ..preprocess import crop_face, detect_faces, refine_crop_masks, select_face
    from ..preprocess.detect import FaceDetection
    from ..texture import bake_from_fit

    messages: list[str] = []
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    progress("load", 0.0)
    clip = open_clip(source)
    models = load_models(assets, settings.mode, settings.cache_dir, messages)
    mode, flame_data, uv, embedding = models.mode, models.flame, models.uv, models.embedding
    photos = clip.kind == "photos"
    if clip.duration / settings.stride > LONG_CLIP_SECONDS:
        stride = max(2, int(np.ceil(clip.duration / LONG_CLIP_SECONDS)))
        messages.append(f"'{clip.name}' runs {clip.duration / 60:.0f} minutes; tracking every frame takes long, so "
                        f"consider a frame stride of {stride * settings.stride} or more.")
        log.warning(messages[-1])
    device = resolve_device(settings.device)
    work = _WorkFolder(Path(work_dir) if work_dir is not None else default_work_dir(source, settings.cache_dir),
                       _signature(clip, settings, mode, models.paths))
    timings["load"] = time.perf_counter() - t0

    # 1. faces in every frame, one crop for a clip
    t = time.perf_counter()
    skipped: dict[int, str] = {}
    detections: dict[int, FaceDetection] = {}
    expected = max(1, -(-clip.count // settings.stride))
    if settings.max_frames is not None:
        expected = min(expected, settings.max_frames)
    for k, (index, photo) in enumerate(clip.frames(settings.stride, settings.max_frames)):
        progress("detect", k / expected)
        if photo is None:
            skipped[index] = clip.problems[index]
            continue
        faces = detect_faces(photo)
        if not faces:
            skipped[index] = f"No face was found in frame {index}." if not photos else \
                f"No face was found in '{photo.name}'."
            continue
        detections[index] = select_face(photo, faces, 0)
    if not detections:
        raise NoFaceError(f"No face was found in any frame of '{clip.name}'; use a clip where the face is visible and "
                          "at least 80 pixels wide.")
    if not photos:
        box = static_box(np.array([d.box for d in detections.values()]))
        static = FaceDetection(box, float(np.mean([d.score for d in detections.values()])), None,
                               next(iter(detections.values())).detector)
    timings["detect"] = time.perf_counter() - t

    # 2-3. crops, landmarks, networks, per-frame fits
    model = FlameModel(flame_data).to(device)
    if mode == "networks" and work.fallback() is not None:  # resuming a track that fell back to the landmarks
        mode = "landmarks"
        messages.append(work.fallback())
    sequence = SequenceFit(model, uv, mode, settings.quality, photos=photos, device=device, seed=settings.seed,
                           step_scale=settings.fit_step_scale, embedding=embedding, should_cancel=progress.cancelled)
    nets = None
    indices: list[int] = []
    first: list = []  # the first tracked frame's photo and crop (for the texture)
    t_net = t_fit = 0.0
    pending: list[tuple[int, object, object]] = []  # (index, photo, crop) waiting for the networks
    order = sorted(detections)

    def fitted(index, photo, crop, prediction=None, result=None) -> None:
        nonlocal t_fit
        t1 = time.perf_counter()
        if prediction is not None and result is None:
            crop = refine_crop_masks(crop, prediction.mask)
        if mode == "landmarks" and crop.landmarks is None:
            name = f"frame {index}" if not photos else f"'{photo.name}'"
            skipped[index] = f"No face landmarks were found in {name}."
        else:
            if result is None:
                work.save(index, prediction, crop, sequence.add(prediction, crop))
            else:
                sequence.keep(prediction, crop, result)
            indices.append(index)
            if not first:
                first.extend((photo, crop))
        t_fit += time.perf_counter() - t1
        progress("fit", (len(indices) + len(pending)) / len(order))

    def run_networks() -> None:
        nonlocal nets, t_net, mode, sequence
        if not pending:
            return
        t1 = time.perf_counter()
        if nets is None:
            nets = (load_network(models.paths["uv_checkpoint"], device, cache_dir=settings.cache_dir),
                    load_network(models.paths["normals_checkpoint"], device, cache_dir=settings.cache_dir))
        predictions = predict_batch(nets[0], nets[1], [c.image for _, _, c in pending], flip_tta=settings.flip_tta)
        t_net += time.perf_counter() - t1
        batch = list(pending)
        pending.clear()
        if not indices:  # the first frames: do the networks agree with the landmarks (as the photo pipeline asks)?
            check = next((uv_agreement(pr, c.landmarks, embedding, uv) for (_, _, c), pr in zip(batch, predictions)
                          if c.landmarks is not None), None)
            if check is not None and check[0] < NETWORK_UV_AGREEMENT:
                reason = (f"The UV network's prediction disagrees with the face landmarks (agreement {check[0]:.2f}, "
                          f"median {check[1]:.2f} UV apart), so the clip was tracked with the landmarks alone.")
                messages.append(reason)
                work.set_fallback(reason)
                mode = "landmarks"
                sequence = SequenceFit(model, uv, mode, settings.quality, photos=photos, device=device,
                                       seed=settings.seed, step_scale=settings.fit_step_scale, embedding=embedding,
                                       should_cancel=progress.cancelled)
                predictions = [None] * len(batch)
        for (index, photo, crop), prediction in zip(batch, predictions):
            fitted(index, photo, crop, prediction)

    try:
        wanted = set(order)
        for index, photo in clip.frames(settings.stride, settings.max_frames):
            if index not in wanted:
                continue
            progress("network" if mode == "networks" and not indices else "fit", len(indices) / len(order))
            resumed = work.load(index) if not pending else None
            if resumed is not None:
                fitted(index, photo, resumed[1], resumed[0], resumed[2])
                continue
            try:
                crop = crop_face(photo, detections[index] if photos else static)
            except NoFaceError as exc:
                skipped[index] = str(exc)
                continue
            if mode == "networks":
                pending.append((index, photo, crop))
                if len(pending) >= NETWORK_BATCH:
                    run_networks()
            else:
                fitted(index, photo, crop)
        run_networks()
    finally:
        nets = None
        release_memory(device)
    timings["network"], timings["fit"] = t_net, t_fit
    if not indices:
        raise NoFaceError(f"No frame of '{clip.name}' could be tracked: {next(iter(skipped.values()))}")
    for index, why in sorted(skipped.items()):
        log.info("Skipped frame %d: %s", index, why)
    if skipped:
        what = "photos" if photos else "frames"
        messages.append(f"{len(skipped)} of {len(skipped) + len(indices)} {what} were skipped (listed in track.json); "
                        "the others were tracked.")

    # 4. joint stage
    t = time.perf_counter()
    progress("joint", 0.0)
    iterations = max(1, int(round(JOINT_ITERATIONS[settings.quality] * min(1.0, settings.fit_step_scale * 4))))
    gaps = (np.diff(indices) / settings.stride).tolist() if not photos else None
    results = sequence.joint(None if photos or not settings.smooth else SMOOTHING, gaps, iterations,
                             on_progress=lambda f: progress("joint", f))
    timings["joint"] = time.perf_counter() - t

    # 5. the track and the texture
    t = time.perf_counter()
    progress("texture", 0.0)
    kind = clip.kind
    info = {"mode": mode, "quality": settings.quality, "stride": settings.stride, "flip_tta": settings.flip_tta,
            "smooth": settings.smooth and not photos, "joint_iterations": iterations,
            "timings": {k: round(v, 3) for k, v in timings.items()}}
    result_track = Track.from_results(results, indices, kind=kind, source=clip.source, fps=clip.fps, skipped=skipped,
                                      info=info)
    with torch.no_grad():
        neutral = model.neutral(torch.as_tensor(result_track.shape[None], dtype=model.v_template.dtype,
                                                device=model.v_template.device))[0].cpu().numpy()
    first_photo, first_crop = first
    results[0].vertices_neutral = neutral.astype(np.float32)
    baked = bake_from_fit(first_photo.rgb, results[0], uv, size=settings.texture_size,
                          skin_mask=_skin_in_photo(first_crop))
    timings["texture"] = time.perf_counter() - t
    info["timings"] = {k: round(v, 3) for k, v in timings.items()}
    progress("texture", 1.0)
    doubtful = sum(not v.ok for v in result_track.verdicts)
    if doubtful:
        messages.append(f"{doubtful} of {len(result_track)} tracked frames are doubtful (their reasons are in "
                        "track.json).")
    used_synthetic = flame_data.release == "synthetic"
    if used_synthetic:
        messages.append("The FLAME model is the project's synthetic stand-in: the head shows that the tracker runs, "
                        "not what the method can do.")
    work.remove()
    log.info("tracking timings: %s", info["timings"])
    return TrackedClip(result_track, flame_data, uv, embedding, baked.image, first_photo.rgb, neutral.astype(np.float32),
                       messages, used_synthetic)

"""FLAME fitting to the predicted UV and normal maps (Pixel3DMM's single-image tracker, re-designed).

``fit`` is a function plus data: the stages come from :class:`~.config.FitConfig`, each a table of free
parameter groups, learning rates and loss weights. The pose is initialised by robust PnP on the UV
correspondences (or the frontal default), then Adam runs each stage. Deviations from the reference are listed in
``core/fit/__init__.py``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..device import deterministic_kernels
from ..errors import FitCancelled, NoFaceError
from ..flame.data import NECK
from ..flame.io import LandmarkEmbedding
from ..flame.model import FlameModel, FlameParams
from ..flame.rotation import matrix_to_axis_angle, rotation_6d_to_matrix
from ..flame.uv import UVTemplate
from ..render.camera import Camera, crop_to_photo_intrinsics
from .config import FitConfig, StageSpec
from .init import PoseInit, frontal_pose, initial_pose, pose_from_points
from .objective import Bounds, FitData, Geometry, Objective, Params
from .refine import gauss_newton_curvature, lm_step
from .result import FitResult
from .verdict import judge

__all__ = ["fit", "FitProgress"]

log = logging.getLogger(__name__)

_FLAME_GROUPS = ("shape", "expression", "jaw", "neck", "eyes", "eyelids")


@dataclass(frozen=True)
class FitProgress:
    """One progress report.

    Attributes
    ----------
    stage : stage name; step : step within the stage (1-based); total_steps : steps in the stage
    fraction : overall progress in [0, 1] across all stages, each step weighted by its expected time
    losses : weighted loss terms of this step and ``total``
    """

    stage: str
    step: int
    total_steps: int
    fraction: float
    losses: dict[str, float]


#: One covered pixel in this many enters the Gauss-Newton curvature (the gradient uses them all).
_CURVATURE_PIXEL_STRIDE = 4
#: Initial Levenberg-Marquardt damping (relative to the Gauss-Newton diagonal).
_LM_DAMPING = 1e-2
#: Share of the samples counted at its start (see :meth:`.objective.Objective.support`) that a Levenberg-Marquardt stage must keep
#: (refinement steps change a few).
_SUPPORT_KEPT = 0.9
#: Time of a Levenberg-Marquardt iteration in Adam steps of the image stage (CPU, full-size head: 1.4 s / 35 ms),
#: so that the reported progress advances with time.
_LM_STEP_COST = 40


def _step_cost(stage: StageSpec) -> int:
    return _LM_STEP_COST if stage.method == "lm" else 1


def _finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class _Adam:
    """An Adam stage (the reference's optimiser) over the free groups, stepping ``p`` in place."""

    def __init__(self, objective: Objective, p: Params, stage: StageSpec, groups: list[str]) -> None:
        self.objective, self.p, self.stage = objective, p, stage
        self.opt = torch.optim.Adam([{"params": p.groups[g], "lr": stage.lr[g]} for g in groups])
        self.frozen: Geometry | None = None
        if not any(g in _FLAME_GROUPS for g in groups):  # pose and camera only: the head's shape stays fixed
            with torch.no_grad():
                self.frozen = objective.data.geometry(p, objective.need_normals)

    def step(self, step: int) -> tuple[dict[str, float], bool]:
        """One Adam step; returns the loss terms before it and whether everything stayed finite."""
        stage = self.stage
        if stage.lr_decay_at is not None and step == stage.lr_decay_at:
            for group in self.opt.param_groups:
                group["lr"] *= stage.lr_decay
        self.opt.zero_grad(set_to_none=True)
        terms = self.objective.losses(self.p, self.frozen)
        total = sum(terms.values()) if terms else self.objective.data.flame.v_template.new_zeros(())
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["total"] = float(total.detach())
        if not math.isfinite(values["total"]):
            return values, False
        if total.requires_grad:
            snap = self.p.snapshot()
            total.backward()
            self.opt.step()
            if not _finite(self.p.all()):
                self.p.restore(snap)
                return values, False
        return values, True


class _LevenbergMarquardt:
    """A Levenberg-Marquardt stage over the free groups' values, stepping ``p`` in place."""

    def __init__(self, objective: Objective, p: Params, stage: StageSpec, groups: list[str]) -> None:
        self.objective, self.p, self.stage, self.groups = objective, p, stage, groups
        self.damping = _LM_DAMPING
        kappa = objective.set_size_kappa(p)  # the size term's weight, fixed for the stage at its start
        if kappa is not None:
            log.debug("%s: size term kappa %.3g.", stage.name, kappa)
        self.min_support = _SUPPORT_KEPT * objective.support(p)

    def _terms(self, x: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            terms = self.objective.losses(self.p.with_flat(self.groups, x))
        values = {k: float(v) for k, v in terms.items()}
        values["total"] = sum(values.values())
        return values

    def _loss(self, x: torch.Tensor) -> float:
        """The loss at ``x``, or inf when it is not finite or too few samples still count: the data terms drop
        outliers and pixels off the head, so with poor predictions a large step could lower the loss by turning
        everything into an outlier (moving the head out of the picture, or right up to the camera)."""
        if self.objective.support(self.p.with_flat(self.groups, x)) < self.min_support:
            return math.inf
        value = self._terms(x)["total"]
        return value if math.isfinite(value) else math.inf

    def step(self, step: int) -> tuple[dict[str, float], bool]:
        """One linearisation and solve; returns the loss terms at the new point (the old one when no step lowered
        the loss, which is normal near convergence) and whether the loss and its gradient were finite."""
        x = self.p.flat(self.groups).requires_grad_(True)
        total = sum(self.objective.losses(self.p.with_flat(self.groups, x)).values())
        gradient, = torch.autograd.grad(total, x)
        x = x.detach()
        value = float(total.detach())
        if not (math.isfinite(value) and bool(torch.isfinite(gradient).all())):
            return self._terms(x), False
        lin = self.objective.linearise(self.p, _CURVATURE_PIXEL_STRIDE)

        def residuals(y: torch.Tensor) -> torch.Tensor:
            return self.objective.residuals(self.p.with_flat(self.groups, y), lin)

        curvature = gauss_newton_curvature(residuals, x, self.objective.jacobian_chunk)
        curvature = curvature + self.objective.constant_curvature(self.p, self.groups)
        x, self.damping, _, accepted = lm_step(x, value, gradient, curvature, self._loss, self.damping)
        if not accepted:
            log.debug("%s step %d: no Levenberg-Marquardt step lowered the loss (damping now %.2g).", self.stage.name, step, self.damping)
        self.p.set_flat(self.groups, x)
        return self._terms(x), True


def fit(
    prediction,
    crop,
    flame: FlameModel,
    uv_template: UVTemplate,
    cfg: FitConfig | None = None,
    *,
    device: torch.device | None = None,
    on_progress: Callable[[FitProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    seed: int = 0,
    init_pose: PoseInit | None = None,
    init_flame: FlameParams | None = None,
    deterministic: bool = True,
    embedding: LandmarkEmbedding | None = None,
) -> FitResult:
    """Fit FLAME and the camera to one image's predicted UV and normal maps.

    Parameters
    ----------
    prediction : Prediction or None
        ``uv`` (H, W, 2), ``normals`` (H, W, 3), ``mask`` (H, W) at the crop resolution (512); None for the
        network-free mode (:meth:`FitConfig.landmarks_preset`), which needs ``crop.landmarks`` and ``embedding``.
    crop : FaceCrop or None
        Masks, landmarks and the crop transform; None fits with the prediction mask only and reports
        photo intrinsics equal to the crop intrinsics.
    flame : FlameModel
        Its device and dtype are used (moved to ``device`` when one is given).
    uv_template : UVTemplate with the FLAME topology
    cfg : FitConfig, default the "balanced" preset
    device : optional device to run on
    on_progress : called after every step with a :class:`FitProgress`
    should_cancel : polled before every step; returning True raises :class:`~core.errors.FitCancelled`
    seed : RNG seed (PnP RANSAC); runs are deterministic for a given seed, device and torch thread count (on the
        CPU the count can change a sum's order, and the pipeline picks it by load, so a quiet and a busy run may
        differ in the last bits)
    deterministic : on CUDA, run with torch's deterministic kernels (see
        :func:`~core.device.deterministic_kernels`); False trades run-to-run equality for speed. The CPU is
        deterministic either way; MPS has no such mode.
    init_pose : start from this pose instead of the configured initialisation (benchmarks)
    init_flame : start the head's FLAME parameters from these (batch 1; rotations in any form FLAME takes;
        the head pose is ``init_pose``'s, so ``global_pose`` and ``translation`` must be None) instead of the mean
        head: a warm start, e.g. from the truth in the ground-truth benchmark
    embedding : where the landmarks sit on the mesh (:mod:`core.landmarks`); None fits without landmark terms
        (except the iris on real FLAME)

    Returns
    -------
    FitResult, with its :class:`~.verdict.Verdict`
    """
    cfg = cfg or FitConfig.preset("balanced")
    if init_flame is not None and (init_flame.global_pose is not None or init_flame.translation is not None):
        raise ValueError("Give the head's starting pose as init_pose; init_flame's global_pose and translation must be None.")
    if device is not None:
        flame = flame.to(device)
    with deterministic_kernels(flame.v_template.device, deterministic):
        return _fit(prediction, crop, flame, uv_template, cfg, on_progress, should_cancel, seed, init_pose, init_flame,
                    embedding)


def _initial_pose(data: FitData, cfg: FitConfig, seed: int) -> PoseInit:
    """PnP on the UV correspondences when there is a prediction, else on the landmarks; or the frontal pose."""
    if cfg.init != "pnp":
        return frontal_pose()
    flame, t = data.flame, data.targets
    camera = Camera.of(cfg.focal, (0.0, 0.0), cfg.resolution)
    threshold = cfg.pnp_reprojection_px * cfg.resolution / 256.0
    with torch.no_grad():
        neutral = flame.neutral()[0]
    if t.has_maps:
        return initial_pose(neutral[data.valid], data.vertex_uv, t.uv, t.uv_mask, camera, cfg.delta_uv, threshold, seed)
    groups = [data.landmarks[k] for k in ("lmk_static", "lmk_dense") if k in data.landmarks]
    if not groups:
        return frontal_pose()
    obj = torch.cat([(neutral[g.corners] * g.weights[..., None]).sum(1)[g.detected] for g in groups])
    img = torch.cat([g.targets[g.detected] for g in groups])
    return pose_from_points(obj.cpu().double().numpy(), img.cpu().double().numpy(), camera.intrinsics(), threshold, seed)


def _fit(prediction, crop, flame: FlameModel, uv_template: UVTemplate, cfg: FitConfig, on_progress, should_cancel,
         seed: int, init_pose: PoseInit | None, init_flame: FlameParams | None, embedding) -> FitResult:
    """:func:`fit` on ``flame``'s device, its arguments checked."""
    flame = flame.component_major()
    torch.manual_seed(seed)
    data = FitData(prediction, crop, flame, uv_template, cfg, embedding)
    if prediction is None and not data.landmarks:
        raise NoFaceError(
            "Without the networks the fit needs face landmarks, and none were found; use a photo with a clearly "
            "visible face (and mediapipe installed) or configure the Pixel3DMM networks."
        )
    ref = flame.v_template
    if init_pose is None:
        init_pose = _initial_pose(data, cfg, seed)
    log.info("Initial pose: %s (%d pairs, %d inliers).", init_pose.method, init_pose.pairs, init_pose.inliers)
    p = Params(flame, init_pose, ref, flame.has_eyelids, init_flame, focal=cfg.focal,
               principal_point=cfg.principal_point)
    if cfg.pose_frame == "neck":
        data.root_to_neck_frame(p)
    history: dict[str, list[float]] = {}
    total_work = sum(s.steps * _step_cost(s) for s in cfg.stages)
    done = 0
    skipped = 0
    for stage in cfg.stages:
        groups = [
            g for g in stage.lr
            if p.groups.get(g) and (g != "neck" or cfg.include_neck) and (g != "focal" or cfg.fit_focal)
        ]
        if stage.steps == 0 or not groups:
            done += stage.steps * _step_cost(stage)
            continue
        n_matched = data.match()
        log.info("Stage %s: %d %s steps, %d UV-matched vertices.", stage.name, stage.steps, stage.method, n_matched)
        stepper = (_LevenbergMarquardt if stage.method == "lm" else _Adam)(Objective(data, stage), p, stage, groups)
        for step in range(stage.steps):
            if should_cancel is not None and should_cancel():
                raise FitCancelled("The fit was cancelled; start the reconstruction again to get a head.")
            values, finite = stepper.step(step)
            if not finite:
                skipped += 1
                log.debug("Non-finite values at %s step %d; step skipped.", stage.name, step)
            for k, v in values.items():
                history.setdefault(f"{stage.name}/{k}", []).append(v)
            done += _step_cost(stage)
            if on_progress is not None:
                on_progress(FitProgress(stage.name, step + 1, stage.steps, done / max(total_work, 1), values))
    if skipped:
        log.warning("%d fitting steps were skipped because of non-finite values.", skipped)
    steps = sum(s.steps for s in cfg.stages)
    return _result(data, p, crop, init_pose, history, cfg, skipped, steps)


def _result(data: FitData, p: Params, crop, init_pose: PoseInit, history, cfg: FitConfig, skipped: int,
            steps: int) -> FitResult:
    flame = data.flame
    with torch.no_grad():
        view = Objective(data, StageSpec("verdict", 0, {}, {})).view(p)
        view.rasterize(differentiable=False)
        verdict = judge(data, view, Bounds(data).excess(p), skipped, steps)
        out = flame(p.flame_params())
        rot, trans = (x.detach() for x in data.head_pose(p, out.joint_transforms[0, NECK]))
        world = out.vertices[0] @ rot.T + trans
        neutral = flame.neutral(p.shape)[0]

        def aa(r6: torch.Tensor) -> np.ndarray:
            return matrix_to_axis_angle(rotation_6d_to_matrix(r6.detach()))[0].cpu().numpy().astype(np.float32)

        camera = p.camera(cfg.resolution).detach()
        focal = float(camera.focal.reshape(-1)[0])
        pp = camera.principal_point[0].cpu().double().numpy()
    crop_size = data.targets.crop_size
    k_crop = camera.intrinsics(crop_size)
    transform = getattr(crop, "transform", None)
    k_photo = crop_to_photo_intrinsics(k_crop, transform) if transform is not None else k_crop.copy()
    photo_size = tuple(int(s) for s in getattr(crop, "photo_size", None) or (crop_size, crop_size))
    eyelids = p.groups["eyelids"][0][0] if p.groups["eyelids"] else torch.zeros(2)
    return FitResult(
        shape=p.shape[0].detach().cpu().numpy().astype(np.float32),
        expression=p.expression[0].detach().cpu().numpy().astype(np.float32),
        eyelids=eyelids.detach().cpu().numpy().astype(np.float32),
        neck_pose=aa(p.neck),
        jaw_pose=aa(p.jaw),
        eye_pose_left=aa(p.groups["eyes"][0]),
        eye_pose_right=aa(p.groups["eyes"][1]),
        head_rotation=rot.cpu().numpy().astype(np.float32),
        head_translation=trans[0].cpu().numpy().astype(np.float32),
        focal=focal,
        principal_point=pp.astype(np.float32),
        K_crop=k_crop,
        K_photo=k_photo,
        photo_size=photo_size,
        vertices_posed=world.cpu().numpy().astype(np.float32),
        vertices_neutral=neutral.cpu().numpy().astype(np.float32),
        loss_history=history,
        verdict=verdict,
        info={
            "init": init_pose.method,
            "pnp_pairs": init_pose.pairs,
            "pnp_inliers": init_pose.inliers,
            "steps": {s.name: s.steps for s in cfg.stages},
            "skipped_steps": skipped,
            "resolution": cfg.resolution,
            "device": str(flame.v_template.device),
        },
    )

"""FLAME fitting to the predicted UV and normal maps (Pixel3DMM's single-image tracker, re-designed).

``fit`` is a function plus data: the stages come from :class:`~.config.FitConfig`, each a table of free
parameter groups, learning rates and loss weights. The pose is initialised by robust PnP on the UV
correspondences (or the frontal default), then Adam runs each stage. Deviations from the reference are listed in
``core/fit/__init__.py``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..device import deterministic_kernels
from ..errors import AssetInvalidError, FitCancelled
from ..flame.model import FlameModel, FlameParams
from ..flame.rotation import as_rotation_matrix, matrix_to_axis_angle, matrix_to_rotation_6d, rotation_6d_to_matrix
from ..flame.uv import UVTemplate
from ..render.camera import (
    DEFAULT_FOCAL, clip_from_camera, crop_to_photo_intrinsics, intrinsics_matrix, project, world_to_camera,
)
from ..render.raster import pixel_barycentrics
from . import losses as L
from .config import FitConfig, StageSpec
from .init import PoseInit, frontal_pose, initial_pose
from .maps import HeadMaps, corner_uv_tensor, render_depth, render_head, vertex_normals
from .refine import gauss_newton_curvature, lm_step
from .regions import derive_regions
from .result import FitResult
from .targets import build_targets

__all__ = ["fit", "FitProgress"]

log = logging.getLogger(__name__)

_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: FLAME vertices at the iris centres used by the reference (right eye first after sorting by x).
_IRIS_VERTICES = (4051, 4597)
_FLAME_GROUPS = ("shape", "expression", "jaw", "neck", "eyes", "eyelids")
#: FLAME's joints: root, neck, jaw, left eye, right eye.
_NECK_JOINT = 1


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


class _Params:
    """The fitter's free variables (leaf tensors) and their mapping to FLAME and the camera."""

    def __init__(
        self, flame: FlameModel, pose: PoseInit, like: torch.Tensor, eyelids: bool, start: FlameParams | None = None
    ) -> None:
        def leaf(values) -> torch.Tensor:
            return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=like.dtype, device=like.device).clone().requires_grad_(True)

        def given(name: str, default: np.ndarray) -> np.ndarray:
            # ``start``'s value of a FlameParams field in the fitter's layout (6D rotations, zero-padded coefficients)
            value = None if start is None else getattr(start, name)
            if value is None:
                return default
            value = value.detach().cpu().double()
            if value.shape[0] != 1:
                raise ValueError(f"A fit starts from one head; init_flame.{name} has batch {value.shape[0]}.")
            if default.shape[1] == 6:
                return matrix_to_rotation_6d(as_rotation_matrix(value)).numpy()
            if value.shape[1] > default.shape[1]:
                raise ValueError(f"init_flame.{name} has {value.shape[1]} values; this model takes {default.shape[1]}.")
            return np.pad(value.numpy(), ((0, 0), (0, default.shape[1] - value.shape[1])))

        if start is not None and start.eyelids is not None and not eyelids:
            raise ValueError("init_flame gives eyelids, but this FLAME model has no eyelid blendshapes; leave them out.")
        ident = np.array([_IDENTITY_6D])
        self.groups: dict[str, list[torch.Tensor]] = {
            "shape": [leaf(given("shape", np.zeros((1, flame.n_shape))))],
            "expression": [leaf(given("expression", np.zeros((1, flame.n_expr))))],
            "jaw": [leaf(given("jaw_pose", ident))],
            "neck": [leaf(given("neck_pose", ident))],
            "eyes": [leaf(given("eye_pose_left", ident)), leaf(given("eye_pose_right", ident))],
            "eyelids": [leaf(given("eyelids", np.zeros((1, 2))))] if eyelids else [],
            "rotation": [leaf(matrix_to_rotation_6d(torch.as_tensor(pose.rotation)).numpy()[None])],
            "translation": [leaf(pose.translation[None])],
            "focal": [leaf([DEFAULT_FOCAL])],
            "principal_point": [leaf(np.zeros((1, 2)))],
        }

    def __getattr__(self, name: str) -> torch.Tensor:
        groups = self.__dict__["groups"]
        if name in groups and groups[name]:
            return groups[name][0]
        raise AttributeError(name)

    def all(self) -> list[torch.Tensor]:
        return [p for ps in self.groups.values() for p in ps]

    def flame_params(self) -> FlameParams:
        return FlameParams(
            shape=self.shape,
            expression=self.expression,
            neck_pose=self.neck,
            jaw_pose=self.jaw,
            eye_pose_left=self.groups["eyes"][0],
            eye_pose_right=self.groups["eyes"][1],
            eyelids=self.groups["eyelids"][0] if self.groups["eyelids"] else None,
        )

    def flat(self, names: list[str]) -> torch.Tensor:
        """The named groups' values as one detached (P,) vector (group order, then tensor order)."""
        return torch.cat([t.detach().reshape(-1) for g in names for t in self.groups[g]])

    def with_flat(self, names: list[str], x: torch.Tensor) -> "_Params":
        """A view of these parameters with the named groups taken from the (P,) vector ``x`` (see :meth:`flat`)."""
        view = object.__new__(_Params)
        groups = dict(self.groups)
        start = 0
        for g in names:
            parts = []
            for t in self.groups[g]:
                parts.append(x[start : start + t.numel()].view(t.shape))
                start += t.numel()
            groups[g] = parts
        view.__dict__["groups"] = groups
        return view

    def set_flat(self, names: list[str], x: torch.Tensor) -> None:
        """Copy the (P,) vector ``x`` into the named groups' leaf tensors."""
        view = self.with_flat(names, x)
        with torch.no_grad():
            for g in names:
                for mine, new in zip(self.groups[g], view.groups[g]):
                    mine.copy_(new)

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.all()]

    def restore(self, snap: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, s in zip(self.all(), snap):
                p.copy_(s)


def _component_major(flame: FlameModel) -> FlameModel:
    """A shallow copy of ``flame`` (sharing every other buffer) with the blendshape bases stored component-major.

    ``blend_shapes`` multiplies by ``dirs.reshape(V * 3, K).T``; with the bases laid out as contiguous (K, V * 3)
    rows that transpose is contiguous and the CPU GEMM of every forward and backward pass runs about 3x faster.
    The values (and the (V, 3, K) shape) are unchanged.
    """
    fast = copy.copy(flame)
    buffers = dict(flame._buffers)
    for name in ("dirs", "posedirs"):
        v, c, k = buffers[name].shape
        buffers[name] = buffers[name].reshape(v * c, k).T.contiguous().T.view(v, c, k)
    fast.__dict__["_buffers"] = buffers
    return fast


def _finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@dataclass
class _Linearisation:
    """What the least-squares residuals hold fixed around one point: visibility and per-sample weights.

    Attributes
    ----------
    pid, tid : (N,) covered pixels (flat index into S x S; a subsample) and the triangle seen at each
    accepted : (Nv,) float, UV correspondences passing the reference's acceptance tests
    uv_weight : (N,) float, dense-UV mask of each covered pixel
    normal_weight : (N, 3) float, L1 normal term reweighted to least squares: ``keep / (2 |e|)`` (IRLS)
    flame : the FLAME model restricted to the vertices the residuals read (see :meth:`FlameModel.restricted`):
        the correspondence vertices, the pixels' triangle corners and their neighbours (for the corners' normals)
        and the iris vertices, about half the mesh; the forward-mode Jacobian's cost follows the vertex count
    valid, corners, iris : the correspondence vertices (Nv,), the pixels' triangle corners (N, 3) and the iris
        vertices (or None) as indices into ``flame``'s vertices
    normal_faces : (Fn, 3) the triangles around the corners, as indices into ``flame``'s vertices
    """

    pid: torch.Tensor
    tid: torch.Tensor
    accepted: torch.Tensor
    uv_weight: torch.Tensor
    normal_weight: torch.Tensor
    flame: FlameModel
    valid: torch.Tensor
    corners: torch.Tensor
    iris: torch.Tensor | None
    normal_faces: torch.Tensor


#: Smallest normal error (per component) in the L1 reweighting; bounds the weight of pixels that already fit.
_IRLS_FLOOR = 1e-3
#: One covered pixel in this many enters the Gauss-Newton curvature (the gradient uses them all).
_CURVATURE_PIXEL_STRIDE = 4
#: Initial Levenberg-Marquardt damping (relative to the Gauss-Newton diagonal).
_LM_DAMPING = 1e-2
#: Share of the samples counted at its start (see ``_Problem.support``) that a Levenberg-Marquardt stage must keep
#: (refinement steps change a few).
_SUPPORT_KEPT = 0.9
#: Time of a Levenberg-Marquardt iteration in Adam steps of the image stage (CPU, full-size head: 1.4 s / 35 ms),
#: so that the reported progress advances with time.
_LM_STEP_COST = 40


def _step_cost(stage: StageSpec) -> int:
    return _LM_STEP_COST if stage.method == "lm" else 1


class _Problem:
    """Everything constant during a fit: targets, regions, topology, and the loss evaluation."""

    def __init__(self, prediction, crop, flame: FlameModel, uv_template: UVTemplate, cfg: FitConfig) -> None:
        ref = flame.v_template
        self.flame = flame
        self.cfg = cfg
        self.size = cfg.resolution
        faces = flame.faces
        if uv_template.faces.shape != tuple(faces.shape) or uv_template.vertex_uv.shape[0] != ref.shape[0]:
            raise AssetInvalidError("The UV template does not match the FLAME model's topology; choose the template that belongs to this FLAME release.")
        self.faces = faces
        regions = derive_regions(
            ref.detach().cpu().double().numpy(), faces.cpu().numpy(), flame.J_regressor.detach().cpu().double().numpy()
        )
        self.regions = regions
        self.valid = torch.as_tensor(np.flatnonzero(regions.uv_valid), device=ref.device)
        self.vertex_uv = torch.as_tensor(uv_template.vertex_uv, dtype=ref.dtype, device=ref.device)[self.valid]
        self.region_attr = torch.as_tensor(
            np.stack([regions.silhouette, regions.eye_region], 1), dtype=ref.dtype, device=ref.device
        )
        self.corner_uv = corner_uv_tensor(uv_template, ref)
        self.mirror = torch.as_tensor(uv_template.mirror_index, device=ref.device)
        self.targets = build_targets(prediction, crop, self.size, ref)
        self.iris_vertices = None
        if self.targets.iris is not None and flame.release != "synthetic" and ref.shape[0] > max(_IRIS_VERTICES):
            ids = sorted(_IRIS_VERTICES, key=lambda i: float(ref[i, 0]))
            self.iris_vertices = torch.as_tensor(ids, device=ref.device)
        self.max_px = cfg.dist_uv * self.size / 256.0
        self.ident6 = torch.tensor([_IDENTITY_6D], dtype=ref.dtype, device=ref.device)
        self.target_xy = None
        self.matched = None

    def match(self) -> int:
        """Nearest-pixel matching in UV space (once per stage, as in the reference)."""
        t = self.targets
        self.target_xy, sq = L.match_uv(self.vertex_uv, t.uv, t.uv_mask)
        self.matched = sq < self.cfg.delta_uv
        return int(self.matched.sum())

    def geometry(
        self, p: _Params, need_normals: bool, flame: FlameModel | None = None, faces: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Posed vertices (1, V, 3), canonical vertex normals of the neckless mesh (1, V, 3) or None, the
        unposed shape + expression mesh (V, 3) and the neck joint's transform (4, 4) in FLAME's frame, of the full
        model or of a restricted one (``flame``, with the ``faces`` whose normals count)."""
        flame = self.flame if flame is None else flame
        faces = self.faces if faces is None else faces
        params = p.flame_params()
        if need_normals:
            # Posed and neckless in one batch; the coefficients (batch 1) are shared, their blendshapes formed once.
            both = FlameParams(**{
                k: v if v is None or k in ("shape", "expression") else torch.cat([v, v], 0)
                for k, v in params.__dict__.items()
            })
            both.neck_pose = torch.cat([p.neck, self.ident6], 0)
            out = flame(both)
            verts, canon = out.vertices[:1], vertex_normals(out.vertices[1:], faces)
        else:
            out = flame(params)
            verts, canon = out.vertices, None
        return verts, canon, out.vertices_shaped[0], out.joint_transforms[0, _NECK_JOINT]

    def head_pose(self, p: _Params, neck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The root's pose ``R`` (3, 3), ``t`` (1, 3) (world = ``R v + t`` for FLAME's vertices ``v``) from the free
        pose, given the neck joint's transform ``[N | j]`` (4, 4).

        With ``pose_frame == "neck"`` the free pose ``(Rf, tf)`` is the neck joint frame's, so ``R = Rf Nᵀ`` and
        ``t = tf - R j``: a vertex the neck carries, ``v = N (x - j) + j``, lands at ``Rf (x - j) + tf`` whatever
        ``N`` is."""
        rot = rotation_6d_to_matrix(p.rotation)[0]
        if self.cfg.pose_frame == "root":
            return rot, p.translation
        rot = rot @ neck[:3, :3].T
        return rot, p.translation - (rot @ neck[:3, 3])[None]

    def root_to_neck_frame(self, p: _Params) -> None:
        """Re-express ``p``'s pose, given as the root's, as the neck joint frame's (for ``pose_frame == "neck"``):
        ``Rf = R N``, ``tf = R j + t`` at ``p``'s current FLAME parameters, so that :meth:`head_pose` gives it back."""
        with torch.no_grad():
            neck = self.flame(p.flame_params()).joint_transforms[0, _NECK_JOINT]
            rot = rotation_6d_to_matrix(p.rotation)[0]
            p.translation.add_((rot @ neck[:3, 3])[None])
            p.rotation.copy_(matrix_to_rotation_6d(rot @ neck[:3, :3])[None])

    def world(self, p: _Params, verts: torch.Tensor, neck: torch.Tensor) -> torch.Tensor:
        """World-space vertices ``R v + t`` (1, V, 3), the root's pose from :meth:`head_pose`."""
        rot, t = self.head_pose(p, neck)
        return verts @ rot.T + t[:, None]

    def regularisers(self, p: _Params, w: dict[str, float], shaped: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Unweighted regulariser values, each a flat residual vector whose squared sum is the term."""
        eyes = p.groups["eyes"]
        out: dict[str, torch.Tensor] = {}
        if "reg_expression" in w:
            out["reg_expression"] = p.expression.reshape(-1)
        if "reg_shape" in w:  # no MICA identity here: the prior mean is zero
            out["reg_shape"] = p.shape.reshape(-1)
        if "reg_shape_general" in w:
            out["reg_shape_general"] = p.shape.reshape(-1)
        if "reg_jaw" in w:
            out["reg_jaw"] = (self.ident6 - p.jaw).reshape(-1)
        if "reg_neck" in w:
            out["reg_neck"] = (self.ident6 - p.neck).reshape(-1)
        if "reg_eyes" in w:
            out["reg_eyes"] = torch.cat([(self.ident6 - eyes[0]).reshape(-1), (self.ident6 - eyes[1]).reshape(-1)])
        if "reg_eye_sym" in w:
            out["reg_eye_sym"] = (eyes[0] - eyes[1]).reshape(-1)
        if "reg_mirror" in w:  # mean over vertices of the squared mirror distance
            out["reg_mirror"] = L.mirror_offsets(shaped, self.mirror).reshape(-1) / math.sqrt(shaped.shape[0])
        if "reg_pp" in w:
            out["reg_pp"] = p.principal_point.reshape(-1)
        return out

    def losses(self, p: _Params, stage: StageSpec, frozen_flame: tuple | None) -> dict[str, torch.Tensor]:
        w = {k: v for k, v in stage.weights.items() if v != 0.0}
        t = self.targets
        size = self.size
        if frozen_flame is not None:
            verts, canon, shaped, neck = frozen_flame
        else:
            verts, canon, shaped, neck = self.geometry(p, "normal" in w)
        world = self.world(p, verts, neck)
        terms: dict[str, torch.Tensor] = {}
        dense = any(k in w for k in ("uv_dense", "normal", "sil"))
        need_depth = dense or "uv_corr" in w or "uv_corr_l1" in w
        maps = None
        if dense:
            if canon is None:
                canon = world.new_zeros(world.shape)
            maps = render_head(
                world, canon, self.faces, self.corner_uv, p.focal, p.principal_point, size, self.region_attr,
                sil_channel=0 if "sil" in w else None, cull_back=self.cfg.cull_back,
            )
            depth_map = maps.depth[0].detach()
        elif need_depth:
            with torch.no_grad():
                depth_map = render_depth(world, self.faces, p.focal, p.principal_point, size, self.cfg.cull_back)[0]
        for name in ("uv_corr", "uv_corr_l1"):
            if name in w:
                xy, depth = project(world_to_camera(world[:, self.valid]), p.focal, p.principal_point, size)
                max_px = self.max_px
                quantile = self.cfg.camera_accept_quantile
                if stage.name == "camera" and quantile is not None and bool(self.matched.any()):
                    with torch.no_grad():
                        far = (xy[0] - self.target_xy).abs().sum(-1)[self.matched].quantile(quantile)
                    max_px = max(max_px, float(far))
                terms[name], _ = L.uv_correspondence(
                    xy[0], depth[0], self.target_xy, self.matched, depth_map, size, max_px,
                    self.cfg.visibility_eps, squared=name == "uv_corr",
                )
        if maps is not None:
            cov = maps.coverage[0]
            if "uv_dense" in w:
                terms["uv_dense"] = L.dense_uv(t.uv, t.uv_mask, maps.uv[0], cov, self.cfg.dense_uv_max)
            if "normal" in w:
                eye = L.gaussian_blur(maps.regions[0, ..., 1].detach(), self.cfg.eye_blur_size, self.cfg.eye_blur_sigma)
                terms["normal"] = L.normal_loss(
                    t.normals, t.normal_mask, maps.normals[0], cov, (1.0 - eye).clamp(0.0, 1.0), self.cfg.delta_n
                )
            if "sil" in w:
                terms["sil"] = L.silhouette_loss(t.fg_mask, maps.silhouette[0], t.valid_bg)
        if "lmk_iris" in w and self.iris_vertices is not None:
            xy, _ = project(world_to_camera(world[:, self.iris_vertices]), p.focal, p.principal_point, size)
            terms["lmk_iris"] = ((xy[0] - t.iris) / size).square().mean()
        terms.update({k: r.square().sum() for k, r in self.regularisers(p, w, shaped).items()})
        return {k: v * w[k] for k, v in terms.items()}

    def _samples(self, p: _Params) -> tuple[HeadMaps, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The samples the data terms count at ``p``, without gradients: the rendered maps, accepted UV
        correspondences (Nv,), and the covered pixels (S, S) that pass the dense UV and the normal outlier tests,
        with the normal errors (S, S, 3)."""
        t = self.targets
        with torch.no_grad():
            verts, canon, _, neck = self.geometry(p, True)
            world = self.world(p, verts, neck)
            maps = render_head(
                world, canon, self.faces, self.corner_uv, p.focal, p.principal_point, self.size, self.region_attr,
                cull_back=self.cfg.cull_back,
            )
            covered = maps.coverage[0] > 0
            xy, depth = project(world_to_camera(world[:, self.valid]), p.focal, p.principal_point, self.size)
            _, accepted = L.uv_correspondence(
                xy[0], depth[0], self.target_xy, self.matched, maps.depth[0], self.size, self.max_px,
                self.cfg.visibility_eps, squared=True,
            )
            uv_in = covered & t.uv_mask
            if self.cfg.dense_uv_max is not None:
                uv_in &= (t.uv - maps.uv[0]).square().sum(-1) < self.cfg.dense_uv_max ** 2
            normal_err = (t.normals - maps.normals[0]).abs()
            normal_in = covered & (t.normal_mask > 0) & (normal_err.mean(-1) < self.cfg.delta_n)
        return maps, accepted, uv_in, normal_in, normal_err

    def support(self, p: _Params) -> int:
        """Number of samples the data terms count at ``p`` (correspondences and pixels, see :meth:`_samples`)."""
        _, accepted, uv_in, normal_in, _ = self._samples(p)
        return int(accepted.sum()) + int(uv_in.sum()) + int(normal_in.sum())

    def linearise(self, p: _Params, w: dict[str, float], stride: int = _CURVATURE_PIXEL_STRIDE) -> _Linearisation:
        """Visibility, accepted correspondences and per-pixel weights at ``p`` (see :class:`_Linearisation`),
        for every ``stride``-th covered pixel (weighted ``stride`` times)."""
        maps, accepted, uv_in, normal_in, normal_err = self._samples(p)
        with torch.no_grad():
            tri_img = maps.rast[0, ..., 3].reshape(-1)
            pid = (tri_img > 0).nonzero().squeeze(1)
            pid = pid.index_select(0, torch.arange(0, pid.numel(), stride, device=pid.device))
            tid = tri_img.index_select(0, pid).long() - 1
            dtype = maps.uv.dtype
            eye = L.gaussian_blur(maps.regions[0, ..., 1], self.cfg.eye_blur_size, self.cfg.eye_blur_sigma)
            keep = (normal_in.to(dtype) * (1.0 - eye).clamp(0.0, 1.0)).reshape(-1).index_select(0, pid)
            err = normal_err.reshape(-1, 3).index_select(0, pid)
            uv_weight = uv_in.reshape(-1).index_select(0, pid).to(dtype) * stride
            normal_weight = keep[:, None] * stride / (2.0 * err.clamp(min=_IRLS_FLOOR))
            corners = self.faces.index_select(0, tid)
            around = torch.isin(self.faces, corners).any(1)
            wanted = [self.valid, self.faces[around].reshape(-1)]
            if self.iris_vertices is not None:
                wanted.append(self.iris_vertices)
            flame = _component_major(self.flame.restricted(torch.cat(wanted)))
            local = torch.full((self.flame.v_template.shape[0],), -1, dtype=torch.long, device=pid.device)
            local[flame.vertex_ids] = torch.arange(flame.vertex_ids.numel(), device=pid.device)
            iris = None if self.iris_vertices is None else local[self.iris_vertices]
        return _Linearisation(
            pid, tid, accepted.to(dtype), uv_weight, normal_weight,
            flame, local[self.valid], local[corners], iris, local[self.faces[around]],
        )

    def residuals(self, p: _Params, lin: _Linearisation, w: dict[str, float]) -> torch.Tensor:
        """Residual vector whose squared norm is the loss around ``lin``'s point, L1 normals reweighted.

        The silhouette term (a visibility effect) and the camera stage's L1 correspondences have no residuals
        here; the Levenberg-Marquardt acceptance test still sees them through :meth:`losses`.
        """
        t = self.targets
        size = self.size
        area = float(size * size)
        verts, canon, _, neck = self.geometry(p, "normal" in w, lin.flame, lin.normal_faces)
        cam = world_to_camera(self.world(p, verts, neck))
        parts = []
        if "uv_corr" in w:
            xy, _ = project(cam[:, lin.valid], p.focal, p.principal_point, size)
            scale = math.sqrt(w["uv_corr"] / (2.0 * self.valid.numel())) / size
            parts.append(((xy[0] - self.target_xy) * (lin.accepted[:, None] * scale)).reshape(-1))
        if "uv_dense" in w or "normal" in w:
            clip = clip_from_camera(cam, p.focal, p.principal_point, size)
            bary = pixel_barycentrics(clip, lin.corners, lin.pid, None, (size, size))
            u, v = bary[:, :1], bary[:, 1:]
            if "uv_dense" in w:
                c0, c1, c2 = self.corner_uv.view(-1, 3, 2).index_select(0, lin.tid).unbind(1)
                rendered = u * c0 + v * c1 + (1.0 - u - v) * c2
                scale = math.sqrt(w["uv_dense"] / (2.0 * area))
                pred = t.uv.reshape(-1, 2).index_select(0, lin.pid)
                parts.append(((pred - rendered) * (lin.uv_weight.sqrt()[:, None] * scale)).reshape(-1))
            if "normal" in w:
                n0, n1, n2 = canon[0].index_select(0, lin.corners.reshape(-1)).view(-1, 3, 3).unbind(1)
                rendered = torch.nn.functional.normalize(u * n0 + v * n1 + (1.0 - u - v) * n2, dim=-1, eps=1e-12)
                scale = math.sqrt(w["normal"] / (3.0 * area))
                pred = t.normals.reshape(-1, 3).index_select(0, lin.pid)
                parts.append(((pred - rendered) * (lin.normal_weight.sqrt() * scale)).reshape(-1))
        if "lmk_iris" in w and lin.iris is not None:
            xy, _ = project(cam[:, lin.iris], p.focal, p.principal_point, size)
            parts.append(((xy[0] - t.iris) * (math.sqrt(w["lmk_iris"] / t.iris.numel()) / size)).reshape(-1))
        shaped = self.flame.shaped(p.flame_params())[0] if "reg_mirror" in w else None
        parts.extend(r * math.sqrt(w[k]) for k, r in self.regularisers(p, w, shaped).items())
        return torch.cat(parts)


class _Adam:
    """An Adam stage (the reference's optimiser) over the free groups, stepping ``p`` in place."""

    def __init__(self, problem: _Problem, p: _Params, stage: StageSpec, groups: list[str]) -> None:
        self.problem, self.p, self.stage = problem, p, stage
        self.opt = torch.optim.Adam([{"params": p.groups[g], "lr": stage.lr[g]} for g in groups])
        self.frozen = None
        if not any(g in _FLAME_GROUPS for g in groups):  # pose and camera only: the head's shape stays fixed
            with torch.no_grad():
                self.frozen = problem.geometry(p, True)

    def step(self, step: int) -> tuple[dict[str, float], bool]:
        """One Adam step; returns the loss terms before it and whether everything stayed finite."""
        stage = self.stage
        if stage.lr_decay_at is not None and step == stage.lr_decay_at:
            for group in self.opt.param_groups:
                group["lr"] *= stage.lr_decay
        self.opt.zero_grad(set_to_none=True)
        terms = self.problem.losses(self.p, stage, self.frozen)
        total = sum(terms.values()) if terms else self.problem.flame.v_template.new_zeros(())
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

    def __init__(self, problem: _Problem, p: _Params, stage: StageSpec, groups: list[str]) -> None:
        self.problem, self.p, self.stage, self.groups = problem, p, stage, groups
        self.weights = {k: v for k, v in stage.weights.items() if v != 0.0}
        self.damping = _LM_DAMPING
        self.min_support = _SUPPORT_KEPT * problem.support(p)

    def _terms(self, x: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            terms = self.problem.losses(self.p.with_flat(self.groups, x), self.stage, None)
        values = {k: float(v) for k, v in terms.items()}
        values["total"] = sum(values.values())
        return values

    def _loss(self, x: torch.Tensor) -> float:
        """The loss at ``x``, or inf when it is not finite or too few samples still count: the data terms drop
        outliers and pixels off the head, so with poor predictions a large step could lower the loss by turning
        everything into an outlier (moving the head out of the picture, or right up to the camera)."""
        if self.problem.support(self.p.with_flat(self.groups, x)) < self.min_support:
            return math.inf
        value = self._terms(x)["total"]
        return value if math.isfinite(value) else math.inf

    def step(self, step: int) -> tuple[dict[str, float], bool]:
        """One linearisation and solve; returns the loss terms at the new point (the old one when no step lowered
        the loss, which is normal near convergence) and whether the loss and its gradient were finite."""
        x = self.p.flat(self.groups).requires_grad_(True)
        total = sum(self.problem.losses(self.p.with_flat(self.groups, x), self.stage, None).values())
        gradient, = torch.autograd.grad(total, x)
        x = x.detach()
        value = float(total.detach())
        if not (math.isfinite(value) and bool(torch.isfinite(gradient).all())):
            return self._terms(x), False
        lin = self.problem.linearise(self.p, self.weights)

        def residuals(y: torch.Tensor) -> torch.Tensor:
            return self.problem.residuals(self.p.with_flat(self.groups, y), lin, self.weights)

        curvature = gauss_newton_curvature(residuals, x)
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
) -> FitResult:
    """Fit FLAME and the camera to one image's predicted UV and normal maps.

    Parameters
    ----------
    prediction : Prediction
        ``uv`` (H, W, 2), ``normals`` (H, W, 3), ``mask`` (H, W) at the crop resolution (512).
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
    seed : RNG seed (PnP RANSAC); runs are deterministic for a given seed and device
    deterministic : on CUDA, run with torch's deterministic kernels (see
        :func:`~core.device.deterministic_kernels`); False trades run-to-run equality for speed. The CPU is
        deterministic either way; MPS has no such mode.
    init_pose : start from this pose instead of the configured initialisation (benchmarks)
    init_flame : start the head's FLAME parameters from these (batch 1; rotations in any form FLAME takes;
        the head pose is ``init_pose``'s, so ``global_pose`` and ``translation`` must be None) instead of the mean
        head: a warm start, e.g. from the truth in the ground-truth benchmark

    Returns
    -------
    FitResult
    """
    cfg = cfg or FitConfig.preset("balanced")
    if init_flame is not None and (init_flame.global_pose is not None or init_flame.translation is not None):
        raise ValueError("Give the head's starting pose as init_pose; init_flame's global_pose and translation must be None.")
    if device is not None:
        flame = flame.to(device)
    with deterministic_kernels(flame.v_template.device, deterministic):
        return _fit(prediction, crop, flame, uv_template, cfg, on_progress, should_cancel, seed, init_pose, init_flame)


def _fit(prediction, crop, flame: FlameModel, uv_template: UVTemplate, cfg: FitConfig, on_progress, should_cancel,
         seed: int, init_pose: PoseInit | None, init_flame: FlameParams | None) -> FitResult:
    """:func:`fit` on ``flame``'s device, its arguments checked."""
    flame = _component_major(flame)
    torch.manual_seed(seed)
    problem = _Problem(prediction, crop, flame, uv_template, cfg)
    ref = flame.v_template
    t = problem.targets
    if init_pose is None:
        if cfg.init == "pnp":
            with torch.no_grad():
                neutral = flame.neutral()[0][problem.valid]
            init_pose = initial_pose(
                neutral, problem.vertex_uv, t.uv, t.uv_mask, DEFAULT_FOCAL, np.zeros(2), cfg.delta_uv,
                cfg.pnp_reprojection_px * cfg.resolution / 256.0, seed,
            )
        else:
            init_pose = frontal_pose()
    log.info("Initial pose: %s (%d pairs, %d inliers).", init_pose.method, init_pose.pairs, init_pose.inliers)
    p = _Params(flame, init_pose, ref, flame.has_eyelids, init_flame)
    if cfg.pose_frame == "neck":
        problem.root_to_neck_frame(p)
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
        n_matched = problem.match()
        log.info("Stage %s: %d %s steps, %d UV-matched vertices.", stage.name, stage.steps, stage.method, n_matched)
        stepper = (_LevenbergMarquardt if stage.method == "lm" else _Adam)(problem, p, stage, groups)
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
    return _result(problem, p, prediction, crop, init_pose, history, cfg, skipped)


def _result(problem: _Problem, p: _Params, prediction, crop, init_pose: PoseInit, history, cfg: FitConfig, skipped: int) -> FitResult:
    flame = problem.flame
    with torch.no_grad():
        out = flame(p.flame_params())
        rot, trans = (x.detach() for x in problem.head_pose(p, out.joint_transforms[0, _NECK_JOINT]))
        world = out.vertices[0] @ rot.T + trans
        neutral = flame.neutral(p.shape)[0]

        def aa(r6: torch.Tensor) -> np.ndarray:
            return matrix_to_axis_angle(rotation_6d_to_matrix(r6.detach()))[0].cpu().numpy().astype(np.float32)

        focal = float(p.focal.reshape(-1)[0])
        pp = p.principal_point[0].cpu().double().numpy()
    crop_size = int(np.asarray(prediction.mask).shape[1])
    k_crop = intrinsics_matrix(focal, pp, crop_size)
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

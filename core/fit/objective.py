"""The fitting objective: every term stated once, for both optimisers.

A term compares some *samples* (vertices with 2D targets, the pixels the head covers, the whole image, or the
parameters themselves) and states, once:

* its **residual** for those samples, (N, C);
* its **acceptance test** (the reference's outlier rejection: which samples count) and the per-sample **weight**;
* its **robust form**, squared or L1, and its **normaliser** ``n`` (the reference's "mask, then mean": rejected
  samples count as zeros in the mean over all candidates, so a term with few valid samples weighs less).

With the stage's weight ``w`` the term's loss is ``w / n * sum_i a_i rho(r_i)`` (``a_i`` the weights, ``rho`` the
square or the absolute value). Adam minimises the sum of these, re-running every acceptance test at every step
(:meth:`Objective.losses`). Levenberg-Marquardt fixes the acceptance, the visibility and a subsample of the
pixels at a linearisation point and takes the Jacobian of the residual vector
``sqrt(w / n * a_i * irls_i) * r_i(x)`` (:meth:`Objective.linearise`, :meth:`Objective.residuals`), where
``irls_i = 1 / (2 max(|r_i|, floor))`` turns an L1 term into least squares with the same gradient (IRLS); its
acceptance test of a step uses the loss itself. Terms whose gradient comes from visibility alone (the
silhouette) enter the loss but not the linearisation.

Geometry shared by every term (:class:`View`): the posed head in the fixed camera, its canonical (neckless)
vertex normals, and, for the loss, the rasterization with its covered pixels, depth and region images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..flame.data import NECK
from ..flame.io import LandmarkEmbedding
from ..flame.landmarks import GROUPS, LID_PAIRS, MOUTH_PAIRS, LandmarkPoints, group_points, pair_points
from ..flame.model import FlameModel, FlameParams
from ..flame.rotation import as_rotation_matrix, matrix_to_rotation_6d, rotation_6d_to_matrix
from ..flame.uv import UVTemplate, check_topology
from ..render.camera import DEFAULT_FOCAL, Camera, world_to_camera
from ..render.raster import Rasterization, antialias, interpolate, interpolate_covered, pixel_barycentrics, rasterize
from . import losses as L
from .config import BOUNDS, PRIOR_TERMS, FitConfig, StageSpec
from .init import PoseInit
from .maps import corner_uv_tensor, vertex_normals
from .regions import derive_regions
from .targets import build_targets

__all__ = ["Params", "FitData", "View", "Objective", "Linearisation", "LandmarkTargets", "IDENTITY_6D", "IRIS_VERTICES"]

IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: FLAME vertices at the iris centres used by the reference (sorted by x: the subject's right eye first); the iris
#: term uses them on real FLAME when the landmark embedding has no iris points.
IRIS_VERTICES = (4051, 4597)
#: The landmark terms and the landmark group (or closure pairs) each compares.
LANDMARK_TERMS = {
    "lmk_static": "static", "lmk_eye": "eye", "lmk_iris": "iris", "lmk_mouth": "mouth", "lmk_contour": "contour",
    "lmk_dense": "dense", "lmk_lid": LID_PAIRS, "lmk_mouth_lid": MOUTH_PAIRS,
}
#: Smallest residual (per component) in the L1 reweighting; bounds the weight of samples that already fit.
IRLS_FLOOR = 1e-3


# ------------------------------------------------------------------------------------------------ parameters
class Params:
    """The fitter's free variables (leaf tensors in named groups) and their mapping to FLAME and the camera.

    Groups (see :data:`.config.PARAM_GROUPS`): ``shape`` (1, Ns), ``expression`` (1, Ne), ``jaw``, ``neck``
    (1, 6) 6D rotations, ``eyes`` [left, right] (1, 6) each, ``eyelids`` (1, 2) (empty without eyelid
    blendshapes), ``rotation`` (1, 6) and ``translation`` (1, 3) of the free head pose, ``focal`` (1,) and
    ``principal_point`` (1, 2); ``focal`` and ``principal_point`` start at the given values.
    """

    def __init__(
        self, flame: FlameModel, pose: PoseInit, like: torch.Tensor, eyelids: bool, start: FlameParams | None = None,
        focal: float = DEFAULT_FOCAL, principal_point: tuple[float, float] = (0.0, 0.0),
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
        ident = np.array([IDENTITY_6D])
        self.groups: dict[str, list[torch.Tensor]] = {
            "shape": [leaf(given("shape", np.zeros((1, flame.n_shape))))],
            "expression": [leaf(given("expression", np.zeros((1, flame.n_expr))))],
            "jaw": [leaf(given("jaw_pose", ident))],
            "neck": [leaf(given("neck_pose", ident))],
            "eyes": [leaf(given("eye_pose_left", ident)), leaf(given("eye_pose_right", ident))],
            "eyelids": [leaf(given("eyelids", np.zeros((1, 2))))] if eyelids else [],
            "rotation": [leaf(matrix_to_rotation_6d(torch.as_tensor(pose.rotation)).numpy()[None])],
            "translation": [leaf(pose.translation[None])],
            "focal": [leaf([focal])],
            "principal_point": [leaf(np.asarray(principal_point, dtype=np.float64).reshape(1, 2))],
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

    def camera(self, size: int) -> Camera:
        """The fitted camera at the fitting resolution."""
        return Camera(self.focal, self.principal_point, size)

    def flat(self, names: list[str]) -> torch.Tensor:
        """The named groups' values as one detached (P,) vector (group order, then tensor order)."""
        return torch.cat([t.detach().reshape(-1) for g in names for t in self.groups[g]])

    def with_flat(self, names: list[str], x: torch.Tensor) -> Params:
        """A view of these parameters with the named groups taken from the (P,) vector ``x`` (see :meth:`flat`)."""
        view = object.__new__(Params)
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


# ---------------------------------------------------------------------------------------------- fit data
@dataclass
class Geometry:
    """The head at one point of the parameters, of the full FLAME model or a restricted one (V' vertices).

    Attributes
    ----------
    vertices : (1, V', 3) posed vertices, FLAME frame (before the head pose)
    normals : (1, V', 3) canonical vertex normals of the neckless posed mesh, or None when not asked for
    shaped : (V', 3) unposed shape + expression mesh
    neck : (4, 4) the neck joint's transform in FLAME's frame
    """

    vertices: torch.Tensor
    normals: torch.Tensor | None
    shaped: torch.Tensor
    neck: torch.Tensor


class FitData:
    """Everything constant during a fit: the targets, vertex sets, topology, UVs and the UV matches of a stage."""

    def __init__(
        self, prediction, crop, flame: FlameModel, uv_template: UVTemplate, cfg: FitConfig,
        embedding: LandmarkEmbedding | None = None,
    ) -> None:
        ref = flame.v_template
        check_topology(uv_template, flame.faces, ref.shape[0])
        self.flame = flame
        self.cfg = cfg
        self.size = cfg.resolution
        self.faces = flame.faces
        regions = derive_regions(
            ref.detach().cpu().double().numpy(), self.faces.cpu().numpy(), flame.J_regressor.detach().cpu().double().numpy()
        )
        self.regions = regions
        self.valid = torch.as_tensor(np.flatnonzero(regions.uv_valid), device=ref.device)
        self.vertex_uv = torch.as_tensor(uv_template.vertex_uv, dtype=ref.dtype, device=ref.device)[self.valid]
        self.region_attr = torch.as_tensor(
            np.stack([regions.silhouette, regions.eye_region], 1), dtype=ref.dtype, device=ref.device
        )
        self.corner_uv = corner_uv_tensor(uv_template, ref)
        n_faces = self.faces.shape[0]
        self.uv_tri = torch.arange(n_faces * 3, device=ref.device).view(n_faces, 3)
        self.mirror = torch.as_tensor(uv_template.mirror_index, device=ref.device)
        self.targets = build_targets(prediction, crop, self.size, ref)
        self.landmarks = self._landmarks(getattr(crop, "landmarks", None), embedding, flame, ref)
        self.max_px = cfg.dist_uv * self.size / 256.0
        self.ident6 = torch.tensor([IDENTITY_6D], dtype=ref.dtype, device=ref.device)
        self.target_xy = None
        self.matched = None

    def _landmarks(self, detected, embedding: LandmarkEmbedding | None, flame: FlameModel, ref: torch.Tensor) -> dict:
        """The landmark targets per landmark term (see :data:`LANDMARK_TERMS`), for the groups the embedding places."""
        self.landmark_ids: dict[str, list[int]] = {}
        if detected is None:
            return {}
        faces = flame.faces.cpu().numpy()
        found: dict[str, LandmarkPoints | tuple[LandmarkPoints, LandmarkPoints]] = {}
        if embedding is not None:
            for term, group in LANDMARK_TERMS.items():
                points = (pair_points(group, embedding, faces, detected) if isinstance(group, tuple)
                          else group_points(group, embedding, faces, detected))
                if points is not None:
                    found[term] = points
        if "lmk_iris" not in found and flame.release != "synthetic" and ref.shape[0] > max(IRIS_VERTICES):
            # the reference's iris vertices, sorted by x (the subject's right eye first, as MediaPipe's 468, 473)
            ids = sorted(IRIS_VERTICES, key=lambda i: float(ref[i, 0]))
            iris = np.asarray(detected, dtype=np.float64)[[468, 473]] if len(detected) > 473 else np.full((2, 2), np.nan)
            found["lmk_iris"] = LandmarkPoints(np.array([468, 473]), np.array(ids)[:, None], np.ones((2, 1)), iris)
        scale = self.size / float(self.targets.crop_size)

        def convert(points: LandmarkPoints) -> LandmarkTargets:
            targets = torch.as_tensor(np.nan_to_num(points.targets) * scale, dtype=ref.dtype, device=ref.device)
            return LandmarkTargets(
                torch.as_tensor(points.corners, device=ref.device), torch.as_tensor(points.weights, dtype=ref.dtype, device=ref.device),
                targets, torch.as_tensor(np.isfinite(points.targets).all(1), device=ref.device),
            )

        self.landmark_ids = {k: v.ids.tolist() for k, v in found.items() if not isinstance(v, tuple)}
        return {k: tuple(convert(p) for p in v) if isinstance(v, tuple) else convert(v) for k, v in found.items()}

    def match(self) -> int:
        """Nearest-pixel matching in UV space (once per stage, as in the reference); returns the matches (0 without
        a prediction)."""
        t = self.targets
        if not t.has_maps:
            return 0
        self.target_xy, sq = L.match_uv(self.vertex_uv, t.uv, t.uv_mask)
        self.matched = sq < self.cfg.delta_uv
        return int(self.matched.sum())

    def geometry(
        self, p: Params, need_normals: bool, flame: FlameModel | None = None, faces: torch.Tensor | None = None
    ) -> Geometry:
        """The head at ``p``, of the full model or of a restricted one (``flame``, with the ``faces`` whose normals
        count)."""
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
            verts, normals = out.vertices[:1], vertex_normals(out.vertices[1:], faces)
        else:
            out = flame(params)
            verts, normals = out.vertices, None
        return Geometry(verts, normals, out.vertices_shaped[0], out.joint_transforms[0, NECK])

    def head_pose(self, p: Params, neck: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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

    def world(self, p: Params, geometry: Geometry) -> torch.Tensor:
        """World-space vertices ``R v + t`` (1, V', 3), the root's pose from :meth:`head_pose`."""
        rot, t = self.head_pose(p, geometry.neck)
        return geometry.vertices @ rot.T + t[:, None]

    def root_to_neck_frame(self, p: Params) -> None:
        """Re-express ``p``'s pose, given as the root's, as the neck joint frame's (for ``pose_frame == "neck"``):
        ``Rf = R N``, ``tf = R j + t`` at ``p``'s current FLAME parameters, so that :meth:`head_pose` gives it back."""
        with torch.no_grad():
            neck = self.flame(p.flame_params()).joint_transforms[0, NECK]
            rot = rotation_6d_to_matrix(p.rotation)[0]
            p.translation.add_((rot @ neck[:3, 3])[None])
            p.rotation.copy_(matrix_to_rotation_6d(rot @ neck[:3, :3])[None])


# ---------------------------------------------------------------------------------------------------- view
@dataclass
class PixelSamples:
    """Pixels at which the pixel terms compare the prediction with the rendered head.

    ``rast.pid`` are flat pixel indices into (1, S, S); ``rast.tid`` indexes the rows of ``tri`` (vertex rows of the
    view's vertices) and ``uv_tri`` (rows of :attr:`FitData.corner_uv`); ``rast.bary`` are the barycentrics there.
    """

    rast: Rasterization
    tri: torch.Tensor
    uv_tri: torch.Tensor


class View:
    """The head seen by the camera at one point of the parameters: what the terms read.

    A full view (all vertices, rasterized) serves the loss and every acceptance test; a linearised view
    (a restricted model, the pixels fixed at the linearisation point) serves the residuals.
    """

    def __init__(self, data: FitData, p: Params, geometry: Geometry | None, local: torch.Tensor | None) -> None:
        self.data, self.p, self.geometry, self.local = data, p, geometry, local
        self.camera = p.camera(data.size)
        # (no geometry: a view of the parameters alone, for the priors)
        self.cam = None if geometry is None else world_to_camera(data.world(p, geometry))
        self.pixels: PixelSamples | None = None
        self.rast: Rasterization | None = None
        self._clip: torch.Tensor | None = None
        self._images: dict[str, torch.Tensor] = {}

    def project(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel positions (N, 2) and depths (N,) of the full model's vertices ``ids``."""
        rows = ids if self.local is None else self.local[ids]
        xy, depth = self.camera.project(self.cam[:, rows])
        return xy[0], depth[0]

    def shaped_full(self) -> torch.Tensor:
        """(V, 3) the full model's unposed shape + expression mesh."""
        if self.local is None and self.geometry is not None:
            return self.geometry.shaped
        return self.data.flame.shaped(self.p.flame_params())[0]

    def rasterize(self, differentiable: bool) -> None:
        """Rasterize the full mesh (``differentiable``: the barycentrics carry gradients to the parameters)."""
        clip = self.camera.clip(self.cam)
        self._clip = clip if differentiable else clip.detach()
        self.rast = rasterize(self._clip, self.data.faces, (self.data.size, self.data.size), cull_back=self.data.cfg.cull_back)
        self.pixels = PixelSamples(self.rast, self.data.faces, self.data.uv_tri)

    def depth_image(self) -> torch.Tensor:
        """(S, S) camera distance of the visible surface, +inf on background (no gradient)."""
        if "depth" not in self._images:
            with torch.no_grad():
                depth = interpolate(-self.cam.detach()[..., 2:3], self.rast, self.data.faces)[0, ..., 0]
                covered = self.rast.coverage(torch.bool)[0]
                self._images["depth"] = torch.where(covered, depth, torch.full_like(depth, float("inf")))
        return self._images["depth"]

    def region_image(self) -> torch.Tensor:
        """(1, S, S, 2) interpolated silhouette and eye-region indicators (differentiable through the barycentrics)."""
        if "regions" not in self._images:
            self._images["regions"] = interpolate(self.data.region_attr, self.rast, self.data.faces)
        return self._images["regions"]

    def silhouette(self) -> torch.Tensor:
        """(S, S) the antialiased silhouette-region channel (silhouette gradients to the parameters)."""
        regions = self.region_image()
        return antialias(regions[..., 0:1].contiguous(), self.rast, self._clip, self.data.faces)[0, ..., 0]

    def eye_damping(self) -> torch.Tensor:
        """(S, S) weight of the normal term: 1 minus the blurred rendered eye mask (no gradient)."""
        if "eye" not in self._images:
            cfg = self.data.cfg
            eye = L.gaussian_blur(self.region_image()[0, ..., 1].detach(), cfg.eye_blur_size, cfg.eye_blur_sigma)
            self._images["eye"] = (1.0 - eye).clamp(0.0, 1.0)
        return self._images["eye"]


# --------------------------------------------------------------------------------------------------- terms
@dataclass
class Acceptance:
    """Which samples count, (N,) bool, and their weights, (N,) or (N, C) float (zero where not accepted)."""

    accepted: torch.Tensor
    weight: torch.Tensor


class Term:
    """One weighted term of the objective (see the module docstring).

    Attributes
    ----------
    name : the loss term's name (:data:`.config.LOSS_TERMS`)
    robust : "squared", "l1" or "linear" (the residual itself, for a term that is not a penalty)
    linearised : whether Levenberg-Marquardt's residual vector carries the term
    pixels : whether the samples are the view's covered pixels (subsampled in a linearisation)
    """

    name: str
    robust = "squared"
    linearised = True
    pixels = False

    def normaliser(self) -> float:
        raise NotImplementedError

    def candidates(self, view: View):
        """What the term compares at ``view`` (kept fixed through a linearisation); None for pixel terms."""
        return None

    def residual(self, view: View, cand) -> torch.Tensor:
        """(N, C) residuals of the candidates at ``view``, differentiable in the parameters."""
        raise NotImplementedError

    def accept(self, view: View, cand, residual: torch.Tensor) -> Acceptance:
        """The acceptance test at a full view, given the (detached) residuals."""
        ones = torch.ones(residual.shape[0], dtype=residual.dtype, device=residual.device)
        return Acceptance(ones.bool(), ones)


@dataclass
class VertexCandidates:
    """Vertices of the full model (N,) and their 2D targets (N, 2) in pixels at the fitting resolution."""

    ids: torch.Tensor
    targets: torch.Tensor

    def vertex_ids(self) -> torch.Tensor:
        return self.ids


class UVCorrespondence(Term):
    """UV -> 2D vertex correspondences (reference ``loss/uv``): each UV-valid vertex against the pixel whose
    predicted UV is nearest to its own (matched once per stage). Accepted while the UV match is close enough, the
    projection lies within ``dist_uv`` pixels (L1) of the target, and the vertex is visible. Residual: the pixel
    offset divided by the image size; normaliser: two coordinates per UV-valid vertex."""

    def __init__(self, data: FitData, name: str, widen_quantile: float | None) -> None:
        self.data, self.name, self.widen_quantile = data, name, widen_quantile
        self.robust = "squared" if name == "uv_corr" else "l1"

    def normaliser(self) -> float:
        return 2.0 * self.data.valid.numel()

    def candidates(self, view: View) -> VertexCandidates:
        return VertexCandidates(self.data.valid, self.data.target_xy)

    def residual(self, view: View, cand: VertexCandidates) -> torch.Tensor:
        xy, _ = view.project(cand.ids)
        return (xy - cand.targets) / self.data.size

    def accept(self, view: View, cand: VertexCandidates, residual: torch.Tensor) -> Acceptance:
        data = self.data
        with torch.no_grad():
            xy, depth = view.project(cand.ids)
            xy, depth = xy.detach(), depth.detach()
            dist = (xy - cand.targets).abs().sum(-1)
            max_px = data.max_px
            if self.widen_quantile is not None and bool(data.matched.any()):
                # camera stage: widen the radius to a quantile of the current distances (a start far off the truth)
                max_px = max(max_px, float(dist[data.matched].quantile(self.widen_quantile)))
            visible = depth < L.sample_nearest(view.depth_image(), xy, float("inf")) + data.cfg.visibility_eps
            accepted = data.matched & (dist < max_px) & visible
        return Acceptance(accepted, accepted.to(residual.dtype))


@dataclass
class LandmarkTargets:
    """Landmarks as points on the mesh with their detected positions, on the fitting device.

    Attributes
    ----------
    corners : (L, K) long vertex indices of the full model; weights : (L, K) their weights (rows sum to 1)
    targets : (L, 2) detected positions in pixels at the fitting resolution (0 where not detected)
    detected : (L,) bool
    """

    corners: torch.Tensor
    weights: torch.Tensor
    targets: torch.Tensor
    detected: torch.Tensor

    def vertex_ids(self) -> torch.Tensor:
        return self.corners.reshape(-1)


def _landmark_points(view: View, lm: LandmarkTargets) -> torch.Tensor:
    """(L, 3) camera-space points of the landmarks at ``view``."""
    rows = lm.corners if view.local is None else view.local[lm.corners]
    return (view.cam[0].index_select(0, rows.reshape(-1)).view(*rows.shape, 3) * lm.weights[..., None]).sum(1)


def _facing(view: View, lm: LandmarkTargets) -> torch.Tensor:
    """(L,) bool: the triangle under each landmark (its first one) faces the camera at ``view``."""
    rows = lm.corners[:, :3] if view.local is None else view.local[lm.corners[:, :3]]
    c = view.cam[0].detach().index_select(0, rows.reshape(-1)).view(-1, 3, 3)
    normal = torch.linalg.cross(c[:, 1] - c[:, 0], c[:, 2] - c[:, 0], dim=-1)
    return (normal * c.mean(1)).sum(-1) < 0.0  # the camera looks down -z from the origin


class Landmarks(Term):
    """Detected landmarks against their points on the mesh (the reference's 68-landmark, eye-contour, mouth and iris
    terms): pixel offsets divided by the image size. Accepted where detected and where the landmark's triangle faces
    the camera. Normaliser: two coordinates per landmark of the group."""

    def __init__(self, data: FitData, name: str) -> None:
        self.data, self.name = data, name
        self.points: LandmarkTargets = data.landmarks[name]

    def normaliser(self) -> float:
        return 2.0 * self.points.targets.shape[0]

    def candidates(self, view: View) -> LandmarkTargets:
        return self.points

    def residual(self, view: View, cand: LandmarkTargets) -> torch.Tensor:
        xy, _ = view.camera.project(_landmark_points(view, cand)[None])
        return (xy[0] - cand.targets) / self.data.size

    def accept(self, view: View, cand: LandmarkTargets, residual: torch.Tensor) -> Acceptance:
        accepted = cand.detected & _facing(view, cand)
        return Acceptance(accepted, accepted.to(residual.dtype))


class Closure(Term):
    """Lid (or lip) closure (the reference's ``lmk_eye`` term): the image offset from each lower to its upper point
    against the detected one, divided by the image size. Normaliser: two coordinates per pair."""

    def __init__(self, data: FitData, name: str) -> None:
        self.data, self.name = data, name
        self.upper, self.lower = data.landmarks[name]

    def normaliser(self) -> float:
        return 2.0 * self.upper.targets.shape[0]

    def candidates(self, view: View) -> tuple[LandmarkTargets, LandmarkTargets]:
        return self.upper, self.lower

    def residual(self, view: View, cand) -> torch.Tensor:
        upper, lower = cand
        xy, _ = view.camera.project(torch.stack([_landmark_points(view, upper), _landmark_points(view, lower)]))
        return ((xy[0] - xy[1]) - (upper.targets - lower.targets)) / self.data.size

    def accept(self, view: View, cand, residual: torch.Tensor) -> Acceptance:
        upper, lower = cand
        accepted = upper.detected & lower.detected & _facing(view, upper)
        return Acceptance(accepted, accepted.to(residual.dtype))


class DenseUV(Term):
    """Predicted against rendered UV at every covered pixel (reference ``loss/uv_pixel``), inside the UV mask;
    with ``dense_uv_max`` pixels whose UV distance reaches it are rejected (another part of the UV layout: an
    eyeball seen through the lid, the far side of a seam). Normaliser: every pixel and channel of the image."""

    name = "uv_dense"
    pixels = True

    def __init__(self, data: FitData) -> None:
        self.data = data

    def normaliser(self) -> float:
        return 2.0 * self.data.size ** 2

    def residual(self, view: View, cand) -> torch.Tensor:
        px = view.pixels
        rendered = interpolate_covered(self.data.corner_uv, px.rast, px.uv_tri)
        return self.data.targets.uv.reshape(-1, 2).index_select(0, px.rast.pid) - rendered

    def accept(self, view: View, cand, residual: torch.Tensor) -> Acceptance:
        pid = view.pixels.rast.pid
        accepted = self.data.targets.uv_mask.reshape(-1).index_select(0, pid)
        limit = self.data.cfg.dense_uv_max
        if limit is not None:
            accepted = accepted & (residual.square().sum(-1) < limit * limit)
        return Acceptance(accepted, accepted.to(residual.dtype))


class Normals(Term):
    """Predicted against rendered canonical normals (reference ``loss/normal``), L1, inside the normal mask;
    pixels whose mean absolute error reaches ``delta_n`` are rejected, and the blurred rendered eye region damps
    the rest. Normaliser: every pixel and channel of the image."""

    name = "normal"
    robust = "l1"
    pixels = True

    def __init__(self, data: FitData) -> None:
        self.data = data

    def normaliser(self) -> float:
        return 3.0 * self.data.size ** 2

    def residual(self, view: View, cand) -> torch.Tensor:
        px = view.pixels
        rendered = torch.nn.functional.normalize(
            interpolate_covered(view.geometry.normals, px.rast, px.tri), dim=-1, eps=1e-12
        )
        return self.data.targets.normals.reshape(-1, 3).index_select(0, px.rast.pid) - rendered

    def accept(self, view: View, cand, residual: torch.Tensor) -> Acceptance:
        pid = view.pixels.rast.pid
        mask = self.data.targets.normal_mask.reshape(-1).index_select(0, pid)
        accepted = (residual.abs().mean(-1) < self.data.cfg.delta_n) & (mask > 0)
        damping = view.eye_damping().reshape(-1).index_select(0, pid)
        return Acceptance(accepted, accepted.to(residual.dtype) * mask * damping)


class Silhouette(Term):
    """The rendered face region (antialiased) against the predicted foreground, on background pixels only
    (reference ``loss/sil``): keeps the head from spilling over the background. L1 over the whole image; its
    gradient comes from the silhouette's edges, so it enters the loss, not the linearisation."""

    name = "sil"
    robust = "l1"
    linearised = False

    def __init__(self, data: FitData) -> None:
        self.data = data

    def normaliser(self) -> float:
        return float(self.data.size ** 2)

    def residual(self, view: View, cand) -> torch.Tensor:
        return (self.data.targets.fg_mask - view.silhouette()).reshape(-1, 1)

    def accept(self, view: View, cand, residual: torch.Tensor) -> Acceptance:
        weight = self.data.targets.valid_bg.reshape(-1)
        return Acceptance(weight > 0, weight)


class Prior(Term):
    """A regulariser: a residual vector of the parameters (or of the unposed mesh), squared and summed.

    ``linear``: the residual is linear in the free parameters (every prior of the reference is: coefficients, 6D
    rotations, the mirror offsets of the blendshape mesh), so its Gauss-Newton curvature is the same everywhere and
    Levenberg-Marquardt forms it once per stage (:meth:`Objective.constant_curvature`) instead of at every iteration.
    """

    linear = True

    def __init__(self, name: str, residual: Callable[[View], torch.Tensor]) -> None:
        self.name, self._residual = name, residual

    def normaliser(self) -> float:
        return 1.0

    def residual(self, view: View, cand) -> torch.Tensor:
        return self._residual(view).reshape(-1, 1)


class Bounds(Prior):
    """Plausibility bounds (:data:`.config.BOUNDS`): how far the jaw, neck and eye rotations, the identity
    coefficients, the normalised focal and the head's distance from the camera (metres) are beyond human or
    photographic ranges; zero inside them. A rotation's extent about each axis is read as the sine of its angle
    there (the skew part of its matrix, ``sin(angle) * axis``), so a bound of ``a`` radians is ``sin(a)``: exact for
    rotations about one axis, cheap and smooth under the Levenberg-Marquardt Jacobian."""

    linear = False

    def __init__(self, data: FitData) -> None:
        super().__init__("reg_bounds", lambda view: torch.cat([e.reshape(-1) for e in self.excess(view.p).values()]))
        self.data = data

    def excess(self, p: Params) -> dict[str, torch.Tensor]:
        """Each bounded quantity's distance beyond its range (zero inside), by name."""
        b = BOUNDS

        def sines(r6: torch.Tensor) -> torch.Tensor:  # (N, 6) -> (N, 3): sin(angle) * axis
            m = rotation_6d_to_matrix(r6)
            return 0.5 * torch.stack([m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1)

        eyes = p.groups["eyes"]
        jaw = sines(p.jaw)[0]
        lo, hi = math.sin(b["jaw_open"][0]), math.sin(b["jaw_open"][1])
        distance = 1.0 - p.translation[0, 2:3]  # the camera sits at z = 1
        return {
            "jaw opening": (lo - jaw[:1]).clamp(min=0.0) + (jaw[:1] - hi).clamp(min=0.0),
            "jaw sideways": (jaw[1:].abs() - math.sin(b["jaw_side"])).clamp(min=0.0),
            "neck rotation": (sines(p.neck)[0].abs() - math.sin(b["neck"])).clamp(min=0.0),
            "eye rotation": (sines(torch.cat([eyes[0], eyes[1]])).abs().reshape(-1) - math.sin(b["eyes"])).clamp(min=0.0),
            "identity (head size and shape)": (p.shape[0].abs() - b["shape"]).clamp(min=0.0),
            "focal length": (b["focal"][0] - p.focal.reshape(-1)).clamp(min=0.0) + (p.focal.reshape(-1) - b["focal"][1]).clamp(min=0.0),
            "distance": (b["distance"][0] - distance).clamp(min=0.0) + (distance - b["distance"][1]).clamp(min=0.0),
        }


class SizeMarginal(Term):
    """The volume of the head's size along the scale the image cannot see (:data:`.config.SIZE_MARGINAL`):
    ``-kappa * log(distance)``, the distance from the camera of the head's origin (mean over frames). Scaling the
    head, its blendshape offsets and its translation about the camera leaves the image as it is and the distance
    in proportion to the size, so this is ``-kappa * log(size)`` up to a constant. ``kappa`` is 0 until the
    Levenberg-Marquardt stage sets it at its start (:meth:`Objective.set_size_kappa`). Linear in its residual, not
    least squares: it enters the loss and its gradient, not the linearisation."""

    name = "size_marginal"
    robust = "linear"
    linearised = False

    def __init__(self) -> None:
        self.kappa = 0.0

    def normaliser(self) -> float:
        return 1.0

    def residual(self, view: View, cand) -> torch.Tensor:
        distance = 1.0 - view.p.translation[:, 2]  # the camera sits at z = 1
        return (-self.kappa * torch.log(distance.clamp(min=1e-6)).mean()).reshape(1, 1)


def _priors(data: FitData, weights: dict[str, float]) -> list[tuple[Term, float]]:
    """The regularisers among ``weights``, each with its weight. No MICA identity here, so the reference's two shape
    priors (towards MICA's code and towards zero) are one term, ``reg_shape``, with their summed weight."""
    ident = data.ident6

    def eyes(view: View) -> list[torch.Tensor]:
        return view.p.groups["eyes"]

    table = {
        "reg_expression": lambda v: v.p.expression,
        "reg_shape": lambda v: v.p.shape,
        "reg_jaw": lambda v: ident - v.p.jaw,
        "reg_neck": lambda v: ident - v.p.neck,
        "reg_eyes": lambda v: torch.cat([(ident - eyes(v)[0]).reshape(-1), (ident - eyes(v)[1]).reshape(-1)]),
        "reg_eye_sym": lambda v: eyes(v)[0] - eyes(v)[1],
        # mean over vertices of the squared mirror distance
        "reg_mirror": lambda v: L.mirror_offsets(v.shaped_full(), data.mirror) / math.sqrt(data.mirror.numel()),
        "reg_pp": lambda v: v.p.principal_point,
    }
    shape_weight = weights.get("reg_shape", 0.0) + weights.get("reg_shape_general", 0.0)
    out = []
    for name, fn in table.items():
        weight = shape_weight if name == "reg_shape" else weights.get(name, 0.0)
        if weight != 0.0:
            out.append((Prior(name, fn), weight))
    return out


# ---------------------------------------------------------------------------------------------- objective
@dataclass
class Linearisation:
    """What the residuals hold fixed around one point: the model restricted to the vertices they read, the pixel
    subsample with its triangles, and each term's candidates and residual scale.

    Attributes
    ----------
    flame : the FLAME model restricted to the read vertices (see :meth:`FlameModel.restricted`): the vertex terms'
        vertices, the pixels' triangle corners and their neighbours (for the corners' normals), about half the
        mesh; the forward-mode Jacobian's cost follows the vertex count
    local : (V,) long, full-model vertex -> row of ``flame`` (-1 where not kept)
    normal_faces : (Fn, 3) the triangles around the pixels' corners, as rows of ``flame``'s vertices
    pid, tri, uv_tri, depth : the pixel subsample (flat pixel ids, corner rows of ``flame``, corner-UV rows, z/w)
    parts : per linearised term, its candidates and (N, C) residual scale ``sqrt(w / n * a * irls)``
    """

    flame: FlameModel
    local: torch.Tensor
    normal_faces: torch.Tensor
    pid: torch.Tensor
    tri: torch.Tensor
    uv_tri: torch.Tensor
    depth: torch.Tensor
    parts: list[tuple[Term, object, torch.Tensor]]


class Objective:
    """The weighted terms of one stage (weights from :class:`~.config.StageSpec`; zero weights drop a term)."""

    def __init__(self, data: FitData, stage: StageSpec) -> None:
        self.data = data
        w = {k: v for k, v in stage.weights.items() if v != 0.0}
        terms: list[tuple[Term, float]] = []
        widen = data.cfg.camera_accept_quantile if stage.name == "camera" else None
        for name in ("uv_corr", "uv_corr_l1"):
            if name in w:
                terms.append((UVCorrespondence(data, name, widen), w[name]))
        for cls in (DenseUV, Normals, Silhouette):
            if cls.name in w:
                terms.append((cls(data), w[cls.name]))
        for name, group in LANDMARK_TERMS.items():
            if name in w and name in data.landmarks:
                terms.append(((Closure if isinstance(group, tuple) else Landmarks)(data, name), w[name]))
        terms.extend(_priors(data, w))
        if "reg_bounds" in w:
            terms.append((Bounds(data), w["reg_bounds"]))
        if "size_marginal" in w:
            terms.append((SizeMarginal(), w["size_marginal"]))
        self.terms = terms
        names = {t.name for t, _ in terms}
        self.need_normals = "normal" in names
        self.need_pixels = any(t.pixels or isinstance(t, Silhouette) for t, _ in terms)
        self.need_raster = self.need_pixels or any(isinstance(t, UVCorrespondence) for t, _ in terms)
        #: Tangents per forward-mode pass of the Jacobian: few with pixel terms (tens of thousands of residuals each,
        #: memory), many without (the landmarks' few thousand; fewer passes, less Python overhead).
        self.jacobian_chunk = 64 if self.need_pixels else 512

    # -------------------------------------------------------------------------------------------- the loss
    def view(self, p: Params, frozen: Geometry | None = None) -> View:
        """The full view at ``p`` (``frozen``: the head's geometry held fixed, only pose and camera free)."""
        geometry = frozen if frozen is not None else self.data.geometry(p, self.need_normals)
        view = View(self.data, p, geometry, None)
        if self.need_raster:
            view.rasterize(differentiable=self.need_pixels)
        return view

    def losses(self, p: Params, frozen: Geometry | None = None) -> dict[str, torch.Tensor]:
        """Every term's weighted loss at ``p``, the acceptance tests re-run there."""
        view = self.view(p, frozen)
        out = {}
        for term, weight in self.terms:
            cand = term.candidates(view)
            r = term.residual(view, cand)
            acc = term.accept(view, cand, r.detach())
            rho = r.square() if term.robust == "squared" else r.abs() if term.robust == "l1" else r
            w = acc.weight if acc.weight.dim() == 2 else acc.weight[:, None]
            out[term.name] = (rho * w).sum() * (weight / term.normaliser())
        return out

    def support(self, p: Params) -> int:
        """Number of samples the data terms with an acceptance test count at ``p`` (vertices and pixels)."""
        with torch.no_grad():
            view = self.view(p)
            total = 0
            for term, _ in self.terms:
                if term.linearised and not isinstance(term, Prior):
                    cand = term.candidates(view)
                    total += int(term.accept(view, cand, term.residual(view, cand)).accepted.sum())
        return total

    # ---------------------------------------------------------------------------- Levenberg-Marquardt's view
    def linearise(self, p: Params, stride: int) -> Linearisation:
        """Fix visibility, acceptance and weights at ``p``, for every ``stride``-th covered pixel (weighted
        ``stride`` times), and restrict the model to the vertices the residuals read."""
        data = self.data
        with torch.no_grad():
            view = self.view(p)
            parts: list[tuple[Term, object, torch.Tensor]] = []
            wanted = []
            sub = None
            if view.rast is not None:
                sub = torch.arange(0, view.rast.pid.numel(), stride, device=view.rast.pid.device)
            for term, weight in self.terms:
                if not term.linearised or getattr(term, "linear", False):
                    continue
                cand = term.candidates(view)
                r = term.residual(view, cand)
                acc = term.accept(view, cand, r)
                scale = acc.weight if acc.weight.dim() == 2 else acc.weight[:, None].expand_as(r)
                if term.pixels:
                    r, scale = r.index_select(0, sub), scale.index_select(0, sub) * stride
                if term.robust == "l1":
                    scale = scale / (2.0 * r.abs().clamp(min=IRLS_FLOOR))
                parts.append((term, cand, (scale * (weight / term.normaliser())).sqrt()))
                for c in cand if isinstance(cand, tuple) else (cand,):
                    if c is not None:
                        wanted.append(c.vertex_ids())
            tid = view.rast.tid.index_select(0, sub) if sub is not None else data.faces.new_zeros(0)
            corners = data.faces.index_select(0, tid)
            around = torch.isin(data.faces, corners).any(1)
            wanted.append(data.faces[around].reshape(-1))
            flame = data.flame.restricted(torch.cat(wanted)).component_major()
            local = torch.full((data.flame.v_template.shape[0],), -1, dtype=torch.long, device=tid.device)
            local[flame.vertex_ids] = torch.arange(flame.vertex_ids.numel(), device=tid.device)
            pid = view.rast.pid.index_select(0, sub) if sub is not None else tid
            depth = view.rast.depth.index_select(0, sub) if sub is not None else corners.new_zeros(0, dtype=p.focal.dtype)
        return Linearisation(flame, local, local[data.faces[around]], pid, local[corners], data.uv_tri.index_select(0, tid), depth, parts)

    def constant_curvature(self, p: Params, groups: list[str]) -> torch.Tensor:
        """The Gauss-Newton curvature (P, P) float64 of the linear priors over the free ``groups`` (constant: their
        residuals are linear in the parameters), formed on the first call and kept (one objective per stage)."""
        if getattr(self, "_constant", None) is None:
            from .refine import gauss_newton_curvature

            linear = [(t, w) for t, w in self.terms if getattr(t, "linear", False)]
            x = p.flat(groups)

            def residuals(y: torch.Tensor) -> torch.Tensor:
                view = View(self.data, p.with_flat(groups, y), None, None)
                return torch.cat([(t.residual(view, None) * math.sqrt(w / t.normaliser())).reshape(-1) for t, w in linear])

            if linear:
                self._constant = gauss_newton_curvature(residuals, x)
            else:
                self._constant = torch.zeros(x.numel(), x.numel(), dtype=torch.float64)
        return self._constant

    def set_size_kappa(self, p: Params) -> float | None:
        """Set :class:`SizeMarginal`'s ``kappa`` at ``p`` (the stage's start): twice the value there of the priors
        on what scales with the head (:data:`.config.PRIOR_TERMS`: identity, expression, symmetry). For a Gaussian
        prior the fitted coefficients' prior value estimates half of ``lambda k`` (the temperature times how many
        of them the image determines), the weight of the size's log-volume, without assuming the population's
        variance. A stage that starts from the template (all coefficients zero) gets kappa 0. Returns kappa, or
        None when the stage has no such term."""
        term = next((t for t, _ in self.terms if isinstance(t, SizeMarginal)), None)
        if term is None:
            return None
        view = View(self.data, p, None, None)
        with torch.no_grad():
            value = sum(float(t.residual(view, None).square().sum()) * w / t.normaliser()
                        for t, w in self.terms if t.name in PRIOR_TERMS)
        term.kappa = 2.0 * value
        return term.kappa

    def residuals(self, p: Params, lin: Linearisation) -> torch.Tensor:
        """The residual vector at ``p`` whose squared norm is the loss around ``lin``'s point (L1 terms reweighted);
        no data-dependent shapes, so it works under ``torch.func`` transforms."""
        data = self.data
        geometry = data.geometry(p, self.need_normals, lin.flame, lin.normal_faces)
        view = View(data, p, geometry, lin.local)
        if lin.pid.numel():
            size = data.size
            bary = pixel_barycentrics(view.camera.clip(view.cam), lin.tri, lin.pid, None, (size, size))
            n = lin.pid.numel()
            rast = Rasterization((1, size, size), lin.pid, torch.arange(n, device=lin.pid.device), bary, lin.depth)
            view.pixels = PixelSamples(rast, lin.tri, lin.uv_tri)
        return torch.cat([(term.residual(view, cand) * scale).reshape(-1) for term, cand, scale in lin.parts])

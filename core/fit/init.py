"""Initial head pose from the UV correspondences (nearest predicted pixel per vertex) or the landmarks, by robust PnP.

Each UV-valid vertex of the neutral head is matched to the predicted pixel nearest in UV space; pairs within the
UV distance threshold go to OpenCV's ``solvePnPRansac`` with the reference intrinsics. When there are too few
pairs, RANSAC fails, or the pose is implausible (head behind the camera or absurdly far), the fit starts from
the frontal default pose (identity rotation, head at the origin, 1 m from the camera) and says so in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..render.camera import Camera, opencv_pose_to_world
from .losses import match_uv

__all__ = ["PoseInit", "initial_pose", "pose_from_points", "frontal_pose"]

log = logging.getLogger(__name__)

_MIN_PAIRS = 12
_MIN_INLIER_FRACTION = 0.25


@dataclass(frozen=True)
class PoseInit:
    """Initial head pose ``world = R v + t``.

    Attributes
    ----------
    rotation : (3, 3) float64; translation : (3,) float64
    method : "pnp" or "frontal"
    pairs : number of 2D-3D pairs offered to PnP; inliers : RANSAC inliers (0 for the frontal pose)
    """

    rotation: np.ndarray
    translation: np.ndarray
    method: str
    pairs: int
    inliers: int


def frontal_pose(pairs: int = 0) -> PoseInit:
    """The reference's starting pose: identity rotation, head at the origin (1 m in front of the camera)."""
    return PoseInit(np.eye(3), np.zeros(3), "frontal", pairs, 0)


def initial_pose(
    vertices: torch.Tensor,
    vertex_uv: torch.Tensor,
    pred_uv: torch.Tensor,
    uv_mask: torch.Tensor,
    camera: Camera,
    delta_uv: float,
    reprojection_px: float,
    seed: int,
) -> PoseInit:
    """Robust PnP on UV correspondences.

    Parameters
    ----------
    vertices : (N, 3) canonical positions of the UV-valid vertices (neutral head)
    vertex_uv : (N, 2) their UVs (network convention)
    pred_uv : (S, S, 2) predicted UV map; uv_mask : (S, S) bool
    camera : the reference intrinsics at the map's size S
    delta_uv : squared UV distance threshold for a pair
    reprojection_px : RANSAC inlier threshold in pixels at S
    seed : OpenCV RNG seed (RANSAC sampling), for deterministic runs

    Returns
    -------
    PoseInit
    """
    size = pred_uv.shape[0]
    xy, sq = match_uv(vertex_uv, pred_uv, uv_mask)
    ok = (sq < delta_uv).cpu().numpy()
    obj = vertices.detach().cpu().double().numpy()[ok]
    img = xy.detach().cpu().double().numpy()[ok]
    return pose_from_points(obj, img, camera.intrinsics(size), reprojection_px, seed)


def pose_from_points(obj: np.ndarray, img: np.ndarray, k: np.ndarray, reprojection_px: float, seed: int) -> PoseInit:
    """Robust PnP (EPnP in RANSAC, then iterative refinement on the inliers) of 3D points on the neutral head and
    their pixels; the frontal pose when there are too few pairs or inliers, or the pose is implausible.

    Parameters
    ----------
    obj : (N, 3) canonical points; img : (N, 2) their pixels; k : (3, 3) intrinsics of those pixels
    reprojection_px : RANSAC inlier threshold in pixels
    seed : OpenCV RNG seed (RANSAC sampling), for deterministic runs
    """
    pairs = len(obj)
    if pairs < _MIN_PAIRS:
        log.info("Only %d correspondences for PnP; starting from the frontal pose.", pairs)
        return frontal_pose(pairs)
    cv2.setRNGSeed(int(seed))
    try:
        success, rvec, tvec, inliers = cv2.solvePnPRansac(
            obj, img, k, None, iterationsCount=200, reprojectionError=float(reprojection_px),
            confidence=0.999, flags=cv2.SOLVEPNP_EPNP,
        )
    except cv2.error as exc:
        log.info("PnP failed (%s); starting from the frontal pose.", exc)
        return frontal_pose(pairs)
    n_in = 0 if inliers is None else int(len(inliers))
    if not success or n_in < max(_MIN_PAIRS, _MIN_INLIER_FRACTION * pairs):
        log.info("PnP found %d inliers among %d pairs; starting from the frontal pose.", n_in, pairs)
        return frontal_pose(pairs)
    idx = inliers.reshape(-1)
    success, rvec, tvec = cv2.solvePnP(obj[idx], img[idx], k, None, rvec, tvec, True, cv2.SOLVEPNP_ITERATIVE)
    rot_cv, _ = cv2.Rodrigues(rvec)
    rotation, translation = opencv_pose_to_world(rot_cv, tvec)
    distance = float(tvec.reshape(-1)[2])
    if not success or not np.isfinite(translation).all() or not 0.2 < distance < 10.0:
        log.info("PnP gave an implausible pose (distance %.3f m); starting from the frontal pose.", distance)
        return frontal_pose(pairs)
    return PoseInit(rotation, translation, "pnp", pairs, n_in)

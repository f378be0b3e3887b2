"""A Live Link Face take on a rig and back: per-frame ARKit key weights and joint rotations (numpy).

What goes where
---------------
* The 51 blendshape weights go onto the rig's ARKit keys of the same names (:data:`core.arkit.ARKIT_NAMES`).
* The head's yaw, pitch and roll (:func:`core.livelink.rotation_matrices`) become the neck joint's local
  rotation: the head turns about the neck while the base of the neck stays where it is.
* The eyes. The eye-look keys already turn each eye by the gaze their weights state, because their rotations
  are baked into their offsets (:mod:`core.rig`): the rotation of the summed axis-angles
  ``sum_k w_k eye_poses_k`` (:func:`key_gaze`). An eye joint therefore carries only the rest of the take's eye
  rotation, ``R_joint = R_take @ R_keys^T``, so that the eye turns by the take's angles once
  (``R_joint @ R_keys = R_take``, the keys' linear blend standing for ``R_keys``); writing a take composes the
  two again. In the app's takes the eye angles follow the eyeLook weights, so ``R_joint`` stays close to the
  identity: it holds the roll and the difference between the app's angle per unit weight and the keys'
  (:data:`core.arkit.EYE_LOOK_SIDEWAYS`, :data:`core.arkit.EYE_LOOK_VERTICAL`).

Rotations are unit quaternions ``(w, x, y, z)``, as Blender's pose bones hold them, made sign-continuous from
frame to frame so that interpolating their components never takes the long way round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .arkit import ARKIT_NAMES
from .flame.rotation import axis_angle_to_matrix
from .livelink import Take, rotation_angles, rotation_matrices

__all__ = ["RigMotion", "key_gaze", "matrices_from_quaternions", "motion_from_take", "quaternions_from_matrices",
           "take_from_motion"]


def quaternions_from_matrices(matrices: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations to (..., 4) unit quaternions ``(w, x, y, z)`` with ``w >= 0``."""
    m = np.asarray(matrices, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Four times the square of each component; the largest gives the best-conditioned formula (Shepperd).
    squares = np.stack((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1)
    big = 0.5 * np.sqrt(np.maximum(squares, 1e-300))
    quarter = 0.25 / big
    candidates = np.stack((
        np.stack((big[..., 0], (m21 - m12) * quarter[..., 0], (m02 - m20) * quarter[..., 0],
                  (m10 - m01) * quarter[..., 0]), -1),
        np.stack(((m21 - m12) * quarter[..., 1], big[..., 1], (m01 + m10) * quarter[..., 1],
                  (m02 + m20) * quarter[..., 1]), -1),
        np.stack(((m02 - m20) * quarter[..., 2], (m01 + m10) * quarter[..., 2], big[..., 2],
                  (m12 + m21) * quarter[..., 2]), -1),
        np.stack(((m10 - m01) * quarter[..., 3], (m02 + m20) * quarter[..., 3], (m12 + m21) * quarter[..., 3],
                  big[..., 3]), -1),
    ), -2)
    best = np.argmax(squares, axis=-1)
    q = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def matrices_from_quaternions(quaternions: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions ``(w, x, y, z)``, normalised here, to (..., 3, 3) rotations."""
    q = np.asarray(quaternions, dtype=np.float64)
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    return np.stack((
        np.stack((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)), -1),
        np.stack((2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)), -1),
        np.stack((2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)), -1),
    ), -2)


def _continuous(q: np.ndarray) -> np.ndarray:
    """(T, ..., 4) quaternions with each one's sign chosen to be nearest its predecessor along T."""
    if len(q) < 2:
        return q
    agree = np.where(np.sum(q[1:] * q[:-1], axis=-1) < 0, -1.0, 1.0)
    signs = np.concatenate((np.ones((1,) + agree.shape[1:]), np.cumprod(agree, axis=0)))
    return q * signs[..., None]


def key_gaze(weights: np.ndarray, eye_poses: np.ndarray) -> np.ndarray:
    """The eye rotations the eye-look keys show at these weights.

    Parameters
    ----------
    weights : (T, K) key weights.
    eye_poses : (K, 2, 3) each key's left and right eye axis-angle at weight 1 (zero for keys that turn no eye).

    Returns
    -------
    (T, 2, 3, 3) left and right eye rotation matrices of the summed axis-angles.
    """
    axis_angle = np.einsum("tk,kec->tec", np.asarray(weights, dtype=np.float64),
                           np.asarray(eye_poses, dtype=np.float64))
    return axis_angle_to_matrix(torch.from_numpy(axis_angle)).numpy()


@dataclass(frozen=True)
class RigMotion:
    """A take as a rig plays it.

    Attributes
    ----------
    frames : (T,) int64 frame of each row counted from the first (gaps where the app dropped frames).
    weights : (T, 51) float32 ARKit key weights in :data:`core.arkit.ARKIT_NAMES` order.
    neck : (T, 4) float64 neck joint rotation, quaternion ``(w, x, y, z)``.
    eyes : (T, 2, 4) float64 left and right eye joint rotations: the part of the take's eye rotations the
        eye-look keys do not show (see the module docstring).
    """

    frames: np.ndarray
    weights: np.ndarray
    neck: np.ndarray
    eyes: np.ndarray


def _eye_poses(eye_poses: np.ndarray) -> np.ndarray:
    eye_poses = np.asarray(eye_poses, dtype=np.float64)
    if eye_poses.shape != (len(ARKIT_NAMES), 2, 3):
        raise ValueError(f"eye_poses must be ({len(ARKIT_NAMES)}, 2, 3), got {eye_poses.shape}.")
    return eye_poses


def motion_from_take(take: Take, eye_poses: np.ndarray) -> RigMotion:
    """The rig motion of a take.

    Parameters
    ----------
    take : a :class:`core.livelink.Take`.
    eye_poses : (51, 2, 3) the ARKit keys' eye axis-angles in ARKIT_NAMES order
        (:attr:`core.rig.ArkitShapeKey.eye_poses`).
    """
    keys = key_gaze(take.weights, _eye_poses(eye_poses))
    eyes = rotation_matrices(take.eyes) @ np.swapaxes(keys, -1, -2)
    return RigMotion(
        frames=np.asarray(take.frames, dtype=np.int64), weights=np.asarray(take.weights, dtype=np.float32),
        neck=_continuous(quaternions_from_matrices(rotation_matrices(take.head))),
        eyes=_continuous(quaternions_from_matrices(eyes)),
    )


def take_from_motion(
    motion: RigMotion, fps: float, eye_poses: np.ndarray, start: float = 0.0, source: str = "animation"
) -> Take:
    """The take a rig motion plays (the inverse of :func:`motion_from_take`): weights as they are, the head's
    angles from the neck's rotation, each eye's angles from its joint's rotation after the keys' gaze.

    Parameters
    ----------
    motion : the rig's motion (quaternions need not be unit length).
    fps : frames per second.
    eye_poses : (51, 2, 3) as in :func:`motion_from_take`.
    start : time of the first row, seconds since midnight (the take's timecodes start there).
    """
    keys = key_gaze(motion.weights, _eye_poses(eye_poses))
    eyes = matrices_from_quaternions(motion.eyes) @ keys
    return Take.from_frames(
        motion.weights, fps=fps, frames=motion.frames, head=rotation_angles(matrices_from_quaternions(motion.neck)),
        eyes=rotation_angles(eyes), start=start, source=source,
    )

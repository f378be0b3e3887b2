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

__all__ = ["ArkitSplit", "RigMotion", "arkit_split", "key_gaze", "matrices_from_quaternions", "motion_from_take",
           "quaternions_from_matrices", "take_from_motion"]


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


def _coefficients(values, n: int) -> np.ndarray:
    """The first ``n`` of ``values``, zero-padded to ``n``."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)[:n]
    return np.pad(values, (0, n - len(values)))


@dataclass
class ArkitSplit:
    """A tracked expression shared between the ARKit keys and FLAME's own keys (:func:`arkit_split`).

    Attributes
    ----------
    weights : (T, K) ARKit key weights in [0, 1], in the rig's ``arkit_keys`` order (0 for the jaw and eye-look
        keys, whose rotations the bones carry).
    expression : (T, Ne) the expression coefficients the ARKit keys leave (for the ``expression_NNN`` keys).
    eyelids : (T, 2) the eyelid coefficients they leave (for ``eyelid.L`` / ``eyelid.R``).
    """

    weights: np.ndarray
    expression: np.ndarray
    eyelids: np.ndarray


def arkit_split(rig, expression: np.ndarray, eyelids: np.ndarray, sweeps: int = 500, tol: float = 1e-7) -> ArkitSplit:
    """Show tracked expressions on a rig's ARKit keys as far as they can, the rest on FLAME's own keys.

    Per frame the weights ``w`` in [0, 1] of the ARKit keys that are pure expression (not the jaw and eye-look
    keys: the bones carry those rotations) minimise ``|sum_k w_k O_k - D|^2`` over the mesh, ``O_k`` a key's
    vertex offsets and ``D`` the frame's expression and eyelid offsets (least squares on the vertices, so what an
    engine that plays only the ARKit names shows is as close as the keys allow; solved by projected Gauss-Seidel
    on the normal equations). The remainder, ``expression - sum_k w_k e_k`` (and the same for the eyelids), goes to
    the FLAME keys, so ARKit and FLAME keys together give the tracked mesh exactly (every key is linear in the
    coefficients).

    Parameters
    ----------
    rig : a :class:`core.rig.Rig` with ARKit keys
    expression : (T, Ne) tracked expression coefficients (Ne <= the rig's expression keys)
    eyelids : (T, 2) tracked eyelid coefficients
    """
    expression = np.atleast_2d(np.asarray(expression, dtype=np.float64))
    eyelids = np.atleast_2d(np.asarray(eyelids, dtype=np.float64))
    n_frames, n_expr = expression.shape
    keys = rig.arkit_keys
    # keys that are pure expression, within the components the FLAME keys can take back
    usable = [k for k, key in enumerate(keys) if not np.any(key.jaw_pose) and not np.any(key.eye_poses)
              and not np.any(np.asarray(key.expression)[n_expr:])]
    weights = np.zeros((n_frames, len(keys)))
    if not usable or n_frames == 0:
        return ArkitSplit(weights.astype(np.float32), expression.copy(), eyelids.copy())
    basis = np.stack([np.asarray(k.offsets, np.float64).reshape(-1) for k in rig.expression_keys[:n_expr]], 1)
    target = expression @ basis.T
    if rig.eyelid_keys:
        lids = np.stack([np.asarray(k.offsets, np.float64).reshape(-1) for k in rig.eyelid_keys], 1)
        target += eyelids @ lids.T
    offsets = np.stack([np.asarray(keys[k].offsets, np.float64).reshape(-1) for k in usable], 1)
    gram = offsets.T @ offsets
    rhs = target @ offsets  # (T, K')
    w = np.zeros((n_frames, len(usable)))
    diag = np.maximum(gram.diagonal(), 1e-30)
    for _ in range(sweeps):
        change = 0.0
        for j in range(len(usable)):
            new = np.clip(w[:, j] + (rhs[:, j] - w @ gram[:, j]) / diag[j], 0.0, 1.0)
            change = max(change, float(np.abs(new - w[:, j]).max()))
            w[:, j] = new
        if change < tol:
            break
    weights[:, usable] = w
    key_expr = np.stack([_coefficients(keys[k].expression, n_expr) for k in usable])
    key_lids = np.stack([np.asarray(keys[k].eyelids, np.float64).reshape(2) for k in usable])
    return ArkitSplit(weights.astype(np.float32), expression - w @ key_expr, eyelids - w @ key_lids)

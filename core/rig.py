"""The rig: a fitted FLAME head as an animation package would hold it, in plain numpy.

:func:`build_rig` turns a :class:`~core.fit.FitResult`, the FLAME model it was fitted with and the UV template
into a :class:`Rig`: an armature (joints, parents, local rotations at the fitted pose), a skinned mesh (rest
vertices, triangles, per-corner UVs, skin weights), shape keys with their values and slider ranges, the head
pose and a physical camera matching the fit's pinhole. A scene builder (the Blender add-on's ``scene.py``) only
copies these arrays; every number in it comes from here, computed with :mod:`core.flame`'s own functions.

Frames and conventions
----------------------
* Positions are in FLAME's canonical frame: metres, +y up, face towards +z, +x the subject's left. World space
  is ``head_pose @ canonical`` (``world = R @ v + t``, the fit's head pose applied outside FLAME).
* Joint order is :data:`core.flame.data.JOINT_NAMES`: 0 root, 1 neck, 2 jaw, 3 left eye, 4 right eye.
* Every joint rests unrotated (the identity orientation in the canonical frame), so a joint's local rotation
  at the fitted pose is exactly FLAME's joint rotation, and linear blend skinning of the rest mesh about the
  rest joints with ``rotations`` is FLAME's skinning.
* Shape key offsets are relative to ``rest_vertices`` and act before skinning, as in Blender, glTF and FBX.

How the rig relates to FLAME's forward pass
-------------------------------------------
FLAME poses ``v_template + identity + expression + pose correctives`` with joints regressed from the template
plus identity *and expression*. Here the rest mesh is the template plus identity; the expression enters through
its shape keys at the fitted coefficients and the correctives through one key per entry of FLAME's pose feature
(``R_j - I`` of joints 1..4, see :func:`core.flame.lbs.pose_feature`) at the fitted rotations. The rest joints
are regressed with the fitted expression, as FLAME does, so the rig at its fitted values *is* FLAME's forward
pass. When a user moves expression sliders afterwards the joints stay where they are (FLAME would move them by
the regressor applied to the expression offset, typically well under a millimetre).

Pixel3DMM's two eyelid blendshapes are added *after* skinning in :class:`~core.flame.FlameModel`; as shape keys
they act before it, so with non-zero eyelid values and a rotated neck the eyelid region differs from the
forward pass by (blended skinning rotation - I) applied to the eyelid offset, about the offset times the rotation
angle (a few tenths of a millimetre for a 10 degree neck pose). Everything else matches to float precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .fit.result import FitResult
from .flame.data import JAW, JOINT_NAMES, LEFT_EYE, N_JOINTS, NECK, RIGHT_EYE, FlameData
from .flame.lbs import pose_feature, vertices2joints
from .flame.model import FlameModel, FlameParams
from .flame.rotation import axis_angle_to_matrix
from .flame.uv import UVTemplate
from .render.camera import CAMERA_POSITION

__all__ = ["CameraFilm", "CorrectiveKey", "Rig", "ShapeKey", "build_rig"]

EXPRESSION_KEY = "expression_{:03d}"
EYELID_KEYS = ("eyelid.L", "eyelid.R")  # the subject's left and right eyelid, in FLAME's eyelid order
CORRECTIVE_KEY = "pose_{}_{}{}"  # joint name, matrix row, matrix column
SENSOR_WIDTH_MM = 36.0
CORRECTIVE_LIMIT = 2.0  # every entry of R - I lies in [-2, 2]


@dataclass(frozen=True)
class ShapeKey:
    """One blendshape of the rig.

    Attributes
    ----------
    name : str
    offsets : (V, 3) float32 displacement from ``Rig.rest_vertices`` at value 1 (metres, canonical frame).
    value : float
        The value at the fitted head.
    slider_min, slider_max : float
        The range a user may slide it through. Expression and eyelid keys: symmetric, ``ceil(|value|)`` kept
        within [3, 10] (a scene that clamps values to the slider range clamps a coefficient beyond 10);
        correctives: [-2, 2], every value ``R - I`` can take.
    """

    name: str
    offsets: np.ndarray
    value: float
    slider_min: float
    slider_max: float


@dataclass(frozen=True)
class CorrectiveKey(ShapeKey):
    """A pose corrective: the key of one entry of FLAME's pose feature, driven by a joint's rotation.

    Its value is entry ``(row, col)`` of ``R - I``, ``R`` the local rotation of joint ``joint`` (1..4); its
    offsets are FLAME's ``posedirs[:, :, 9 * (joint - 1) + 3 * row + col]``, the column that multiplies that
    entry in :func:`core.flame.lbs.pose_feature`. ``value`` is the entry at the fitted rotation; a scene
    re-posing the rig evaluates it from the joint's current rotation instead.
    """

    joint: int
    row: int
    col: int


@dataclass(frozen=True)
class CameraFilm:
    """A physical camera (Blender's model, horizontal sensor fit) that reproduces the fit's pinhole ``K_photo``.

    Rendered at ``resolution`` (the photo's size), a world point lands on the photo pixel where the fit
    projects it. The focal length is ``lens / sensor_width`` image widths; the shifts move the frame by image
    widths, +x to the right and +y *up* (pixel y points down), so the principal point sits at pixel
    ``(W / 2 - shift_x * W, H / 2 + shift_y * W)``. Pixels are square.

    Attributes
    ----------
    resolution : (W, H) in pixels
    sensor_width, lens : float
        Millimetres.
    shift_x, shift_y : float
        In units of the image width.
    pose : (4, 4) float64
        Camera to FLAME world (metres): the fit's fixed camera at :data:`core.render.camera.CAMERA_POSITION`,
        unrotated, looking down its -z with +y up (OpenGL's and Blender's camera axes).
    """

    resolution: tuple[int, int]
    sensor_width: float
    lens: float
    shift_x: float
    shift_y: float
    pose: np.ndarray


@dataclass(frozen=True)
class Rig:
    """A fitted FLAME head ready to be copied into a scene (see the module docstring for the conventions).

    Attributes
    ----------
    joint_names : (J,) names, :data:`core.flame.data.JOINT_NAMES`.
    parents : (J,) int64 parent joint of each joint, -1 for the root; every parent precedes its children.
    joints : (J, 3) float64 rest joint locations (canonical frame), regressed from the template plus the fitted
        identity and expression.
    rotations : (J, 3, 3) float64 local joint rotations at the fitted pose (the root's is the identity: the head
        pose is ``head_pose``).
    head_pose : (4, 4) float64 ``[R | t]`` taking the canonical frame to world space.
    rest_vertices : (V, 3) float64 template plus the fitted identity.
    faces : (F, 3) int64 triangles.
    corner_uv : (F, 3, 2) float64 UV of each triangle corner, OBJ/Blender convention (u right, v up).
    skin_weights : (V, J) float64 linear blend skinning weights (rows sum to 1).
    expression_keys : one :class:`ShapeKey` per fitted expression coefficient (``expression_000``, ...; value =
        the coefficient, signed slider range).
    eyelid_keys : the left and right eyelid keys (``eyelid.L``, ``eyelid.R``), or () for a model without eyelid
        blendshapes.
    corrective_keys : the 36 :class:`CorrectiveKey` in pose-feature order (``pose_<joint>_<row><col>``).
    camera : :class:`CameraFilm` matching the fit's photo camera.
    """

    joint_names: tuple[str, ...]
    parents: np.ndarray
    joints: np.ndarray
    rotations: np.ndarray
    head_pose: np.ndarray
    rest_vertices: np.ndarray
    faces: np.ndarray
    corner_uv: np.ndarray
    skin_weights: np.ndarray
    expression_keys: tuple[ShapeKey, ...]
    eyelid_keys: tuple[ShapeKey, ...]
    corrective_keys: tuple[CorrectiveKey, ...]
    camera: CameraFilm

    @property
    def shape_keys(self) -> tuple[ShapeKey, ...]:
        """Every key in the order a scene lists them: expression, eyelids, correctives."""
        return self.expression_keys + self.eyelid_keys + self.corrective_keys


def build_rig(flame: FlameData, uv: UVTemplate, fit: FitResult) -> Rig:
    """The rig of a fitted head.

    Parameters
    ----------
    flame : the FLAME model the fit used (its first ``len(fit.shape)`` identity and ``len(fit.expression)``
        expression components are the fitted ones).
    uv : the UV template with the same triangles as ``flame``.
    fit : the fit; uses its identity, expression, eyelid and joint parameters, head pose, ``K_photo`` and
        ``photo_size``.

    Raises
    ------
    ValueError when the fit has more identity or expression coefficients than the model has components.
    """
    shape = torch.from_numpy(np.asarray(fit.shape, dtype=np.float64).reshape(1, -1))
    expression = torch.from_numpy(np.asarray(fit.expression, dtype=np.float64).reshape(1, -1))
    model = FlameModel(flame, n_shape=shape.shape[1], n_expr=expression.shape[1], dtype=torch.float64)
    poses = {NECK: fit.neck_pose, JAW: fit.jaw_pose, LEFT_EYE: fit.eye_pose_left, RIGHT_EYE: fit.eye_pose_right}
    axis_angle = np.zeros((N_JOINTS, 3))  # the root stays unrotated: the head pose acts outside FLAME
    for joint, pose in poses.items():
        axis_angle[joint] = np.asarray(pose, dtype=np.float64).reshape(3)
    with torch.no_grad():
        rest = model.neutral(shape)[0]
        joints = vertices2joints(model.J_regressor, model.shaped(FlameParams(shape=shape, expression=expression)))[0]
        rotations = axis_angle_to_matrix(torch.from_numpy(axis_angle))
        features = pose_feature(rotations[None])[0]
    head_pose = np.eye(4)
    head_pose[:3, :3] = np.asarray(fit.head_rotation, dtype=np.float64)
    head_pose[:3, 3] = np.asarray(fit.head_translation, dtype=np.float64).reshape(3)
    return Rig(
        joint_names=JOINT_NAMES,
        parents=np.asarray(flame.parents, dtype=np.int64),
        joints=joints.numpy(),
        rotations=rotations.numpy(),
        head_pose=head_pose,
        rest_vertices=rest.numpy(),
        faces=np.asarray(flame.faces, dtype=np.int64),
        corner_uv=np.asarray(uv.corner_uv, dtype=np.float64),
        skin_weights=np.asarray(flame.weights, dtype=np.float64),
        expression_keys=tuple(
            _key(EXPRESSION_KEY.format(k), flame.exprdirs[:, :, k], value)
            for k, value in enumerate(expression[0].tolist())
        ),
        eyelid_keys=() if flame.eyelids is None else tuple(
            _key(name, flame.eyelids[side], value)
            for side, (name, value) in enumerate(zip(EYELID_KEYS, np.asarray(fit.eyelids, dtype=np.float64).tolist()))
        ),
        corrective_keys=tuple(_corrective_keys(flame.posedirs, features.numpy())),
        camera=_camera_film(np.asarray(fit.K_photo, dtype=np.float64), fit.photo_size),
    )


def _key(name: str, offsets: np.ndarray, value: float) -> ShapeKey:
    """A key with the symmetric slider range ``ceil(|value|)`` kept within [3, 10]."""
    limit = float(min(10.0, max(3.0, math.ceil(abs(value)))))
    return ShapeKey(name, np.asarray(offsets, dtype=np.float32), float(value), -limit, limit)


def _corrective_keys(posedirs: np.ndarray, features: np.ndarray) -> list[CorrectiveKey]:
    """One key per pose-feature entry; ``features`` (36,) is :func:`pose_feature` at the fitted rotations, whose
    layout (flattened ``R_j - I`` of joints 1..4: joint-major, then row-major) the unravelling below follows."""
    keys = []
    for index, value in enumerate(features.tolist()):
        joint, row, col = (int(i) for i in np.unravel_index(index, (N_JOINTS - 1, 3, 3)))
        joint += 1
        keys.append(CorrectiveKey(
            CORRECTIVE_KEY.format(JOINT_NAMES[joint], row, col), np.asarray(posedirs[:, :, index], dtype=np.float32),
            float(value), -CORRECTIVE_LIMIT, CORRECTIVE_LIMIT, joint, row, col,
        ))
    return keys


def _camera_film(k_photo: np.ndarray, photo_size: tuple[int, int]) -> CameraFilm:
    """The film for pinhole ``k_photo`` (3, 3) on a photo of ``photo_size`` (H, W); see :class:`CameraFilm`."""
    height, width = (int(s) for s in photo_size)
    pose = np.eye(4)
    pose[:3, 3] = CAMERA_POSITION
    return CameraFilm(
        resolution=(width, height),
        sensor_width=SENSOR_WIDTH_MM,
        lens=float(k_photo[0, 0]) * SENSOR_WIDTH_MM / width,
        shift_x=(width / 2.0 - float(k_photo[0, 2])) / width,
        shift_y=(float(k_photo[1, 2]) - height / 2.0) / width,
        pose=pose,
    )

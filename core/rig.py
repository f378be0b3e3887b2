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

Shape keys
----------
In scene order (:attr:`Rig.shape_keys`):

* the 51 ARKit keys (:mod:`core.arkit`, Apple's names, weights 0..1, value 0), when a MediaPipe landmark
  embedding is given. Each is stated in FLAME's terms too (:class:`ArkitShapeKey`: expression and eyelid
  coefficients, or a jaw / eye rotation). The rotation keys (jawOpen, jawLeft, jawRight, eyeLook*) have the
  rotation *baked* into their offsets: engines and ARKit apps drive morph targets by these names, and a key
  cannot rotate. The bones stay free: a scene that keys the eye bones as well must key only the part of an eye
  rotation the eye-look keys do not show (:mod:`core.animation`);
* ``fitted_expression``: the fitted expression and eyelid coefficients as one key at value 1;
* ``expression_000`` ... (one per fitted expression component) and ``eyelid.L``, ``eyelid.R``: FLAME's own
  blendshapes at value 0, for power users;
* the 36 pose correctives, driven by the joint rotations.

How the rig relates to FLAME's forward pass
-------------------------------------------
FLAME poses ``v_template + identity + expression + pose correctives`` with joints regressed from the template
plus identity *and expression*. Here the rest mesh is the template plus identity; the expression enters through
the ``fitted_expression`` key and the correctives through one key per entry of FLAME's pose feature
(``R_j - I`` of joints 1..4, see :func:`core.flame.lbs.pose_feature`) at the fitted rotations. The rest joints
are regressed with the fitted expression, as FLAME does, so the rig at its key values *is* FLAME's forward
pass. When a user moves expression sliders afterwards the joints stay where they are (FLAME would move them by
the regressor applied to the expression offset, typically well under a millimetre).
:func:`shown_parameters` reads FLAME parameters back off a posed rig.

Pixel3DMM's two eyelid blendshapes are added *after* skinning in :class:`~core.flame.FlameModel`; as shape keys
they act before it, so with non-zero eyelid values and a rotated neck the eyelid region differs from the
forward pass by (blended skinning rotation - I) applied to the eyelid offset, about the offset times the rotation
angle (a few tenths of a millimetre for a 10 degree neck pose). Everything else matches to float precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from .arkit import arkit_keys
from .fit.result import FitResult
from .flame.data import JAW, JOINT_NAMES, LEFT_EYE, N_JOINTS, NECK, RIGHT_EYE, FlameData
from .flame.io import LandmarkEmbedding
from .flame.lbs import pose_feature, vertices2joints
from .flame.model import FlameModel, FlameParams
from .flame.rotation import axis_angle_to_matrix, matrix_to_axis_angle
from .flame.uv import UVTemplate
from .flame_params import FlameParameters
from .render.camera import CAMERA_POSITION

__all__ = ["ArkitShapeKey", "CameraFilm", "CorrectiveKey", "Rig", "ShapeKey", "build_rig", "head_record",
           "shown_parameters"]

EXPRESSION_KEY = "expression_{:03d}"
EYELID_KEYS = ("eyelid.L", "eyelid.R")  # the subject's left and right eyelid, in FLAME's eyelid order
FITTED_KEY = "fitted_expression"
CORRECTIVE_KEY = "pose_{}_{}{}"  # joint name, matrix row, matrix column
SENSOR_WIDTH_MM = 36.0
EXPRESSION_LIMIT = 3.0  # FLAME's expression and eyelid coefficients are in standard deviations
CORRECTIVE_LIMIT = 2.0  # every entry of R - I lies in [-2, 2]
RECORD_VERSION = 1


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
        The range a user may slide it through: ARKit keys and ``fitted_expression`` [0, 1]; FLAME's expression
        and eyelid keys [-3, 3] (standard deviations); correctives [-2, 2], every value ``R - I`` can take.
    """

    name: str
    offsets: np.ndarray
    value: float
    slider_min: float
    slider_max: float


@dataclass(frozen=True)
class ArkitShapeKey(ShapeKey):
    """An ARKit key (:class:`core.arkit.ArkitKey` on this head) and what it means in FLAME's parameters.

    At weight ``w`` the key stands for ``w`` times these parameters (rotations as axis-angle, radians):
    ``expression`` (Ne,) and ``eyelids`` (2,) coefficients, ``jaw_pose`` (3,), ``eye_poses`` (2, 3) left and
    right eye. The offsets of a rotation key are the FLAME head posed by that rotation minus the rest mesh.
    """

    expression: np.ndarray
    eyelids: np.ndarray
    jaw_pose: np.ndarray
    eye_poses: np.ndarray


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
    arkit_keys : the 51 :class:`ArkitShapeKey` in :data:`core.arkit.ARKIT_NAMES` order (value 0, range 0..1), or
        () when the rig was built without a MediaPipe landmark embedding.
    fitted_key : ``fitted_expression``: the fitted expression and eyelid blendshapes summed, value 1, range 0..1.
    expression_keys : one :class:`ShapeKey` per fitted expression component (``expression_000``, ...; value 0,
        range -3..3).
    eyelid_keys : the left and right eyelid keys (``eyelid.L``, ``eyelid.R``; value 0), or () for a model without
        eyelid blendshapes.
    corrective_keys : the 36 :class:`CorrectiveKey` in pose-feature order (``pose_<joint>_<row><col>``).
    camera : :class:`CameraFilm` matching the fit's photo camera.
    parameters : the FLAME parameters the rig was built from (:class:`core.flame_params.FlameParameters`).
    flame_release : the FLAME model's release (``FlameData.release``).
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
    arkit_keys: tuple[ArkitShapeKey, ...]
    fitted_key: ShapeKey
    expression_keys: tuple[ShapeKey, ...]
    eyelid_keys: tuple[ShapeKey, ...]
    corrective_keys: tuple[CorrectiveKey, ...]
    camera: CameraFilm
    parameters: FlameParameters
    flame_release: str

    @property
    def shape_keys(self) -> tuple[ShapeKey, ...]:
        """Every key in the order a scene lists them: ARKit, fitted expression, expression, eyelids, correctives."""
        return self.arkit_keys + (self.fitted_key,) + self.expression_keys + self.eyelid_keys + self.corrective_keys


def build_rig(
    flame: FlameData, uv: UVTemplate, fit: FitResult | FlameParameters, embedding: LandmarkEmbedding | None = None
) -> Rig:
    """The rig of a fitted head.

    Parameters
    ----------
    flame : the FLAME model the fit used (its first ``len(fit.shape)`` identity and ``len(fit.expression)``
        expression components are the fitted ones).
    uv : the UV template with the same triangles as ``flame`` (its mirror index places the right ARKit keys).
    fit : the fit, or FLAME parameters with a camera; uses the identity, expression, eyelid and joint
        parameters, the head pose, the photo camera ``K_photo`` / ``camera_K`` and the photo size.
    embedding : a MediaPipe landmark embedding on the model's mesh for the 51 ARKit keys, or None for none.

    Raises
    ------
    ValueError when the fit has more identity or expression coefficients than the model has components, or
    parameters come without a camera.
    AssetInvalidError when the embedding is not a MediaPipe one or lacks ids the ARKit keys use.
    """
    params = fit if isinstance(fit, FlameParameters) else FlameParameters.from_fit(fit)
    if params.camera_K is None or params.image_size is None:
        raise ValueError("The parameters have no camera (camera_K and image_size); give the photo's camera.")
    # The ARKit keys first: their numpy algebra runs several times slower right after torch on few cores.
    arkit = () if embedding is None else tuple(
        ArkitShapeKey(k.name, k.offsets, 0.0, 0.0, 1.0, k.expression, k.eyelids, k.jaw_pose, k.eye_poses)
        for k in arkit_keys(flame, embedding, uv.mirror_index, shape=params.shape)
    )
    shape = torch.from_numpy(np.asarray(params.shape, dtype=np.float64).reshape(1, -1))
    expression = torch.from_numpy(np.asarray(params.expression, dtype=np.float64).reshape(1, -1))
    model = FlameModel(flame, n_shape=shape.shape[1], n_expr=expression.shape[1], dtype=torch.float64)
    poses = {NECK: params.neck_pose, JAW: params.jaw_pose, LEFT_EYE: params.eye_pose_left,
             RIGHT_EYE: params.eye_pose_right}
    axis_angle = np.zeros((N_JOINTS, 3))  # the root stays unrotated: the head pose acts outside FLAME
    for joint, pose in poses.items():
        axis_angle[joint] = np.asarray(pose, dtype=np.float64).reshape(3)
    with torch.no_grad():
        rest = model.neutral(shape)[0]
        joints = vertices2joints(model.J_regressor, model.shaped(FlameParams(shape=shape, expression=expression)))[0]
        rotations = axis_angle_to_matrix(torch.from_numpy(axis_angle))
        features = pose_feature(rotations[None])[0]
    head_pose = np.eye(4)
    head_pose[:3, :3] = np.asarray(params.head_rotation, dtype=np.float64)
    head_pose[:3, 3] = np.asarray(params.head_translation, dtype=np.float64).reshape(3)
    n_expr = expression.shape[1]
    lids = np.asarray(params.eyelids, dtype=np.float64).reshape(2)
    fitted = flame.exprdirs[:, :, :n_expr] @ expression[0].numpy()
    if flame.eyelids is not None:
        fitted = fitted + np.einsum("k,kvc->vc", lids, flame.eyelids)
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
        arkit_keys=arkit,
        fitted_key=ShapeKey(FITTED_KEY, fitted.astype(np.float32), 1.0, 0.0, 1.0),
        expression_keys=tuple(
            ShapeKey(EXPRESSION_KEY.format(k), flame.exprdirs[:, :, k].astype(np.float32), 0.0, -EXPRESSION_LIMIT,
                     EXPRESSION_LIMIT)
            for k in range(n_expr)
        ),
        eyelid_keys=() if flame.eyelids is None else tuple(
            ShapeKey(name, flame.eyelids[side].astype(np.float32), 0.0, -EXPRESSION_LIMIT, EXPRESSION_LIMIT)
            for side, name in enumerate(EYELID_KEYS)
        ),
        corrective_keys=tuple(_corrective_keys(flame.posedirs, features.numpy())),
        camera=_camera_film(np.asarray(params.camera_K, dtype=np.float64), params.image_size),
        parameters=params,
        flame_release=flame.release,
    )


def head_record(rig: Rig) -> dict[str, Any]:
    """What a scene keeps with a built head to read FLAME parameters back off it (:func:`shown_parameters`):
    plain lists, strings and numbers (JSON, Blender custom properties).

    Keys: ``version``; ``flame`` (release); ``shape`` (Ns), ``expression`` (Ne) and ``eyelids`` (2) of the
    ``fitted_expression`` key; ``camera_K`` (3 x 3) and ``image_size`` (H, W); ``arkit``: per ARKit key name its
    ``expression``, ``eyelids``, ``jaw_pose`` and ``eye_poses`` (see :class:`ArkitShapeKey`).
    """
    p = rig.parameters
    as_list = lambda a: np.asarray(a, dtype=np.float64).tolist()  # noqa: E731
    return {
        "version": RECORD_VERSION,
        "flame": rig.flame_release,
        "shape": as_list(p.shape),
        "expression": as_list(p.expression),
        "eyelids": as_list(p.eyelids),
        "camera_K": as_list(p.camera_K),
        "image_size": [int(s) for s in p.image_size],
        "arkit": {k.name: {"expression": as_list(k.expression), "eyelids": as_list(k.eyelids),
                           "jaw_pose": as_list(k.jaw_pose), "eye_poses": as_list(k.eye_poses)}
                  for k in rig.arkit_keys},
    }


def _log_rotation(matrix: np.ndarray) -> np.ndarray:
    return matrix_to_axis_angle(torch.as_tensor(matrix, dtype=torch.float64)).numpy()


def _exp_rotation(axis_angle: np.ndarray) -> np.ndarray:
    return axis_angle_to_matrix(torch.as_tensor(axis_angle, dtype=torch.float64)).numpy()


def shown_parameters(
    record: Mapping[str, Any],
    values: Mapping[str, float],
    rotations: np.ndarray,
    head_pose: np.ndarray,
    joints: np.ndarray,
    source: str = "scene",
) -> FlameParameters:
    """The FLAME parameters a built head shows: its keys at ``values`` and its joints at ``rotations``.

    Parameters
    ----------
    record : :func:`head_record` of the rig the head was built from.
    values : key name -> current value (missing keys count as 0); correctives are not read (they follow the
        joints).
    rotations : (J, 3, 3) local joint rotations (the root's included: FLAME's global rotation about the root).
    head_pose : (4, 4) ``[R | t]`` taking the rig's canonical frame to world space.
    joints : (J, 3) rest joint locations in the canonical frame.

    Returns
    -------
    :class:`FlameParameters`: the expression (as long as the longest of the fit's and the ARKit keys') and eyelid
    coefficients sum ``fitted_expression``, FLAME's own keys and the ARKit keys' coefficients, each times its
    value; a jaw or eye joint's rotation is the bone's rotation after the rotation its ARKit keys state (the sum of
    their axis-angles times their weights: a baked key acts before skinning, so the bone turns it); the root's
    rotation about its rest joint joins the head pose.
    """
    value = lambda name: float(values.get(name, 0.0))  # noqa: E731
    fitted = value(FITTED_KEY)
    own = np.asarray(record["expression"], dtype=np.float64)
    # The ARKit keys may use more of the model's components than the fit did.
    expression = np.zeros(max([len(own)] + [len(k["expression"]) for k in record["arkit"].values()]))
    expression[: len(own)] = fitted * own + [value(EXPRESSION_KEY.format(k)) for k in range(len(own))]
    eyelids = fitted * np.asarray(record["eyelids"], dtype=np.float64) + [value(n) for n in EYELID_KEYS]
    jaw = np.zeros(3)
    eyes = np.zeros((2, 3))
    for name, key in record["arkit"].items():
        weight = value(name)
        expression[: len(key["expression"])] += weight * np.asarray(key["expression"], dtype=np.float64)
        eyelids += weight * np.asarray(key["eyelids"], dtype=np.float64)
        jaw += weight * np.asarray(key["jaw_pose"], dtype=np.float64)
        eyes += weight * np.asarray(key["eye_poses"], dtype=np.float64)
    rotations = np.asarray(rotations, dtype=np.float64)
    pose = lambda joint, keys: _log_rotation(rotations[joint] @ _exp_rotation(keys))  # noqa: E731
    root = rotations[0]
    j0 = np.asarray(joints, dtype=np.float64)[0]
    r, t = np.asarray(head_pose, dtype=np.float64)[:3, :3], np.asarray(head_pose, dtype=np.float64)[:3, 3]
    return FlameParameters(
        shape=np.asarray(record["shape"], dtype=np.float64), expression=expression, eyelids=eyelids,
        neck_pose=_log_rotation(rotations[NECK]), jaw_pose=pose(JAW, jaw), eye_pose_left=pose(LEFT_EYE, eyes[0]),
        eye_pose_right=pose(RIGHT_EYE, eyes[1]), head_rotation=r @ root, head_translation=r @ (j0 - root @ j0) + t,
        camera_K=np.asarray(record["camera_K"], dtype=np.float64),
        image_size=(int(record["image_size"][0]), int(record["image_size"][1])), source=source,
    )


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

"""FLAME parameters in and out: one head's fit as .npz or .json with the names the FLAME tools use.

File layout (the suffix chooses the format)::

    format        "pixel3dmm-flame-parameters"      version   1
    betas         (1, Ns) identity                  expression  (1, Ne)
    jaw_pose, neck_pose, leye_pose, reye_pose       (1, 3) axis-angle, radians (joints 2, 1, 3, 4 of FLAME)
    global_orient (1, 3) axis-angle of the root joint   transl  (1, 3) metres
    eyelids       (1, 2) left, right eyelid blendshape coefficients
    camera_K      (3, 3) pinhole intrinsics in photo pixels (OpenCV: x right, y down)
    camera_Rt     (3, 4) world -> OpenCV camera  [R | t]      image_size  (2,) photo height, width

In .npz files the FLAME arrays carry a batch axis of 1 (as FLAME layers take them); in .json they are plain
lists. ``global_orient`` and ``transl`` follow FLAME's own root-joint convention (smplx, FLAME_PyTorch)::

    v_world = R (v - j_root) + j_root + transl

where ``v`` is FLAME's output with the root at rest and ``j_root`` the root joint regressed from the shaped head
(template + identity + expression). This project poses the head as ``v_world = R v + t`` (:class:`FitResult`),
so ``global_orient = R`` and ``transl = t + (R - I) j_root``: saving and loading need the FLAME model for
``j_root``. The camera sits at ``(0, 0, 1)`` looking down -z (OpenGL), which ``camera_Rt`` states as OpenCV
extrinsics; a file whose ``camera_Rt`` differs has its head pose moved into this convention.

Reading also accepts other FLAME tools' files: batch axis (1, N) or none, the FLAME_PyTorch names
(``shape_params``, ``expression_params``, ``pose_params`` = global + jaw, ``neck_pose_params``,
``eye_pose_params`` = left + right), this project's fit.npz (``head_rotation``, ``head_translation`` in its own
convention) and rotations as axis-angle or 3x3 matrices. Missing entries are zero.
Vectors shorter than the head's are padded with zeros; longer ones are accepted only when the extra entries are
zero (a tool that pads), otherwise the file does not fit the head. Unknown entries are ignored with a logged
note. Every problem raises :class:`core.errors.ParameterFileError` with one sentence.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ParameterFileError
from .fit.result import FitResult
from .flame import FlameData, axis_angle_to_matrix, matrix_to_axis_angle

log = logging.getLogger(__name__)

FORMAT = "pixel3dmm-flame-parameters"
VERSION = 1
#: World -> OpenCV camera of this project's camera (at (0, 0, 1), looking down -z, y up): diag(1, -1, -1) (X - c).
CAMERA_RT = np.array([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 1]])
_VECTORS = ("betas", "expression", "eyelids")
_ROTATIONS = ("global_orient", "neck_pose", "jaw_pose", "leye_pose", "reye_pose")
_HEAD_POSE = ("head_rotation", "head_translation")  # this project's own pose (FitResult's npz): world = R v + t
_ALIASES = {  # other names -> this file's name (or names, for stacked entries)
    "shape_params": ("betas",), "shape": ("betas",), "expression_params": ("expression",), "exp": ("expression",),
    "neck_pose_params": ("neck_pose",), "eye_pose_params": ("leye_pose", "reye_pose"),
    "eye_pose": ("leye_pose", "reye_pose"), "pose_params": ("global_orient", "jaw_pose"),
    "translation": ("transl",), "eyelid_params": ("eyelids",), "eye_pose_left": ("leye_pose",),
    "eye_pose_right": ("reye_pose",), "K_photo": ("camera_K",),
}
_KNOWN = _VECTORS + _ROTATIONS + _HEAD_POSE + ("transl", "camera_K", "camera_Rt", "image_size")
_ZERO_TOLERANCE = 1e-6


@dataclass
class FlameParameters:
    """One head's FLAME parameters in this project's conventions (float64 numpy).

    Attributes
    ----------
    shape : (Ns,) identity. expression : (Ne,). eyelids : (2,) left, right.
    neck_pose, jaw_pose, eye_pose_left, eye_pose_right : (3,) axis-angle, radians.
    head_rotation : (3, 3) R and head_translation : (3,) t: ``world = R v + t`` for FLAME's output ``v`` with the
        root at rest.
    camera_K : (3, 3) intrinsics in photo pixels (OpenCV), or None. image_size : (H, W) of the photo, or None.
    source : where the parameters came from.
    """

    shape: np.ndarray
    expression: np.ndarray
    eyelids: np.ndarray
    neck_pose: np.ndarray
    jaw_pose: np.ndarray
    eye_pose_left: np.ndarray
    eye_pose_right: np.ndarray
    head_rotation: np.ndarray
    head_translation: np.ndarray
    camera_K: np.ndarray | None
    image_size: tuple[int, int] | None
    source: str

    @classmethod
    def from_fit(cls, fit: FitResult, source: str = "fit") -> FlameParameters:
        """The parameters of a :class:`FitResult` (its camera is the photo's ``K_photo`` and size)."""
        f = lambda a: np.asarray(a, dtype=np.float64).copy()  # noqa: E731
        return cls(
            shape=f(fit.shape), expression=f(fit.expression), eyelids=f(fit.eyelids), neck_pose=f(fit.neck_pose),
            jaw_pose=f(fit.jaw_pose), eye_pose_left=f(fit.eye_pose_left), eye_pose_right=f(fit.eye_pose_right),
            head_rotation=f(fit.head_rotation), head_translation=f(fit.head_translation), camera_K=f(fit.K_photo),
            image_size=(int(fit.photo_size[0]), int(fit.photo_size[1])), source=source,
        )


def root_joint(flame: FlameData, shape: np.ndarray, expression: np.ndarray) -> np.ndarray:
    """(3,) FLAME's root joint regressed from template + identity + expression (coefficients may be shorter)."""
    s, e = np.asarray(shape, np.float64), np.asarray(expression, np.float64)
    regressor = flame.J_regressor[0]
    return regressor @ (flame.v_template + flame.shapedirs[..., : len(s)] @ s + flame.exprdirs[..., : len(e)] @ e)


def _axis_angle(matrix: np.ndarray) -> np.ndarray:
    return matrix_to_axis_angle(torch.as_tensor(matrix, dtype=torch.float64)).numpy()


def _matrix(axis_angle: np.ndarray) -> np.ndarray:
    return axis_angle_to_matrix(torch.as_tensor(axis_angle, dtype=torch.float64)).numpy()


def save_flame_params(path: str | Path, fit: FitResult | FlameParameters, flame: FlameData) -> Path:
    """Write one head's parameters as .npz or .json (by the suffix of ``path``).

    Parameters
    ----------
    path : file ending in .npz or .json.
    fit : a fit result or parameters.
    flame : the FLAME model they belong to (for the root joint, see the module docstring).

    Raises
    ------
    ParameterFileError : another suffix, or the file cannot be written.
    """
    path = Path(path)
    p = fit if isinstance(fit, FlameParameters) else FlameParameters.from_fit(fit)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".json"):
        raise ParameterFileError(f"Cannot save FLAME parameters as '{path.name}'; choose a .npz or .json file name.")
    j0 = root_joint(flame, p.shape, p.expression)
    r = np.asarray(p.head_rotation, np.float64)
    arrays = {
        "betas": p.shape, "expression": p.expression, "jaw_pose": p.jaw_pose, "neck_pose": p.neck_pose,
        "leye_pose": p.eye_pose_left, "reye_pose": p.eye_pose_right, "global_orient": _axis_angle(r),
        "transl": np.asarray(p.head_translation, np.float64) + (r - np.eye(3)) @ j0, "eyelids": p.eyelids,
    }
    arrays = {k: np.asarray(v, np.float64).reshape(1, -1) for k, v in arrays.items()}
    if p.camera_K is not None:
        arrays["camera_K"] = np.asarray(p.camera_K, np.float64)
        arrays["camera_Rt"] = CAMERA_RT
    if p.image_size is not None:
        arrays["image_size"] = np.asarray(p.image_size, np.int64)
    try:
        if suffix == ".npz":
            with path.open("wb") as f:
                np.savez(f, format=np.array(FORMAT), version=np.array(VERSION), flame=np.array(flame.release),
                         **arrays)
        else:
            doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "flame": flame.release}
            doc.update({k: (v[0] if v.ndim == 2 and v.shape[0] == 1 and k in _VECTORS + _ROTATIONS + ("transl",)
                            else v).tolist() for k, v in arrays.items()})
            path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    except OSError as exc:
        raise ParameterFileError(f"Cannot write {path} ({exc.strerror}); choose another folder.") from exc
    return path


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParameterFileError(f"The FLAME parameter file {path} does not exist; choose a .npz or .json file.")
    head = path.read_bytes()[:64]
    try:
        if head.startswith(b"PK"):
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if head.lstrip().startswith(b"{"):
            doc = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict):
                return doc
    except ValueError as exc:  # JSON syntax, a pickled (object) array in an npz
        raise ParameterFileError(
            f"{path} cannot be read as FLAME parameters ({exc}); save plain numeric arrays as .npz or .json."
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ParameterFileError(f"{path} is damaged ({exc}); save the parameters again.") from exc
    raise ParameterFileError(f"{path} is not a .npz or .json FLAME parameter file; choose one of those.")


def _as_array(name: str, value: Any, path: Path) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterFileError(f"'{name}' in {path} is not a list of numbers; save it as numbers.") from None
    if not np.isfinite(array).all():
        raise ParameterFileError(f"'{name}' in {path} holds NaN or infinite values; save finite values.")
    return array


def _rotation(name: str, array: np.ndarray, path: Path) -> np.ndarray:
    """(3,) axis-angle from (3,), (1, 3), (3, 3) or (1, 3, 3)."""
    a = array.reshape(array.shape[1:]) if array.ndim in (2, 3) and array.shape[0] == 1 and array.size in (3, 9) \
        else array
    if a.shape == (3,):
        return a
    if a.shape == (3, 3):
        if not (np.allclose(a @ a.T, np.eye(3), atol=1e-4) and np.linalg.det(a) > 0):
            raise ParameterFileError(f"'{name}' in {path} is a 3x3 matrix but not a rotation; save a rotation.")
        return _axis_angle(a)
    raise ParameterFileError(
        f"'{name}' in {path} has shape {array.shape}; save it as axis-angle (3 values) or a 3x3 rotation matrix."
    )


def _translation(name: str, array: np.ndarray, path: Path) -> np.ndarray:
    """(3,) from (3,) or (1, 3)."""
    if array.shape not in ((3,), (1, 3)):
        raise ParameterFileError(f"'{name}' in {path} has shape {array.shape}; save it as 3 values in metres.")
    return array.reshape(3)


def _vector(name: str, array: np.ndarray, size: int, what: str, path: Path) -> np.ndarray:
    """(size,) from (N,) or (1, N): zero-padded, or trimmed when the extra entries are zero."""
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        if array.ndim == 2:
            raise ParameterFileError(
                f"'{name}' in {path} holds {array.shape[0]} sets of values; save the parameters of one head or frame."
            )
        raise ParameterFileError(f"'{name}' in {path} has shape {array.shape}; save it as a vector.")
    if len(array) > size and np.abs(array[size:]).max() > _ZERO_TOLERANCE:
        raise ParameterFileError(
            f"'{name}' in {path} has {len(array)} {what} values but this head uses {size}; load it into a FLAME model "
            f"with at least {len(array)} {what} components."
        )
    out = np.zeros(size)
    out[: min(size, len(array))] = array[:size]
    return out


def load_flame_params(
    path: str | Path, flame: FlameData, n_shape: int | None = None, n_expr: int | None = None
) -> FlameParameters:
    """Read FLAME parameters written by :func:`save_flame_params` or by another FLAME tool.

    Parameters
    ----------
    path : .npz or .json file (recognised by content).
    flame : the FLAME model of the head they go into (for the root joint).
    n_shape, n_expr : sizes of the head's coefficient vectors (default: the model's).

    Returns
    -------
    :class:`FlameParameters` with shape (n_shape,) and expression (n_expr,).

    Raises
    ------
    ParameterFileError : a missing, unreadable or foreign file; a newer format version; entries of the wrong
        size or shape, not numbers, NaN; several frames; a matrix that is not a rotation; the same entry twice.
    """
    path = Path(path)
    n_shape = flame.n_shape if n_shape is None else int(n_shape)
    n_expr = flame.n_expr if n_expr is None else int(n_expr)
    raw = _read(path)
    fmt, version = raw.pop("format", None), raw.pop("version", None)
    raw.pop("flame", None)
    if fmt is not None and str(np.asarray(fmt)) == FORMAT and int(np.asarray(version)) > VERSION:
        raise ParameterFileError(
            f"{path} was written by a newer version of Pixel3DMM (format version {int(np.asarray(version))}); "
            "update the add-on to load it."
        )
    entries: dict[str, np.ndarray] = {}
    ignored = []
    for key, value in raw.items():
        names = _ALIASES.get(key, (key,))
        if names[0] not in _KNOWN:
            ignored.append(key)
            continue
        array = _as_array(key, value, path)
        parts = np.split(array.reshape(-1), len(names)) if len(names) > 1 and array.size == 3 * len(names) else None
        if len(names) > 1 and parts is None:
            raise ParameterFileError(
                f"'{key}' in {path} has {array.size} values where {3 * len(names)} are expected; save it again."
            )
        for i, name in enumerate(names):
            if name in entries:
                raise ParameterFileError(f"{path} gives '{name}' twice (also as '{key}'); keep one of them.")
            entries[name] = parts[i] if parts is not None else array
    if ignored:
        log.info("FLAME parameters %s: ignoring %s", path, ", ".join(sorted(ignored)))
    zero = np.zeros(3)
    shape = _vector("betas", entries.get("betas", np.zeros(0)), n_shape, "shape", path)
    expression = _vector("expression", entries.get("expression", np.zeros(0)), n_expr, "expression", path)
    eyelids = _vector("eyelids", entries.get("eyelids", np.zeros(2)), 2, "eyelid", path)
    rot = {name: _rotation(name, entries[name], path) if name in entries else zero for name in _ROTATIONS}
    own = [n for n in _HEAD_POSE if n in entries]
    flame_pose = [n for n in ("global_orient", "transl") if n in entries]
    if own and flame_pose:
        raise ParameterFileError(
            f"{path} gives the head pose twice ({own[0]} and {flame_pose[0]}); keep one convention."
        )
    if own:
        r = _matrix(_rotation("head_rotation", entries["head_rotation"], path)) if "head_rotation" in entries \
            else np.eye(3)
        t = _translation("head_translation", entries.get("head_translation", zero), path)
    else:
        r = _matrix(rot["global_orient"])
        t = _translation("transl", entries.get("transl", zero), path) - (r - np.eye(3)) @ root_joint(
            flame, shape, expression
        )
    camera_k = entries.get("camera_K")
    if camera_k is not None and camera_k.shape != (3, 3):
        raise ParameterFileError(f"'camera_K' in {path} has shape {camera_k.shape}; save a 3x3 matrix.")
    if "camera_Rt" in entries:
        rt = entries["camera_Rt"]
        if rt.shape != (3, 4) or not np.allclose(rt[:, :3] @ rt[:, :3].T, np.eye(3), atol=1e-4):
            raise ParameterFileError(f"'camera_Rt' in {path} is not a 3x4 rotation and translation; save it again.")
        # Camera coordinates c = Rt [R v + t; 1]; this project's world is CAMERA_RT^-1 of them.
        to_world = CAMERA_RT[:, :3].T
        t = to_world @ (rt[:, :3] @ t + rt[:, 3] - CAMERA_RT[:, 3])
        r = to_world @ rt[:, :3] @ r
    size = entries.get("image_size")
    if size is not None and (size.shape != (2,) or (size <= 0).any() or (size != np.round(size)).any()):
        raise ParameterFileError(f"'image_size' in {path} is not a height and width in pixels; save two integers.")
    return FlameParameters(
        shape=shape, expression=expression, eyelids=eyelids, neck_pose=rot["neck_pose"], jaw_pose=rot["jaw_pose"],
        eye_pose_left=rot["leye_pose"], eye_pose_right=rot["reye_pose"], head_rotation=r, head_translation=t,
        camera_K=camera_k, image_size=None if size is None else (int(size[0]), int(size[1])), source=str(path),
    )

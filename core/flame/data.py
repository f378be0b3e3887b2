"""FLAME model arrays in plain numpy (what loaders produce and the torch layer consumes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AssetInvalidError

#: FLAME's joints in kinematic order (``kintree_table``): the root (global pose), the neck, the jaw, and the
#: subject's left and right eye. Every per-joint array of the core uses this order.
JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
ROOT, NECK, JAW, LEFT_EYE, RIGHT_EYE = range(len(JOINT_NAMES))
N_JOINTS = len(JOINT_NAMES)
N_POSE_FEATURES = 9 * (N_JOINTS - 1)


@dataclass(frozen=True)
class FlameData:
    """Arrays of one FLAME model (any release, or the synthetic stand-in).

    Attributes
    ----------
    v_template : (V, 3) float64 mean head in metres (+y up, face towards +z, +x the subject's left).
    faces : (F, 3) int64 triangles.
    shapedirs : (V, 3, Ns) float64 identity blendshapes.
    exprdirs : (V, 3, Ne) float64 expression blendshapes.
    posedirs : (V, 3, 36) float64 pose correctives (see :func:`core.flame.lbs.pose_feature`).
    J_regressor : (J, V) float64 dense joint regressor.
    weights : (V, J) float64 skinning weights.
    parents : (J,) int64 parent joint of each joint, -1 for the root.
    eyelids : (2, V, 3) float64 left and right eyelid blendshapes, or None.
    release : "2020", "2023", "2023 Open" or "synthetic".
    source : where the arrays came from (a path or a description).
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    eyelids: np.ndarray | None
    release: str
    source: str

    def __post_init__(self) -> None:
        """Check that all arrays agree with each other; raise AssetInvalidError otherwise."""
        v = self.v_template.shape[0] if self.v_template.ndim == 2 else -1
        expected = {
            "v_template": (self.v_template, (v, 3)),
            "shapedirs": (self.shapedirs, (v, 3, None)),
            "exprdirs": (self.exprdirs, (v, 3, None)),
            "posedirs": (self.posedirs, (v, 3, N_POSE_FEATURES)),
            "J_regressor": (self.J_regressor, (N_JOINTS, v)),
            "weights": (self.weights, (v, N_JOINTS)),
            "parents": (self.parents, (N_JOINTS,)),
            "faces": (self.faces, (None, 3)),
        }
        if self.eyelids is not None:
            expected["eyelids"] = (self.eyelids, (2, v, 3))
        for name, (array, shape) in expected.items():
            ok = isinstance(array, np.ndarray) and array.ndim == len(shape)
            ok = ok and all(want is None or got == want for got, want in zip(array.shape, shape))
            if not ok or v <= 0:
                got = getattr(array, "shape", type(array).__name__)
                raise AssetInvalidError(
                    f"The FLAME model from {self.source} has '{name}' of shape {got} instead of "
                    f"{tuple('any' if s is None else s for s in shape)}; download the model file again."
                )
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= v):
            raise AssetInvalidError(
                f"The FLAME model from {self.source} has triangles that index missing vertices; "
                "download the model file again."
            )
        if self.parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(self.parents[1:].tolist(), 1)):
            raise AssetInvalidError(
                f"The FLAME model from {self.source} has a broken joint hierarchy {self.parents.tolist()}; "
                "download the model file again."
            )

    @property
    def n_vertices(self) -> int:
        """Number of vertices V."""
        return int(self.v_template.shape[0])

    @property
    def n_shape(self) -> int:
        """Number of identity components Ns."""
        return int(self.shapedirs.shape[2])

    @property
    def n_expr(self) -> int:
        """Number of expression components Ne."""
        return int(self.exprdirs.shape[2])

    def describe(self) -> str:
        """One line for reports, e.g. ``FLAME 2020: 5023 vertices, 300 shape, 100 expression components``."""
        name = "synthetic FLAME-format head" if self.release == "synthetic" else f"FLAME {self.release}"
        eyelids = ", eyelid blendshapes" if self.eyelids is not None else ""
        return (
            f"{name}: {self.n_vertices} vertices, {self.n_shape} shape, "
            f"{self.n_expr} expression components{eyelids}"
        )

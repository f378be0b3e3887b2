"""The fitting result and its JSON + npz storage."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AssetInvalidError, AssetMissingError
from .verdict import Verdict

__all__ = ["FitResult"]

_ARRAYS = (
    "shape", "expression", "eyelids", "neck_pose", "jaw_pose", "eye_pose_left", "eye_pose_right",
    "head_rotation", "head_translation", "principal_point", "K_crop", "K_photo", "vertices_posed",
    "vertices_neutral",
)
_FORMAT = "pixel3dmm-fit-result"
_VERSION = 1


@dataclass
class FitResult:
    """Every FLAME parameter and camera quantity of one fitted image (numpy, float32 unless stated).

    Attributes
    ----------
    shape, expression, eyelids : (Ns,), (Ne,), (2,)
    neck_pose, jaw_pose, eye_pose_left, eye_pose_right : (3,) axis-angle in radians
    head_rotation : (3, 3) R, world = R @ v + t
    head_translation : (3,) t
    focal : float
        Normalised focal fl (fx = fl * S at render size S).
    principal_point : (2,)
        pp in the reference convention (``c = S/2 + pp * S/2`` here, see :mod:`core.render.camera`).
    K_crop, K_photo : (3, 3) float64
        Pinhole intrinsics in crop pixels (512) and full-photo pixels, y down (OpenCV camera coordinates
        ``diag(1, -1, -1) @ (world - (0, 0, 1))``).
    photo_size : (H, W) of the full photo
    vertices_posed : (V, 3) world-space posed vertices (R v + t)
    vertices_neutral : (V, 3) identity only, canonical pose
    loss_history : term -> per-step values, one list per term and stage (keys ``"<stage>/<term>"``)
    verdict : ok or doubtful, with reasons and figures (:class:`~.verdict.Verdict`)
    info : small JSON-friendly diagnostics (initialisation method, PnP inliers, steps, device)
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
    focal: float
    principal_point: np.ndarray
    K_crop: np.ndarray
    K_photo: np.ndarray
    photo_size: tuple[int, int]
    vertices_posed: np.ndarray
    vertices_neutral: np.ndarray
    loss_history: dict[str, list[float]] = field(default_factory=dict)
    verdict: Verdict = field(default_factory=Verdict)
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, prefix: str | Path) -> tuple[Path, Path]:
        """Write ``<prefix>.json`` (scalars, history, info) and ``<prefix>.npz`` (arrays); returns both paths."""
        prefix = Path(prefix)
        json_path = prefix.with_name(prefix.name + ".json")
        npz_path = prefix.with_name(prefix.name + ".npz")
        np.savez(npz_path, **{name: np.asarray(getattr(self, name)) for name in _ARRAYS})
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "focal": float(self.focal),
            "photo_size": [int(s) for s in self.photo_size],
            "loss_history": {k: [float(x) for x in v] for k, v in self.loss_history.items()},
            "verdict": self.verdict.to_dict(),
            "info": self.info,
            "arrays": npz_path.name,
        }
        json_path.write_text(json.dumps(meta, indent=1))
        return json_path, npz_path

    @classmethod
    def load(cls, prefix: str | Path) -> "FitResult":
        """Read a result written by :meth:`save`."""
        prefix = Path(prefix)
        json_path = prefix.with_name(prefix.name + ".json")
        npz_path = prefix.with_name(prefix.name + ".npz")
        if not json_path.is_file() or not npz_path.is_file():
            raise AssetMissingError(f"Fit result files {json_path} and {npz_path} are missing; fit the image again.")
        try:
            meta = json.loads(json_path.read_text())
            with np.load(npz_path) as npz:
                arrays = {name: npz[name] for name in _ARRAYS}
        except (ValueError, KeyError, OSError) as exc:
            raise AssetInvalidError(f"Fit result {json_path} is damaged ({exc}); fit the image again.") from exc
        if meta.get("format") != _FORMAT:
            raise AssetInvalidError(f"{json_path} is not a fit result; choose a file written by the fitter.")
        return cls(
            **arrays,
            focal=float(meta["focal"]),
            photo_size=tuple(int(s) for s in meta["photo_size"]),
            loss_history={k: list(v) for k, v in meta["loss_history"].items()},
            verdict=Verdict.from_dict(meta.get("verdict", {})),
            info=dict(meta.get("info", {})),
        )

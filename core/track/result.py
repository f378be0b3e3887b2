"""A tracked clip (or set of photos): one identity, per-frame motion, and its ``track.npz`` + ``track.json``.

Arrays (numpy; float32 unless stated), ``T`` tracked frames:

* ``shape`` (Ns,): the identity shared by every frame;
* ``expression`` (T, Ne), ``eyelids`` (T, 2);
* ``jaw_pose``, ``neck_pose``, ``eye_pose_left``, ``eye_pose_right`` (T, 3): axis-angle, radians;
* ``head_rotation`` (T, 3, 3), ``head_translation`` (T, 3): ``world = R v + t`` as in :class:`~core.fit.FitResult`;
* ``vertices_posed`` (T, V, 3): world-space vertices of each frame;
* ``frames`` (T,) int64: the source frame index of each tracked frame (a clip's frame number, or a photo's
  position in the list given);
* ``K_photo`` (3, 3) float64 for a clip (one camera), (T, 3, 3) for several photos (each its own), in the
  source's full-resolution pixels (OpenCV convention, as ``FitResult.K_photo``);
* ``principal_point`` (T, 2) and ``K_crop`` (T, 3, 3) float64: each frame's camera in its crop, as in
  :class:`~core.fit.FitResult`.

``track.json`` holds the rest: the source, its kind (``"video"``, ``"frames"``, ``"photos"``), frame rate, photo
size(s), the frames that were skipped and why, per-frame verdicts, the settings and timings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AssetInvalidError, AssetMissingError
from ..fit.result import FitResult
from ..fit.verdict import Verdict

__all__ = ["Track", "TRACK_ARRAYS"]

TRACK_ARRAYS = (
    "shape", "expression", "eyelids", "jaw_pose", "neck_pose", "eye_pose_left", "eye_pose_right", "head_rotation",
    "head_translation", "vertices_posed", "frames", "K_photo", "principal_point", "K_crop",
)
_PER_FRAME = TRACK_ARRAYS[1:11] + ("principal_point", "K_crop")
_FORMAT = "pixel3dmm-track"
_VERSION = 1


@dataclass
class Track:
    """Every tracked frame's FLAME parameters and camera (see the module docstring for the arrays).

    Attributes
    ----------
    kind : ``"video"``, ``"frames"`` (a folder of frames) or ``"photos"`` (several photos of one person)
    source : the clip, folder or photos, as given
    fps : frames per second of the source (0 for photos); a tracked frame's time is ``frames[i] / fps``
    photo_size : (H, W) of every frame (a clip), or (T, 2) per photo
    focal : the normalised focal shared by every frame (see :class:`~core.fit.FitResult`)
    skipped : source frame index -> why it was not tracked (one sentence)
    verdicts : one :class:`~core.fit.verdict.Verdict` per tracked frame
    info : JSON-friendly settings, timings and diagnostics
    """

    shape: np.ndarray
    expression: np.ndarray
    eyelids: np.ndarray
    jaw_pose: np.ndarray
    neck_pose: np.ndarray
    eye_pose_left: np.ndarray
    eye_pose_right: np.ndarray
    head_rotation: np.ndarray
    head_translation: np.ndarray
    vertices_posed: np.ndarray
    frames: np.ndarray
    K_photo: np.ndarray
    principal_point: np.ndarray
    K_crop: np.ndarray
    kind: str
    source: str
    fps: float
    photo_size: Any
    focal: float
    skipped: dict[int, str] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def camera(self, i: int) -> np.ndarray:
        """(3, 3) photo intrinsics of tracked frame ``i``."""
        return self.K_photo if self.K_photo.ndim == 2 else self.K_photo[i]

    def size(self, i: int) -> tuple[int, int]:
        """(H, W) of tracked frame ``i``'s image."""
        s = np.asarray(self.photo_size)
        return tuple(int(v) for v in (s if s.ndim == 1 else s[i]))

    def frame_result(self, i: int, vertices_neutral: np.ndarray | None = None) -> FitResult:
        """Tracked frame ``i`` as a single-image :class:`FitResult` (what :func:`core.rig.build_rig` and the texture
        baker take). ``vertices_neutral`` defaults to the posed vertices (give the identity mesh when it matters)."""
        k = np.asarray(self.camera(i), dtype=np.float64)
        h, w = self.size(i)
        return FitResult(
            shape=self.shape.copy(), expression=self.expression[i].copy(), eyelids=self.eyelids[i].copy(),
            neck_pose=self.neck_pose[i].copy(), jaw_pose=self.jaw_pose[i].copy(),
            eye_pose_left=self.eye_pose_left[i].copy(), eye_pose_right=self.eye_pose_right[i].copy(),
            head_rotation=self.head_rotation[i].copy(), head_translation=self.head_translation[i].copy(),
            focal=float(self.focal), principal_point=self.principal_point[i].copy(), K_crop=self.K_crop[i].copy(),
            K_photo=k.copy(), photo_size=(h, w),
            vertices_posed=self.vertices_posed[i].copy(),
            vertices_neutral=(self.vertices_posed[i] if vertices_neutral is None else vertices_neutral).copy(),
            verdict=self.verdicts[i] if i < len(self.verdicts) else Verdict(),
            info={"track_frame": int(self.frames[i])},
        )

    # ------------------------------------------------------------------------------------------- storage
    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``track.npz`` and ``track.json`` into ``folder`` (each written whole, then renamed into place)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        npz_path, json_path = folder / "track.npz", folder / "track.json"
        arrays = {name: np.asarray(getattr(self, name)) for name in TRACK_ARRAYS}
        arrays["frames"] = arrays["frames"].astype(np.int64)
        for name in ("K_photo", "K_crop"):
            arrays[name] = arrays[name].astype(np.float64)
        tmp = folder / "track.npz.part"
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, npz_path)
        meta = {
            "format": _FORMAT, "version": _VERSION, "kind": self.kind, "source": self.source, "fps": float(self.fps),
            "photo_size": np.asarray(self.photo_size).astype(int).tolist(), "focal": float(self.focal),
            "tracked_frames": len(self), "frames": [int(f) for f in self.frames],
            "skipped": {str(k): v for k, v in sorted(self.skipped.items())},
            "verdicts": [v.to_dict() for v in self.verdicts], "info": self.info, "arrays": npz_path.name,
        }
        tmp = folder / "track.json.part"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, json_path)
        return npz_path, json_path

    @classmethod
    def load(cls, folder: str | Path) -> "Track":
        """Read a track written by :meth:`save` (the folder, or its ``track.npz`` / ``track.json``)."""
        folder = Path(folder)
        if folder.suffix in (".npz", ".json"):
            folder = folder.parent
        npz_path, json_path = folder / "track.npz", folder / "track.json"
        if not npz_path.is_file() or not json_path.is_file():
            raise AssetMissingError(f"{folder} holds no track (track.npz and track.json); track the clip again.")
        try:
            meta = json.loads(json_path.read_text())
            with np.load(npz_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in TRACK_ARRAYS}
        except (ValueError, KeyError, OSError) as exc:
            raise AssetInvalidError(f"The track in {folder} is damaged ({exc}); track the clip again.") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise AssetInvalidError(f"{json_path} is not a track; choose a folder written by 'python -m core track'.")
        n = arrays["frames"].shape[0]
        if any(arrays[name].shape[:1] != (n,) for name in _PER_FRAME):
            raise AssetInvalidError(f"The track in {folder} has arrays of different frame counts; track the clip again.")
        return cls(
            **arrays, kind=str(meta["kind"]), source=str(meta["source"]), fps=float(meta["fps"]),
            photo_size=tuple(meta["photo_size"]) if np.ndim(meta["photo_size"]) == 1 else np.asarray(meta["photo_size"]),
            focal=float(meta["focal"]), skipped={int(k): str(v) for k, v in meta.get("skipped", {}).items()},
            verdicts=[Verdict.from_dict(v) for v in meta.get("verdicts", [])], info=dict(meta.get("info", {})),
        )

    @classmethod
    def from_results(cls, results: list[FitResult], frames: list[int], *, kind: str, source: str, fps: float,
                     skipped: dict[int, str] | None = None, info: dict[str, Any] | None = None) -> "Track":
        """Stack per-frame results that share one identity (the first frame's ``shape`` is kept)."""
        if not results:
            raise ValueError("A track needs at least one tracked frame.")
        stack = lambda name: np.stack([np.asarray(getattr(r, name)) for r in results]).astype(np.float32)  # noqa: E731
        sizes = np.array([r.photo_size for r in results], dtype=int)
        same_camera = kind != "photos" and all(np.array_equal(r.K_photo, results[0].K_photo) for r in results)
        return cls(
            shape=np.asarray(results[0].shape, dtype=np.float32).copy(), expression=stack("expression"),
            eyelids=stack("eyelids"), jaw_pose=stack("jaw_pose"), neck_pose=stack("neck_pose"),
            eye_pose_left=stack("eye_pose_left"), eye_pose_right=stack("eye_pose_right"),
            head_rotation=stack("head_rotation"), head_translation=stack("head_translation"),
            vertices_posed=stack("vertices_posed"), frames=np.asarray(frames, dtype=np.int64),
            K_photo=(np.asarray(results[0].K_photo, dtype=np.float64) if same_camera
                     else np.stack([np.asarray(r.K_photo, dtype=np.float64) for r in results])),
            principal_point=stack("principal_point"),
            K_crop=np.stack([np.asarray(r.K_crop, dtype=np.float64) for r in results]),
            kind=kind, source=source, fps=float(fps),
            photo_size=tuple(int(v) for v in sizes[0]) if kind != "photos" else sizes,
            focal=float(results[0].focal), skipped=dict(skipped or {}), verdicts=[r.verdict for r in results],
            info=dict(info or {}),
        )

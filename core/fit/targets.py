"""Prediction + FaceCrop -> the fitting-resolution target maps and masks.

Masks follow the reference tracker (``pixel3dmm.md`` 2.3), translated to the FaceCrop mask names:

* ``uv_mask``: skin, brows, nose, lips (reference: face skin, brows, nose, lips, neck, ears; FaceCrop has no
  neck or ear masks), intersected with the prediction's own mask;
* ``normal_mask``: skin, brows, nose, lips and the inner mouth, intersected with the prediction's mask;
* ``fg_mask``: skin, brows, eyes, nose, lips;
* ``valid_bg``: background (reference: background or neck).

A mask missing from ``crop.masks`` counts as empty; when none of a union's masks exist the prediction mask is
used instead, so the fit also runs on a bare prediction. Without a prediction (the network-free mode) there are no
maps; the landmarks (:mod:`.objective`) are then the only data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FitTargets", "build_targets"]

_UV_PARTS = ("skin", "brows", "nose", "lips")
_NORMAL_PARTS = ("skin", "brows", "nose", "lips", "mouth")
_FG_PARTS = ("skin", "brows", "eyes", "nose", "lips")


@dataclass
class FitTargets:
    """Target maps at the fitting resolution S (tensors on the fitting device).

    Attributes
    ----------
    size : S
    uv : (S, S, 2) predicted UV (network convention), zero outside ``uv_mask``, or None without a prediction
    uv_mask : (S, S) bool, or None
    normals : (S, S, 3) predicted unit normals (FLAME canonical frame), or None
    normal_mask : (S, S) float, or None
    fg_mask : (S, S) float, or None
    valid_bg : (S, S) float, or None
    crop_size : size of the crop the prediction and the landmarks are given in (512)
    face_mask : (S, S) bool, the crop's face region when it comes from landmarks (not a rough guess), or None
    """

    size: int
    uv: torch.Tensor | None
    uv_mask: torch.Tensor | None
    normals: torch.Tensor | None
    normal_mask: torch.Tensor | None
    fg_mask: torch.Tensor | None
    valid_bg: torch.Tensor | None
    crop_size: int
    face_mask: torch.Tensor | None = None

    @property
    def has_maps(self) -> bool:
        """True when there is a prediction to fit."""
        return self.uv is not None


def _union(masks: dict, names: tuple[str, ...], shape: tuple[int, int]) -> np.ndarray | None:
    present = [np.asarray(masks[n], dtype=bool) for n in names if n in masks and masks[n] is not None]
    if not present:
        return None
    out = np.zeros(shape, dtype=bool)
    for m in present:
        if m.shape != shape:
            raise ValueError(f"Masks must have the prediction's size {shape}, got {m.shape}.")
        out |= m
    return out


def _resize(x: np.ndarray, size: int, like: torch.Tensor) -> torch.Tensor:
    """(H, W, C) or (H, W) array -> (S, S, C) / (S, S) tensor by area averaging."""
    t = torch.as_tensor(np.ascontiguousarray(x), dtype=like.dtype, device=like.device)
    squeeze = t.dim() == 2
    if squeeze:
        t = t[..., None]
    if t.shape[0] != size or t.shape[1] != size:
        t = F.interpolate(t.permute(2, 0, 1)[None], size=(size, size), mode="area")[0].permute(1, 2, 0)
    return t[..., 0] if squeeze else t


def build_targets(prediction, crop, size: int, like: torch.Tensor) -> FitTargets:
    """Resize the prediction and the crop's masks to the fitting resolution.

    Parameters
    ----------
    prediction : Prediction or None
        ``uv`` (H, W, 2), ``normals`` (H, W, 3), ``mask`` (H, W) bool at the crop resolution; None: no maps.
    crop : FaceCrop or None
        Supplies ``masks`` (and, with ``transform``, the crop size when there is no prediction); None means no
        masks.
    size : fitting resolution S
    like : tensor giving the device and dtype

    Returns
    -------
    FitTargets
    """
    face = _face_mask(crop, size, like)
    if prediction is None:
        transform = getattr(crop, "transform", None)
        crop_size = int(getattr(transform, "out_size", 512))
        return FitTargets(size, None, None, None, None, None, None, crop_size, face)
    uv = np.asarray(prediction.uv, dtype=np.float32)
    normals = np.asarray(prediction.normals, dtype=np.float32)
    pmask = np.asarray(prediction.mask, dtype=bool)
    h, w = pmask.shape
    if uv.shape != (h, w, 2) or normals.shape != (h, w, 3):
        raise ValueError("The prediction's uv, normals and mask must be (H, W, 2), (H, W, 3) and (H, W).")
    finite = np.isfinite(uv).all(-1) & np.isfinite(normals).all(-1)
    pmask = pmask & finite
    uv = np.where(pmask[..., None], uv, 0.0)
    normals = np.where(pmask[..., None], normals, 0.0)
    masks = dict(getattr(crop, "masks", None) or {})
    uv_m = _union(masks, _UV_PARTS, (h, w))
    n_m = _union(masks, _NORMAL_PARTS, (h, w))
    fg = _union(masks, _FG_PARTS, (h, w))
    bg = masks.get("background")
    uv_m = pmask if uv_m is None else uv_m & pmask
    n_m = pmask if n_m is None else n_m & pmask
    fg = pmask if fg is None else fg
    bg = ~pmask if bg is None else np.asarray(bg, dtype=bool)
    # Averages over valid pixels only, so that UVs do not blend with the zeros outside the mask.
    wsum = _resize(uv_m.astype(np.float32), size, like)
    uv_t = _resize(uv * uv_m[..., None], size, like) / wsum.clamp(min=1e-6)[..., None]
    uv_mask = wsum > 0.5
    uv_t = torch.where(uv_mask[..., None], uv_t, torch.zeros_like(uv_t))
    nw = _resize(n_m.astype(np.float32), size, like)
    n_t = F.normalize(_resize(normals * n_m[..., None], size, like), dim=-1, eps=1e-12)
    normal_mask = (nw > 0.5).to(like.dtype)
    return FitTargets(
        size=size,
        uv=uv_t,
        uv_mask=uv_mask,
        normals=n_t,
        normal_mask=normal_mask,
        fg_mask=(_resize(fg.astype(np.float32), size, like) > 0.5).to(like.dtype),
        valid_bg=(_resize(bg.astype(np.float32), size, like) > 0.5).to(like.dtype),
        crop_size=w,
        face_mask=face,
    )


def _face_mask(crop, size: int, like: torch.Tensor) -> torch.Tensor | None:
    """The crop's ``face`` mask at S (bool), unless missing or a rough guess."""
    masks = getattr(crop, "masks", None) or {}
    face = masks.get("face")
    if face is None or "face" in set(getattr(crop, "approximate_masks", ()) or ()):
        return None
    return _resize(np.asarray(face, dtype=np.float32), size, like) > 0.5
